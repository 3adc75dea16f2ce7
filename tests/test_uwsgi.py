"""What is particular to uWSGI: start-up checks, and a thousand websockets on one gevent worker.

The websocket behaviour itself is tested under uWSGI and under the
development server in tests/test_wsgi_server.py.
"""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest
import redis
from websockets.asyncio.client import connect

from tests import servers

pytestmark = pytest.mark.uwsgi

# Bounded so the default suite stays fast; raise it to soak the server.
CLIENTS = int(os.environ.get("WS4REDIS_UWSGI_CLIENTS", "1000"))
CONNECTING_AT_ONCE = 100
TIMEOUT = 120.0


def test_refuses_to_start_when_gevent_patches_too_late(redis_server):
    site = servers.Site(redis_server.url)
    try:
        with pytest.raises(servers.ServerFailed) as failed:
            servers.uwsgi(site, monkey_patch="--gevent-monkey-patch").start()
        assert "start uwsgi with --gevent-early-monkey-patch" in str(failed.value)
    finally:
        site.cleanup()


def test_a_bad_setting_stops_uwsgi_at_start_up(redis_server):
    site = servers.Site(redis_server.url, {"WS4REDIS_EXPIRE": "-1"})
    try:
        with pytest.raises(servers.ServerFailed) as failed:
            servers.uwsgi(site).start()
        assert "WS4REDIS_EXPIRE must be an integer >= 0" in str(failed.value)
    finally:
        site.cleanup()


async def _thousand_clients(port: int, sessions: list[str], facility: str, redis_url: str) -> None:
    """Every client subscribes to its session channel and the broadcast; each gets its own message."""
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
        pipe = store.pipeline(transaction=False)
        for number, session in enumerate(sessions):
            pipe.publish(f"session:{session}:{facility}", f"for client {number}")
        assert await pipe.execute() == [1] * len(sessions)
        # Published last: a client that got anybody else's message would see it before this one.
        assert await store.publish(f"broadcast:{facility}", "everyone") == len(sessions)
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
            asyncio.run(_thousand_clients(server.port, sessions, facility, redis_server.url))
            channels = [f"session:{session}:{facility}" for session in sessions] + [f"broadcast:{facility}"]
            store = redis.Redis(host=redis_server.host, port=redis_server.port)
            try:
                counts = servers.wait_unsubscribed(store, channels)
            finally:
                store.close()
            left = {name: count for name, count in counts.items() if count}
            assert not left, f"subscriptions left after the clients closed: {list(left.items())[:5]}"
            assert not server.tracebacks(), server.tracebacks()
    finally:
        site.cleanup()

