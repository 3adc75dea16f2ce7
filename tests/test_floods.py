"""A client that sends and never reads cannot grow the server, on every server path.

Every ping is answered with a pong and every heartbeat with the heartbeat:
a client flooding either while it reads nothing used to make the server
queue answers without bound (1.47 GiB in 14 s). Now the server stops
reading from such a peer once its answers fill the send queue
(WS4REDIS_SEND_QUEUE_BYTES/MESSAGES): the client's own sends block, the
server's memory stays flat, and a peer that still reads nothing after
WS4REDIS_PING_TIMEOUT is closed with 1008. The development server writes
each answer synchronously in the websocket's thread, which blocks the same
way.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from tests import servers
from tests.polling import wait_until
from tests.wire import client_frame
from ws4redis import constants
from ws4redis.protocol import CloseReceived

HEARTBEAT = "--heartbeat--"
QUEUE_BYTES = 1024 * 1024
PING_TIMEOUT = 3.0
FLOOD_BYTES = 256 * 1024 * 1024  # what an unbounded server would have to hold, at the most
FLOOD_SECONDS = 15.0
BLOCKED_FOR = 2.0  # a send that waits this long means the server stopped reading
KINDS = [pytest.param(kind, marks=[pytest.mark.uwsgi] if kind == "uwsgi" else [])
         for kind in ("gevent", "uwsgi", "runserver")]
STARTERS = {
    **servers.STARTERS,
    # Clients straight on the worker (as from nginx): uWSGI's own router would hold the flood's
    # answers in its socket buffers, bounded by the kernel, before the worker ever fell behind.
    "uwsgi": lambda site: servers.uwsgi(site, module="tests.project.wsgi", router=False),
}


@pytest.fixture(scope="module")
def site(redis_server) -> Iterator[servers.Site]:
    site = servers.Site(redis_server.url, {
        "WS4REDIS_SEND_QUEUE_BYTES": str(QUEUE_BYTES),
        "WS4REDIS_PING_INTERVAL": "None",
        "WS4REDIS_PING_TIMEOUT": str(PING_TIMEOUT),
        "WS4REDIS_HEARTBEAT": repr(HEARTBEAT),
    })
    yield site
    site.cleanup()


def flood(sock: socket.socket, frame: bytes) -> tuple[int, bool]:
    """Send ``frame`` over and over without reading; returns (bytes sent, whether the server pushed back)."""
    batch = frame * max(1, 65536 // len(frame))
    sent = 0
    deadline = time.monotonic() + FLOOD_SECONDS
    sock.settimeout(BLOCKED_FOR)
    while sent < FLOOD_BYTES and time.monotonic() < deadline:
        try:
            sent += sock.send(batch)
        except TimeoutError:
            return sent, True
    return sent, False


@pytest.mark.parametrize("answer", ["ping", "heartbeat"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_peer_that_floods_and_never_reads_is_held_back_then_closed_with_1008(site, kind, answer):
    frame = (client_frame(constants.OP_PING, b"p" * 125) if answer == "ping"
             else client_frame(constants.OP_TEXT, HEARTBEAT.encode()))
    with servers.serving(STARTERS[kind](site)) as server:
        mark = server.mark()
        pids = servers.process_tree(server)
        sock, rest = servers.raw_upgrade(server, "/ws/flood?subscribe-broadcast", receive_buffer=4096)
        with sock:
            before = servers.rss_kib(pids)
            sent, pushed_back = flood(sock, frame)
            growth = servers.rss_kib(pids) - before
            assert pushed_back, f"the server read all {sent} bytes of the flood without pushing back"
            assert growth < 2 * QUEUE_BYTES // 1024, f"the server grew by {growth} KiB for {sent} bytes"
            print(f"{kind}/{answer}: pushed back after {sent} bytes, server grew {growth} KiB")
            if kind != "runserver":  # the development server has no send queue to time out
                # Still not reading: the server gives up on this peer, and says so.
                wait_until(lambda: "does not read what it asks for" in server.output_since(mark),
                           limit=4 * PING_TIMEOUT, what="the 1008 decision")
                sock.settimeout(PING_TIMEOUT + 20)
                events = servers.read_until_closed(sock, rest)
                closes = [event for event in events if isinstance(event, CloseReceived)]
                assert [close.code for close in closes] == [constants.CLOSE_POLICY_VIOLATION], events[-3:]
        assert server.alive()
        assert not server.tracebacks(), server.tracebacks()
