"""The fan-out alone: one framed message to N real loopback sockets, next to the send floor.

Groups ``fanout <sockets> x<messages>``: each round delivers ``messages`` frames of 100 bytes to
every one of ``sockets`` TCP connections on 127.0.0.1 and writes them out, as the hub does for
one batch read from Redis. Side by side in the same run:

* ``floor``: a plain loop of ``os.write(fd, frame)``, one system call per delivery, no queue and
  no bookkeeping: what the kernel charges, which a per-message write cannot go below;
* ``lanes compiled`` / ``lanes pure``: ``SendLanes.deliver`` per message, then one ``flush``
  (one ``sendmsg`` per socket for the whole batch).

The peers' buffers are emptied before each round (not timed). ``extra_info`` holds the CPU time
per delivery (``us_per_delivery``, from the fastest round), the figure the issue's targets use.

    python -m pytest benchmarks/test_bench_fanout.py --benchmark-only
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from contextlib import ExitStack

import pytest

from ws4redis.protocol import frame_payload
from ws4redis.server import lanes as pure_lanes

FRAME = frame_payload(b"x" * 100)
SHAPES = {"1000 x1": (1000, 1), "1000 x10": (1000, 10), "100 x100": (100, 100)}


@pytest.fixture(scope="module")
def loopback() -> Iterator[list[tuple[socket.socket, socket.socket]]]:
    """1,000 connected TCP pairs on 127.0.0.1: (our end, non-blocking; the peer's end)."""
    with ExitStack() as stack:
        listener = stack.enter_context(socket.create_server(("127.0.0.1", 0), backlog=1024))
        port = listener.getsockname()[1]
        pairs = []
        for _ in range(max(sockets for sockets, _ in SHAPES.values())):
            peer = stack.enter_context(socket.create_connection(("127.0.0.1", port)))
            ours = stack.enter_context(listener.accept()[0])
            ours.setblocking(False)
            ours.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            peer.setblocking(False)
            pairs.append((ours, peer))
        yield pairs


def drain(peers: list[socket.socket]) -> None:
    for peer in peers:
        try:
            while peer.recv(1 << 20):
                pass
        except BlockingIOError:
            pass


def floor(fds: list[int], messages: int) -> Callable[[], None]:
    write = os.write

    def run() -> None:
        for _ in range(messages):
            for fd in fds:
                write(fd, FRAME)

    return run


def lanes_of(module) -> Callable[[list[int], int], Callable[[], None]]:
    def make(fds: list[int], messages: int) -> Callable[[], None]:
        lanes = module.SendLanes()
        ids = [lanes.open(fd, None) for fd in fds]
        for lane in ids:
            lanes.resume(lane)
        audience = lanes.audience(ids)

        def run() -> None:
            for _ in range(messages):
                lanes.deliver(FRAME, audience)
            lanes.flush()
            assert not lanes.spilled  # every byte went out: the peers' buffers were emptied

        return run

    return make


def writers(compiled) -> dict[str, Callable[[list[int], int], Callable[[], None]]]:
    return {"floor": floor, "lanes compiled": lanes_of(compiled.fanout), "lanes pure": lanes_of(pure_lanes)}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", ["floor", "lanes compiled", "lanes pure"])
def test_fan_out_to_loopback_sockets(benchmark, compiled, loopback, name, shape):
    sockets, messages = SHAPES[shape]
    pairs = loopback[:sockets]
    peers = [peer for _, peer in pairs]
    run = writers(compiled)[name]([ours.fileno() for ours, _ in pairs], messages)
    benchmark.group = f"fanout {shape}"
    benchmark.pedantic(run, setup=lambda: drain(peers), rounds=20, warmup_rounds=2)
    drain(peers)
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        benchmark.extra_info["us_per_delivery"] = stats.stats.min * 1e6 / (sockets * messages)
