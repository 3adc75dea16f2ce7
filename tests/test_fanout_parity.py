"""The fan-out's send lanes: compiled and pure twins against one model, over real sockets.

Each twin drives its own socket pairs through the same random sequence of
operations (open, deliver to an audience, flush, take, resume, close and reopen
on the same descriptor). The model knows which frames each lane accepted; what
the peer read plus what ``take`` handed back (less the offset) must be exactly
those frames in order, for every lane of every twin. Where no socket can fill up
(large buffers, little data) the twins must also return the very same values at
every step; where sockets do fill up, how much a send takes is the kernel's, so
each twin is held to the model on its own.
"""

from __future__ import annotations

import errno
import inspect
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.compiled import require_compiled
from ws4redis import constants
from ws4redis.server import lanes as pure_fanout

pytestmark = pytest.mark.once  # the compiled module is imported directly: the same in both runs

PARITY = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LANES = 3


@pytest.fixture(scope="module")
def compiled_fanout():
    return require_compiled().fanout


def twins(compiled_fanout) -> dict[str, object]:
    return {"compiled": compiled_fanout, "pure": pure_fanout}


@contextmanager
def socket_pairs(count: int, buffer: int | None) -> Iterator[list[tuple[socket.socket, socket.socket]]]:
    with ExitStack() as stack:
        pairs = []
        for _ in range(count):
            ours, peer = socket.socketpair()
            stack.callback(ours.close)
            stack.callback(peer.close)
            ours.setblocking(False)
            peer.setblocking(False)
            if buffer is not None:
                ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer)
                peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer)
            pairs.append((ours, peer))
        yield pairs


def read_all(peer: socket.socket) -> bytes:
    chunks = []
    while True:
        try:
            chunk = peer.recv(1 << 16)
        except BlockingIOError:
            return b"".join(chunks)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


