"""Stop, reload and recycling close every websocket with 1001 under uWSGI and runserver.

A client that gets 1001 (going away) reconnects at once; one whose socket
just vanishes waits for a TCP timeout or its own heartbeat. Each test opens
several websockets, makes the server go away the way operators do, and
checks that every client received a close frame with 1001, within the
shutdown deadline. (The gevent server: tests/test_shutdown.py.)
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack

import pytest
from websockets.exceptions import ConnectionClosed

from tests import servers
from tests.polling import wait_until
from ws4redis import constants

SHUTDOWN_TIMEOUT = 2.0
# Room for uWSGI to notice (its counters are compared once a second) and for a loaded machine.
SLACK = 8.0
CLIENTS = 5


@pytest.fixture
def site(redis_server) -> Iterator[servers.Site]:
    site = servers.Site(redis_server.url, {"WS4REDIS_SHUTDOWN_TIMEOUT": str(SHUTDOWN_TIMEOUT)})
    yield site
    site.cleanup()


def open_clients(stack: ExitStack, server: servers.ServerProcess, count: int = CLIENTS) -> list:
    facility = f"away{uuid.uuid4().hex[:8]}"
    return [stack.enter_context(servers.ws_connect(server, f"/ws/{facility}?subscribe-broadcast"))
            for _ in range(count)]


def assert_all_going_away(clients: list, since: float) -> float:
    """Every client got a close frame with 1001; returns the seconds from ``since`` to the last one."""
    codes = []
    for client in clients:
        with pytest.raises(ConnectionClosed) as closed:
            client.recv(timeout=SHUTDOWN_TIMEOUT + SLACK)
        codes.append(closed.value.rcvd.code if closed.value.rcvd is not None else None)
    took = time.monotonic() - since
    assert codes == [constants.CLOSE_GOING_AWAY] * len(clients), f"close codes {codes} (None: no frame)"
    assert took < SHUTDOWN_TIMEOUT + SLACK, f"the last close took {took:.1f} s"
    print(f"{len(clients)} clients closed with 1001 within {took * 1000:.0f} ms")
    return took


def serves_again(server: servers.ServerProcess) -> bool:
    """Whether a new websocket is accepted and receives a message (a new worker took over)."""
    try:
        with servers.ws_connect(server, "/ws/again?echo&subscribe-broadcast&publish-broadcast",
                                open_timeout=5) as client:
            client.send("still here")
            return client.recv(timeout=5) == "still here"
    except (OSError, ConnectionClosed, TimeoutError, Exception):
        return False


def uwsgi(site: servers.Site, *extra: str, workers: int = 2,
          master: bool | None = None) -> servers.ServerProcess:
    """uWSGI with 0.6.0's wsgi.py; under a master the clients connect to the workers (as from nginx).

    A master SIGKILLs its own HTTP router (--http) first on every reload and stop, which drops
    the clients' connections before any worker can close them (uWSGI's uwsgi_destroy_processes).
    """
    master = workers > 1 if master is None else master
    return servers.uwsgi(site, gevent=100, module="tests.project.wsgi", workers=workers, master=master,
                         router=not master, extra=["--worker-reload-mercy", "30", *extra])


@pytest.mark.uwsgi
@pytest.mark.parametrize(("workers", "signum"), [(1, signal.SIGINT), (1, signal.SIGTERM), (2, signal.SIGTERM),
                                                 (2, signal.SIGINT)])
def test_stopping_uwsgi_closes_every_websocket_with_1001(site, workers, signum):
    with servers.serving(uwsgi(site, workers=workers)) as server, ExitStack() as stack:
        clients = open_clients(stack, server)
        started = time.monotonic()
        server.process.send_signal(signum)
        assert_all_going_away(clients, started)
        server.process.wait(SHUTDOWN_TIMEOUT + SLACK)
        assert "retires (stop): closing" in server.output()
        assert not server.tracebacks(), server.tracebacks()


@pytest.mark.uwsgi
def test_a_graceful_reload_closes_every_websocket_with_1001_and_new_workers_serve(site):
    with servers.serving(uwsgi(site)) as server, ExitStack() as stack:
        clients = open_clients(stack, server)
        started = time.monotonic()
        server.process.send_signal(signal.SIGHUP)
        assert_all_going_away(clients, started)
        wait_until(lambda: serves_again(server), limit=30, what="a reloaded worker serving websockets")
        assert "retires (graceful reload)" in server.output()
        assert not server.tracebacks(), server.tracebacks()


@pytest.mark.uwsgi
def test_touch_reload_closes_every_websocket_with_1001(site):
    trigger = site.directory / "reload.trigger"
    trigger.write_text("")
    with servers.serving(uwsgi(site, "--touch-reload", str(trigger))) as server, ExitStack() as stack:
        clients = open_clients(stack, server)
        time.sleep(1.1)  # uWSGI compares modification times in whole seconds
        started = time.monotonic()
        os.utime(trigger)
        assert_all_going_away(clients, started)
        wait_until(lambda: serves_again(server), limit=30, what="a reloaded worker serving websockets")


@pytest.mark.uwsgi
def test_max_requests_recycles_the_worker_after_closing_its_websockets_with_1001(site):
    server = uwsgi(site, "--max-requests", "3", "--min-worker-lifetime", "0", workers=1, master=True)
    with servers.serving(server), ExitStack() as stack:
        clients = open_clients(stack, server)
        worker = max(children(server.process.pid))
        for _ in range(3):  # plain requests: the third reaches --max-requests
            servers.http_request(server.port, "GET", "/ping")
        started = time.monotonic()
        assert_all_going_away(clients, started)
        wait_until(lambda: worker not in children(server.process.pid), what="the old worker gone")
        wait_until(lambda: serves_again(server), limit=30, what="a new worker serving websockets")
        assert "retires (max requests reached)" in server.output()


@pytest.mark.uwsgi
def test_reload_on_rss_recycles_the_worker_after_closing_its_websockets_with_1001(site):
    """Any worker is over 1 MB: it retires as soon as it has lived --min-worker-lifetime seconds."""
    lifetime = 6
    server = uwsgi(site, "--reload-on-rss", "1", "--min-worker-lifetime", str(lifetime))
    with servers.serving(server), ExitStack() as stack:
        clients = open_clients(stack, server, count=3)
        started = time.monotonic()
        for client in clients:
            with pytest.raises(ConnectionClosed) as closed:
                client.recv(timeout=lifetime + SHUTDOWN_TIMEOUT + SLACK)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == constants.CLOSE_GOING_AWAY
        assert time.monotonic() - started < lifetime + SHUTDOWN_TIMEOUT + SLACK
        assert "retires (reload-on-rss limit reached)" in server.output()


def children(pid: int) -> set[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as found:
        return {int(child) for child in found.read().split()}


def test_ctrl_c_on_runserver_closes_every_websocket_with_1001(site):
    with servers.serving(servers.runserver(site)) as server, ExitStack() as stack:
        clients = open_clients(stack, server)
        started = time.monotonic()
        server.process.send_signal(signal.SIGINT)
        assert_all_going_away(clients, started)
        server.process.wait(SHUTDOWN_TIMEOUT + SLACK)
