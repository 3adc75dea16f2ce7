"""What is particular to uWSGI: start-up checks, and a thousand websockets on one gevent worker.

The websocket behaviour itself is tested under uWSGI, the gevent server and
the development server in tests/test_servers.py (Redis restarts there too).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from contextlib import ExitStack

import pytest
import redis
from websockets.asyncio.client import connect

from tests import servers
from ws4redis import constants
from ws4redis.protocol import CloseReceived, Ping

pytestmark = pytest.mark.uwsgi

# Bounded so the default suite stays fast; raise it to soak the server.
CLIENTS = int(os.environ.get("WS4REDIS_UWSGI_CLIENTS", "1000"))
CONNECTING_AT_ONCE = 100
TIMEOUT = 120.0


def test_a_bad_setting_stops_uwsgi_at_start_up(redis_server):
    site = servers.Site(redis_server.url, {"WS4REDIS_EXPIRE": "-1"})
    try:
        with pytest.raises(servers.ServerFailed) as failed:
            servers.uwsgi(site).start()
        assert "WS4REDIS_EXPIRE must be an integer >= 0" in str(failed.value)
    finally:
        site.cleanup()


def in_pubsub_mode(clients: list[dict]) -> list[dict]:
    """The entries of CLIENT LIST subscribed to at least one channel or pattern."""
    return [client for client in clients if int(client["sub"]) or int(client["psub"])]


def process_tree(pid: int) -> set[int]:
    """``pid`` and its children (uWSGI forks its HTTP router, and workers under --master)."""
    children = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/status") as status:
                    if f"PPid:\t{pid}\n" in status.read():
                        children.add(int(entry))
            except FileNotFoundError:
                continue  # gone meanwhile
    return {pid, *children}


def test_each_worker_forked_by_the_master_gets_its_own_hub(redis_server):
    """The application is loaded in the master; each worker creates its hub after the fork."""
    facility = f"forked{uuid.uuid4().hex[:8]}"
    site = servers.Site(redis_server.url)
    store = redis.Redis(host=redis_server.host, port=redis_server.port)
    try:
        with servers.serving(servers.uwsgi(site, workers=2)) as server, ExitStack() as stack:
            path = f"/ws/{facility}?subscribe-broadcast"
            clients = [stack.enter_context(servers.ws_connect(server, path)) for _ in range(20)]
            hubs = in_pubsub_mode(store.client_list())
            names = [hub["name"].partition(":") for hub in hubs]
            assert {name for name, _, _ in names} == {"ws4redis-hub"}, hubs
            pids = {int(pid) for _, _, pid in names}
            assert len(pids) == len(hubs) <= 2
            workers = process_tree(server.process.pid) - {server.process.pid}
            assert pids <= workers, f"hubs {pids} do not belong to the forked workers {workers}"
            # One subscription per worker that serves a client, however many clients it serves.
            assert store.publish(f"broadcast:{facility}", "to every worker") == len(pids)
            assert [client.recv(timeout=TIMEOUT) for client in clients] == ["to every worker"] * 20
            assert not server.tracebacks(), server.tracebacks()
    finally:
        store.close()
        site.cleanup()


def test_a_peer_that_never_answers_pings_is_closed_with_1011_and_released(redis_server):
    """The worker's ticker looks after its websockets: pings go out, and a silent peer is let go."""
    site = servers.Site(redis_server.url, {"WS4REDIS_PING_INTERVAL": "0.3", "WS4REDIS_PING_TIMEOUT": "0.6"})
    channel = f"broadcast:silent{uuid.uuid4().hex[:8]}"
    store = redis.Redis(host=redis_server.host, port=redis_server.port)
    try:
        with servers.serving(servers.uwsgi(site)) as server:
            sock, rest = servers.raw_upgrade(server, f"/ws/{channel.partition(':')[2]}?subscribe-broadcast")
            with sock:
                events = servers.read_until_closed(sock, rest)
            assert any(isinstance(event, Ping) for event in events)
            closes = [event for event in events if isinstance(event, CloseReceived)]
            assert [close.code for close in closes] == [constants.CLOSE_INTERNAL_ERROR]
            assert servers.wait_unsubscribed(store, [channel]) == {channel: 0}
            assert not server.tracebacks(), server.tracebacks()
    finally:
        store.close()
        site.cleanup()