class Owner:
    """A lane's owner: only its identity matters (deliver and pop_spilled hand it back)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


operation = st.one_of(
    st.tuples(st.just("deliver"), st.integers(0, 3000), st.lists(st.integers(0, LANES - 1), max_size=LANES)),
    st.tuples(st.just("flush")),
    st.tuples(st.just("take"), st.integers(0, LANES - 1)),
    st.tuples(st.just("resume"), st.integers(0, LANES - 1)),
    st.tuples(st.just("drain"), st.integers(0, LANES - 1)),
    st.tuples(st.just("reopen"), st.integers(0, LANES - 1)),
)


def run(module, operations, buffer: int | None, cork_bytes: int, cork_frames: int,
        eager: bool = False) -> list[object]:
    """Play ``operations`` on ``module``'s SendLanes; check the model; return what each step gave.

    ``eager``: every lane starts resumed and resumes again as soon as its spill was taken, so
    that a full socket spills again and again.
    """
    trace: list[object] = []
    with socket_pairs(LANES, buffer) as pairs:
        lanes = module.SendLanes(cork_bytes, cork_frames)
        owners = [Owner(f"owner{index}") for index in range(LANES)]
        ids = [lanes.open(pairs[index][0].fileno(), owners[index]) for index in range(LANES)]
        accepted = [bytearray() for _ in range(LANES)]  # the model: bytes each lane took on
        checked = [0] * LANES  # bytes of accepted that the peer read or the owner took, in order
        received = [0] * LANES  # bytes each peer read
        fast = [False] * LANES
        stale = lanes.audience([])  # an audience of lanes since closed: must reach nobody
        serial = 0

        def check(index: int, data: bytes) -> None:
            """``data`` (read by the peer, or handed back) must be the next bytes the lane accepted."""
            assert bytes(accepted[index][checked[index]:checked[index] + len(data)]) == data
            checked[index] += len(data)

        def drain(index: int) -> None:
            data = read_all(pairs[index][1])
            received[index] += len(data)
            check(index, data)

        def take(index: int) -> tuple[int, int, int]:
            frames, offset, error = lanes.take(ids[index])
            drain(index)  # what the lane wrote comes before what it hands back
            check(index, b"".join(frames)[offset:])
            fast[index] = False
            return len(frames), offset, error

        def spilled() -> None:
            for owner in lanes.pop_spilled():
                index = owners.index(owner)
                trace.append(("spilled", index, take(index)))
                if eager:
                    lanes.resume(ids[index])
                    fast[index] = True

        if eager:
            for index in range(LANES):
                lanes.resume(ids[index])
                fast[index] = True

        for step in operations:
            kind = step[0]
            if kind == "deliver":
                serial += 1
                frame = bytes([serial % 256]) * step[1]
                members = list(dict.fromkeys(step[2]))
                audience = lanes.audience([ids[index] for index in members], ["other"])
                assert len(audience) == len(members) + 1
                slow = lanes.deliver(frame, audience)
                for index in members:
                    if fast[index]:
                        accepted[index] += frame
                assert list(lanes.deliver(frame, stale)) == []
                spilled()
                trace.append(("deliver", [repr(owner) for owner in slow]))
            elif kind == "flush":
                lanes.flush()
                spilled()
            elif kind == "take":
                trace.append(("take", take(step[1])))
            elif kind == "resume":
                index = step[1]
                trace.append(("take", take(index)))  # a lane resumes holding nothing
                lanes.resume(ids[index])
                fast[index] = True
                assert lanes.is_fast(ids[index])
            elif kind == "drain":
                drain(step[1])
            else:
                index = step[1]
                take(index)
                stale = lanes.audience([ids[index]])
                assert checked[index] == len(accepted[index])
                frames, sent = lanes.close(ids[index])
                assert sent == received[index]
                with pytest.raises(ValueError):
                    lanes.sent(ids[index])
                # The same descriptor, a new lane (maybe the same number): old audiences miss it.
                owners[index] = Owner(f"owner{index}")
                ids[index] = lanes.open(pairs[index][0].fileno(), owners[index])
                accepted[index] = bytearray()
                checked[index] = received[index] = 0
                trace.append(("reopen", frames))
        for index in range(LANES):
            take(index)
            assert checked[index] == len(accepted[index])
            assert lanes.sent(ids[index])[1] == received[index]
        trace.append(("delivered", lanes.delivered))
    return trace


@PARITY
@given(st.lists(operation, max_size=40), st.sampled_from([(1 << 20, 256), (1000, 3), (1, 1)]))
def test_twins_agree_step_by_step_where_no_socket_fills(compiled_fanout, operations, cork):
    modules = twins(compiled_fanout)
    traces = {name: run(module, operations, 4 << 20, *cork) for name, module in modules.items()}
    assert traces["compiled"] == traces["pure"]
    assert not any(entry[0] == "spilled" for entry in traces["pure"])


@PARITY
@given(st.lists(operation, min_size=10, max_size=60), st.sampled_from([(16384, 256), (2000, 4)]))
def test_each_twin_keeps_every_frame_when_sockets_fill_up(compiled_fanout, operations, cork):
    spills = []
    for module in twins(compiled_fanout).values():
        trace = run(module, operations, 4096, *cork, eager=True)
        spills.append(sum(entry[0] == "spilled" for entry in trace))
    assert spills[0] > 0 or spills[1] == 0  # a socket the pure twin filled, the compiled one filled too


@pytest.mark.parametrize("name", ["compiled", "pure"])
def test_a_full_socket_spills_whole_frames_with_the_offset_of_the_first(compiled_fanout, name):
    module = twins(compiled_fanout)[name]
    with socket_pairs(1, 4096) as [(ours, peer)]:
        lanes = module.SendLanes(1 << 30, constants.LANE_MAX_FRAMES)  # no cork: all in the flush
        owner = Owner("slow reader")
        lane = lanes.open(ours.fileno(), owner)
        lanes.resume(lane)
        audience = lanes.audience([lane])
        frames = [bytes([index]) * 1000 for index in range(200)]
        for frame in frames:
            assert lanes.deliver(frame, audience) == ()
        lanes.flush()
        assert lanes.pop_spilled() == [owner]
        assert not lanes.is_fast(lane)
        # Spilled: the next delivery comes back to the owner instead of being written.
        assert list(lanes.deliver(b"late", audience)) == [owner]
        taken, offset, error = lanes.take(lane)
        assert error == 0 and 0 <= offset < 1000 and taken == frames[len(frames) - len(taken):]
        written = read_all(peer)
        assert written + b"".join(taken)[offset:] == b"".join(frames)
        assert lanes.sent(lane) == (len(frames) - len(taken), len(written))
        assert lanes.delivered == len(frames)


@pytest.mark.parametrize("name", ["compiled", "pure"])
def test_a_peer_that_is_gone_spills_with_the_errno(compiled_fanout, name):
    module = twins(compiled_fanout)[name]
    with socket_pairs(1, None) as [(ours, peer)]:
        lanes = module.SendLanes()
        lane = lanes.open(ours.fileno(), "owner")
        lanes.resume(lane)
        peer.close()
        lanes.deliver(b"\x81\x02hi", lanes.audience([lane]))
        lanes.flush()
        assert lanes.pop_spilled() == ["owner"]
        assert lanes.take(lane) == ([b"\x81\x02hi"], 0, errno.EPIPE)


@pytest.mark.parametrize("name", ["compiled", "pure"])
def test_a_pipe_is_written_too(compiled_fanout, name):
    module = twins(compiled_fanout)[name]
    read_end, write_end = os.pipe()
    try:
        os.set_blocking(write_end, False)
        lanes = module.SendLanes()
        lane = lanes.open(write_end, "owner")
        lanes.resume(lane)
        audience = lanes.audience([lane])
        lanes.deliver(b"one", audience)
        lanes.deliver(b"two", audience)
        lanes.flush()
        assert os.read(read_end, 100) == b"onetwo"
        assert lanes.sent(lane) == (2, 6)
    finally:
        os.close(read_end)
        os.close(write_end)


@pytest.mark.parametrize("name", ["compiled", "pure"])
def test_the_cork_writes_before_the_flush(compiled_fanout, name):
    module = twins(compiled_fanout)[name]
    with socket_pairs(1, None) as [(ours, peer)]:
        lanes = module.SendLanes(cork_bytes=10, cork_frames=3)
        lane = lanes.open(ours.fileno(), "owner")
        lanes.resume(lane)
        audience = lanes.audience([lane])
        lanes.deliver(b"ab", audience)
        lanes.deliver(b"cd", audience)
        assert read_all(peer) == b""
        lanes.deliver(b"ef", audience)  # the third frame: written at once, in one send
        assert read_all(peer) == b"abcdef"
        lanes.deliver(b"0123456789", audience)  # ten bytes: at once
        assert read_all(peer) == b"0123456789"
        assert lanes.sent(lane) == (4, 16)


@pytest.mark.parametrize("name", ["compiled", "pure"])
def test_misuse_is_refused_with_a_reason(compiled_fanout, name):
    module = twins(compiled_fanout)[name]
    with socket_pairs(1, None) as [(ours, _)]:
        lanes = module.SendLanes()
        for cork in ((0, 1), (1, 0), (1, constants.LANE_MAX_FRAMES + 1)):
            with pytest.raises(ValueError, match="cork sizes"):
                module.SendLanes(*cork)
        with pytest.raises(ValueError, match="not a file descriptor"):
            lanes.open(-1, "owner")
        lane = lanes.open(ours.fileno(), "owner")
        with pytest.raises(ValueError, match="no lane"):
            lanes.take(lane + 1)
        with pytest.raises(ValueError, match="no lane"):
            lanes.audience([lane + 7])
        lanes.resume(lane)
        audience = lanes.audience([lane])
        for frame in (bytearray(b"x"), "x", None, memoryview(b"x")):
            with pytest.raises(TypeError):
                lanes.deliver(frame, audience)
        with pytest.raises(TypeError):
            lanes.deliver(b"x", [lane])
        lanes.deliver(b"held", audience)
        with pytest.raises(ValueError, match="still holds frames"):
            lanes.resume(lane)
        lanes.close(lane)
        with pytest.raises(ValueError, match="not open"):
            lanes.take(lane)


def test_the_compiled_lanes_hold_a_reference_per_pending_frame_and_release_it(compiled_fanout):
    with socket_pairs(2, 4096) as pairs:
        lanes = compiled_fanout.SendLanes(1 << 30, constants.LANE_MAX_FRAMES)
        ids = [lanes.open(ours.fileno(), index) for index, (ours, _) in enumerate(pairs)]
        for lane in ids:
            lanes.resume(lane)
        audience = lanes.audience(ids)
        frame = bytes(range(256)) * 40
        before = sys.getrefcount(frame)
        for _ in range(5):
            lanes.deliver(frame, audience)
        assert sys.getrefcount(frame) == before + 10
        lanes.flush()  # 4096-byte buffers: both spill, their frames stay held until taken or closed
        assert sorted(lanes.pop_spilled()) == [0, 1]
        taken = lanes.take(ids[0])[0]
        del taken
        lanes.close(ids[1])
        assert sys.getrefcount(frame) == before


def test_the_twins_have_the_same_public_api(compiled_fanout):
    def public(instance: object) -> set[str]:
        return {attribute for attribute in dir(instance) if not attribute.startswith("_")}

    with socket_pairs(1, None) as [(ours, _)]:
        instances = {}
        for name, module in twins(compiled_fanout).items():
            lanes = module.SendLanes()
            lane = lanes.open(ours.fileno(), "owner")
            instances[name] = (lanes, lanes.audience([lane], ["other"]))
        assert public(instances["compiled"][0]) == public(instances["pure"][0])
        assert public(instances["compiled"][1]) == public(instances["pure"][1]) == {"lanes", "others"}
        assert instances["compiled"][1].lanes == instances["pure"][1].lanes == ((0, 0),)
    for method in ("open", "close", "resume", "take", "sent", "is_fast", "pop_spilled", "audience", "deliver",
                   "flush"):
        compiled_method = getattr(compiled_fanout.SendLanes, method)
        pure_method = getattr(pure_fanout.SendLanes, method)
        assert list(inspect.signature(compiled_method).parameters) == \
            list(inspect.signature(pure_method).parameters), method
