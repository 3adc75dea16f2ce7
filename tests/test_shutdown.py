"""Stopping the gevent server: 1001 to every client, subscriptions released, exit within the deadline.

Also the supervisor of ``--workers``: it forwards SIGTERM to every worker
and replaces a worker that dies.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack

import pytest
import redis
from websockets.exceptions import ConnectionClosed

from tests.polling import wait_until
from tests.servers import ServerProcess, Site, gevent_server, raw_upgrade, read_until_closed, serving
from tests.servers import ws_connect as ws
from ws4redis import constants
from ws4redis.protocol import CloseReceived
from ws4redis.publisher import RedisPublisher

SHUTDOWN_TIMEOUT = 2.0
# Room for the interpreter to exit once the server is done; the server itself keeps SHUTDOWN_TIMEOUT.
EXIT_SLACK = 5.0


@pytest.fixture(scope="module")
def site(redis_server) -> Iterator[Site]:
    site = Site(redis_server.url, {"WS4REDIS_SHUTDOWN_TIMEOUT": str(SHUTDOWN_TIMEOUT)})
    yield site
    site.cleanup()


def hub_pids(client: redis.Redis) -> set[int]:
    names = [c["name"] for c in client.client_list()]
    return {int(name.split(":")[1]) for name in names if name.startswith("ws4redis-hub:")}


def children_of(pid: int) -> set[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as children:
        return {int(child) for child in children.read().split()}


def stop_with(server: ServerProcess, signum: int) -> int:
    """Send ``signum`` and wait for the exit (bounded by the shutdown deadline); returns the status."""
    server.process.send_signal(signum)
    try:
        return server.process.wait(SHUTDOWN_TIMEOUT + EXIT_SLACK)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the server did not exit within {SHUTDOWN_TIMEOUT + EXIT_SLACK} s of "
                    f"{signal.Signals(signum).name}:\n{server.output()[-4000:]}", pytrace=False)


def assert_closed_with_going_away(client) -> None:
    with pytest.raises(ConnectionClosed) as closed:
        client.recv(timeout=SHUTDOWN_TIMEOUT + EXIT_SLACK)
    assert closed.value.rcvd is not None, "no close frame from the server"
    assert closed.value.rcvd.code == constants.CLOSE_GOING_AWAY


def test_sigterm_closes_every_client_with_1001_and_exits_within_the_deadline(site, redis_client):
    with serving(gevent_server(site)) as server, ExitStack() as stack:
        clients = [stack.enter_context(ws(server, f"/ws/stop{i % 3}?subscribe-broadcast")) for i in range(20)]
        # This one never reads, so it never answers the close frame: the deadline must still hold.
        stubborn, _rest = raw_upgrade(server, "/ws/stop0?subscribe-broadcast")
        stack.enter_context(stubborn)
        assert len(redis_client.pubsub_channels()) == 3
        pid = server.process.pid
        assert pid in hub_pids(redis_client)
        assert stop_with(server, signal.SIGTERM) == 0
        for client in clients:
            assert_closed_with_going_away(client)
        events = read_until_closed(stubborn)
        assert [e.code for e in events if isinstance(e, CloseReceived)] == [constants.CLOSE_GOING_AWAY]
        assert "shutting down, closing 21 websockets with 1001" in server.output()
        assert "1 connections did not close in time" in server.output()
    wait_until(lambda: pid not in hub_pids(redis_client), what="the hub connection closed")
    assert redis_client.pubsub_channels() == []


def test_sigint_stops_the_server_the_same_way(site, redis_client):
    with serving(gevent_server(site)) as server:
        with ws(server, "/ws/interrupt?subscribe-broadcast") as client:
            pid = server.process.pid
            assert stop_with(server, signal.SIGINT) == 0
            assert_closed_with_going_away(client)
    wait_until(lambda: pid not in hub_pids(redis_client), what="the hub connection closed")


def test_sigterm_to_the_supervisor_stops_every_worker(site, redis_client):
    with serving(gevent_server(site, ["--workers", "2"])) as server, ExitStack() as stack:
        parent = server.process.pid
        wait_until(lambda: len(children_of(parent)) == 2 and children_of(parent) <= hub_pids(redis_client),
                   what="two workers with a hub each")
        workers = children_of(parent)
        clients = [stack.enter_context(ws(server, "/ws/many?subscribe-broadcast")) for _ in range(10)]
        assert stop_with(server, signal.SIGTERM) == 0
        for client in clients:
            assert_closed_with_going_away(client)
        assert all(not os.path.exists(f"/proc/{pid}") for pid in workers)  # exited and reaped
    wait_until(lambda: not hub_pids(redis_client) & workers, what="the workers' hub connections closed")


def test_the_supervisor_replaces_a_worker_that_dies(site, redis_client):
    with serving(gevent_server(site, ["--workers", "2"])) as server:
        parent = server.process.pid
        wait_until(lambda: len(children_of(parent)) == 2 and children_of(parent) <= hub_pids(redis_client),
                   what="two workers with a hub each")
        victim = min(children_of(parent))
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: victim not in children_of(parent) and len(children_of(parent)) == 2,
                   what="a replacement worker")
        wait_until(lambda: children_of(parent) <= hub_pids(redis_client), what="the replacement's hub")
        with ExitStack() as stack:
            clients = [stack.enter_context(ws(server, "/ws/again?subscribe-broadcast")) for _ in range(6)]
            RedisPublisher(facility="again", broadcast=True).publish_message("served again")
            assert [client.recv(timeout=10) for client in clients] == ["served again"] * 6
        assert "exited with status -9" in server.output()
        assert stop_with(server, signal.SIGTERM) == 0