async def _thousand_clients(port: int, sessions: list[str], facility: str, redis_url: str,
                            uwsgi_pids: set[int]) -> None:
    """Every client subscribes to its session channel and the broadcast; each gets its own message.

    While they are all open, the worker holds exactly one Redis pub/sub connection: its hub,
    subscribed to the thousand session channels and the broadcast channel.
    """
    uri = f"ws://127.0.0.1:{port}/ws/{facility}?subscribe-session&subscribe-broadcast"
    gate = asyncio.Semaphore(CONNECTING_AT_ONCE)

    async def open_client(session: str):
        async with gate:
            return await connect(
                uri, additional_headers={"Cookie": f"sessionid={session}"}, proxy=None, compression=None,
                open_timeout=TIMEOUT, ping_interval=None,
            )

    async def two_messages(ws) -> list:
        return [await ws.recv(), await ws.recv()]

    store = redis.asyncio.Redis.from_url(redis_url)
    clients = []
    try:
        clients = await asyncio.gather(*(open_client(session) for session in sessions))
        pubsub = in_pubsub_mode(await store.client_list())
        assert len(pubsub) == 1, f"{len(pubsub)} pub/sub connections for one worker: {pubsub[:3]}"
        name, _, pid = pubsub[0]["name"].partition(":")
        assert name == "ws4redis-hub" and int(pid) in uwsgi_pids, pubsub[0]
        assert int(pubsub[0]["sub"]) == len(sessions) + 1
        pipe = store.pipeline(transaction=False)
        for number, session in enumerate(sessions):
            pipe.publish(f"session:{session}:{facility}", f"for client {number}")
        # PUBLISH counts Redis subscribers: the hub, once per channel.
        assert await pipe.execute() == [1] * len(sessions)
        # Published last: a client that got anybody else's message would see it before this one.
        assert await store.publish(f"broadcast:{facility}", "everyone") == 1
        received = await asyncio.wait_for(asyncio.gather(*(two_messages(ws) for ws in clients)), TIMEOUT)
        wrong = {n: got for n, got in enumerate(received) if got != [f"for client {n}", "everyone"]}
        assert not wrong, f"{len(wrong)} clients got the wrong messages, e.g. {list(wrong.items())[:3]}"
    finally:
        await asyncio.gather(*(ws.close() for ws in clients), return_exceptions=True)
        await store.aclose()


@pytest.mark.slow
def test_a_thousand_clients_on_one_worker_each_get_only_their_own_message(redis_server):
    servers.raise_fd_limit(2 * CLIENTS + 1024)
    facility = f"crowd{uuid.uuid4().hex[:8]}"
    site = servers.Site(redis_server.url).migrate()
    try:
        sessions = site.sessions(anonymous=CLIENTS)["anonymous"]
        server = servers.uwsgi(site, gevent=2 * CLIENTS, extra=["--listen", "1024"])
        with servers.serving(server):
            uwsgi_pids = process_tree(server.process.pid)
            asyncio.run(_thousand_clients(server.port, sessions, facility, redis_server.url, uwsgi_pids))
            channels = [f"session:{session}:{facility}" for session in sessions] + [f"broadcast:{facility}"]
            store = redis.Redis(host=redis_server.host, port=redis_server.port)
            try:
                counts = servers.wait_unsubscribed(store, channels)
                left = {name: count for name, count in counts.items() if count}
                assert not left, f"subscriptions left after the clients closed: {list(left.items())[:5]}"
                # The hub stays connected for the next websockets, subscribed to nothing.
                assert in_pubsub_mode(store.client_list()) == []
            finally:
                store.close()
            assert not server.tracebacks(), server.tracebacks()
    finally:
        site.cleanup()

