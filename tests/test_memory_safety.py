"""The compiled core never crashes and never reads outside its input.

The extensions are built with bounds checking off, so every read is guarded
by explicit length logic; these tests attack that logic:

- hypothesis feeds random, truncated and oversized input to the parser, the
  masker and the validator (they must answer or raise a ProtocolError /
  TypeError / ValueError, nothing else);
- a subprocess places inputs flush against inaccessible guard pages, so a
  single byte read past the end (or before the start) kills it with SIGSEGV;
- odd buffers (memoryview slices, non-contiguous views, empty input) and
  absurd declared lengths;
- a slow test rebuilds the extensions with AddressSanitizer and runs a
  seeded fuzz batch under it.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.builds import build_copy, run_in_copy
from ws4redis import constants
from ws4redis.exceptions import InvalidPayloadError, MessageTooBigError, ProtocolError

pytestmark = pytest.mark.once  # the same in both suite runs: tests/run.py runs it once

ROOT = Path(__file__).resolve().parent.parent
KEY = b"\x37\xfa\x21\x3d"
TEXT, BINARY, CONT = constants.OP_TEXT, constants.OP_BINARY, constants.OP_CONTINUATION
CLOSE = constants.OP_CLOSE
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def sample_stream(encode_frame) -> bytes:
    """Frames of every length encoding and kind, masked as a client sends them."""
    parts = [
        encode_frame(TEXT, "héllo wörld 😀".encode(), mask_key=KEY),
        encode_frame(BINARY, bytes(range(256)) * 3, mask_key=KEY),
        encode_frame(TEXT, "ж".encode() * 40, fin=False, mask_key=KEY),
        encode_frame(constants.OP_PING, b"ping", mask_key=KEY),
        encode_frame(CONT, "€".encode() * 30, mask_key=KEY),
        encode_frame(BINARY, b"\x00" * 70000, mask_key=KEY),
        encode_frame(CLOSE, (1000).to_bytes(2, "big") + b"bye", mask_key=KEY),
    ]
    return b"".join(parts)


# ---------------------------------------------------------------- random input


@FUZZ
@given(
    data=st.binary(max_size=400),
    require_mask=st.booleans(),
    max_message_size=st.sampled_from([1, 125, 65536, 1 << 62]),
    cuts=st.lists(st.integers(0, 400), max_size=5),
    allow_compressed=st.booleans(),
)
def test_parser_survives_random_bytes(compiled, data, require_mask, max_message_size, cuts, allow_compressed):
    parser = compiled.frames.FrameParser(require_mask=require_mask, max_message_size=max_message_size,
                                         allow_compressed=allow_compressed)
    edges = [0, *sorted(cut for cut in cuts if cut <= len(data)), len(data)]
    received = 0
    for start, end in zip(edges, edges[1:], strict=False):
        received += end - start
        try:
            frames = parser.feed(data[start:end])
        except ProtocolError as exc:
            assert exc.close_code in (1002, 1007, 1009)
            assert parser.buffered == 0
            assert parser.error is exc
            break
        assert all(type(frame.payload) is bytes for frame in frames)
        assert 0 <= parser.buffered <= received


@FUZZ
@given(data=st.binary(max_size=300), key=st.binary(min_size=4, max_size=4), start=st.integers(0, 40))
def test_mask_and_validator_survive_random_bytes_and_slices(compiled, data, key, start):
    source = memoryview(bytes(start) + data)[start:]
    masked = compiled.mask.mask(source, key)
    assert len(masked) == len(data)
    target = bytearray(data)
    compiled.mask.mask_inplace(memoryview(target), key)
    assert bytes(target) == masked
    assert compiled.utf8.validate_utf8(source) in (True, False)
    valid, _, index, total = compiled.utf8.Utf8Validator().validate(source)
    assert 0 <= index == total <= len(data)
    assert valid or index < len(data)


def test_every_truncation_of_a_stream_is_waited_for(compiled):
    stream = sample_stream(compiled.frames.encode_frame)
    complete = compiled.frames.FrameParser().feed(stream)
    assert len(complete) == 7
    cuts = sorted({*range(0, 400), *range(len(stream) - 300, len(stream)), *range(0, len(stream), 997)})
    for cut in cuts:
        parser = compiled.frames.FrameParser()
        frames = parser.feed(stream[:cut])
        assert frames == complete[: len(frames)]
        assert parser.buffered <= cut
        rest = parser.feed(stream[cut:])
        assert frames + rest == complete
        assert parser.buffered == 0


# ---------------------------------------------------------------- absurd lengths


def header_64(length: int, opcode: int = BINARY) -> bytes:
    return bytes((0x80 | opcode, 0x80 | 127)) + length.to_bytes(8, "big") + KEY


def test_huge_declared_length_is_refused_before_buffering(compiled):
    parser = compiled.frames.FrameParser()
    with pytest.raises(MessageTooBigError) as info:
        parser.feed(header_64((1 << 63) - 1) + b"payload")
    assert info.value.close_code == 1009
    assert parser.buffered == 0


def test_length_with_the_top_bit_set_is_a_protocol_error(compiled):
    for length in (1 << 63, (1 << 64) - 1):
        parser = compiled.frames.FrameParser(max_message_size=1 << 70)
        with pytest.raises(ProtocolError) as info:
            parser.feed(header_64(length))
        assert info.value.close_code == 1002
        assert "most significant bit" in str(info.value)


def test_huge_allowed_length_only_buffers_what_arrives(compiled):
    parser = compiled.frames.FrameParser(max_message_size=1 << 63)
    assert parser.feed(header_64((1 << 63) - 1)) == []
    chunk = os.urandom(1 << 16)
    for _ in range(16):
        assert parser.feed(chunk) == []
    assert parser.buffered == 16 << 16


def test_bad_text_fails_as_soon_as_it_arrives(compiled):
    good = "ünïcødé ".encode() * 2000
    frame = compiled.frames.encode_frame(TEXT, good + b"\xff" + good, mask_key=KEY)
    bad_at = len(frame) - len(good) - 1
    parser = compiled.frames.FrameParser()
    for start in range(0, len(frame), 1000):
        if start + 1000 <= bad_at:
            assert parser.feed(frame[start : start + 1000]) == []
        else:
            with pytest.raises(InvalidPayloadError):
                parser.feed(frame[start : start + 1000])
            break
    assert start < len(frame) - 1000  # long before the frame was complete


# ---------------------------------------------------------------- odd buffers


def test_memoryview_slices_parse_like_bytes(compiled):
    stream = sample_stream(compiled.frames.encode_frame)
    padded = b"\xaa" * 13 + stream + b"\xbb" * 13
    expected = compiled.frames.FrameParser().feed(stream)
    assert compiled.frames.FrameParser().feed(memoryview(padded)[13:-13]) == expected
    assert compiled.frames.FrameParser().feed(bytearray(stream)) == expected


def test_non_contiguous_input_is_a_clean_error(compiled):
    strided = memoryview(bytes(64))[::2]
    parser = compiled.frames.FrameParser()
    with pytest.raises(TypeError):
        parser.feed(strided)
    assert parser.error is None
    frame = compiled.frames.encode_frame(BINARY, b"still works", mask_key=KEY)
    assert parser.feed(frame)[0].payload == b"still works"
    with pytest.raises(TypeError):
        compiled.frames.encode_frame(BINARY, strided)
    with pytest.raises(TypeError):
        compiled.mask.mask_inplace(memoryview(bytearray(64))[::2], KEY)
    assert compiled.mask.mask(strided, KEY) == compiled.mask.mask(bytes(strided), KEY)
    assert compiled.utf8.validate_utf8(strided) is True


@pytest.mark.parametrize("data", ["text", 1, None, object()], ids=["str", "int", "None", "object"])
def test_non_buffers_are_type_errors(compiled, data):
    parser = compiled.frames.FrameParser()
    with pytest.raises(TypeError):
        parser.feed(data)
    with pytest.raises(TypeError):
        compiled.mask.mask(data, KEY)
    with pytest.raises(TypeError):
        compiled.utf8.validate_utf8(data)
    with pytest.raises(TypeError):
        compiled.utf8.Utf8Validator().validate(data)


def test_zero_length_input_everywhere(compiled):
    assert compiled.mask.mask(b"", KEY) == b""
    empty = bytearray()
    compiled.mask.mask_inplace(empty, KEY)
    assert empty == bytearray()
    assert compiled.utf8.validate_utf8(memoryview(b"")) is True
    assert compiled.utf8.Utf8Validator().validate(bytearray()) == (True, True, 0, 0)
    parser = compiled.frames.FrameParser()
    assert parser.feed(b"") == [] and parser.feed(memoryview(b"")) == []
    assert parser.buffered == 0
    frames = parser.feed(compiled.frames.encode_frame(TEXT, b"", mask_key=KEY))
    assert frames == [compiled.frames.Frame(TEXT, b"")]


def test_no_reference_or_object_leaks(compiled):
    stream = sample_stream(compiled.frames.encode_frame)
    bad = b"\x83\x80" + KEY  # reserved opcode
    key = bytes(KEY)
    references = sys.getrefcount(stream), sys.getrefcount(key)

    def churn():
        for _ in range(300):
            parser = compiled.frames.FrameParser()
            parser.feed(stream)
            with pytest.raises(ProtocolError):
                parser.feed(bad)
                parser.feed(b"\xff\xff")
            compiled.mask.mask(stream, key)
            compiled.utf8.Utf8Validator().validate(stream)

    churn()
    gc.collect()
    before = len(gc.get_objects())
    churn()
    gc.collect()
    assert len(gc.get_objects()) - before < 50
    assert (sys.getrefcount(stream), sys.getrefcount(key)) == references


def test_parser_buffers_are_freed(compiled):
    def resident_bytes() -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    partial = compiled.frames.encode_frame(BINARY, bytes(1 << 20), mask_key=KEY)[: 1 << 19]
    baseline = resident_bytes()
    for _ in range(400):  # 400 parsers x 512 KiB held = 200 MiB if nothing were freed
        parser = compiled.frames.FrameParser(max_message_size=2 << 20)
        parser.feed(partial[:100])
        parser.feed(partial[100:])
        assert parser.buffered == len(partial) - 14
    assert resident_bytes() - baseline < 64 << 20


# ---------------------------------------------------------------- guard pages

GUARD_PROBE = r"""
import ctypes, mmap, sys
from ws4redis import _speedups_frames as frames, _speedups_mask as masking, _speedups_utf8 as utf8
from ws4redis.exceptions import ProtocolError

libc = ctypes.CDLL(None, use_errno=True)
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
PAGE = mmap.PAGESIZE
region = mmap.mmap(-1, 3 * PAGE)
base = ctypes.addressof(ctypes.c_char.from_buffer(region))
for guard in (base, base + 2 * PAGE):
    if libc.mprotect(guard, PAGE, 0) != 0:
        sys.exit("mprotect failed: errno %d" % ctypes.get_errno())
view = memoryview(region)
KEY = b"\x37\xfa\x21\x3d"

def placed(data):
    # data flush against the upper guard page, then flush against the lower one
    end = 2 * PAGE
    view[end - len(data):end] = data
    yield view[end - len(data):end]
    view[PAGE:PAGE + len(data)] = data
    yield view[PAGE:PAGE + len(data)]

samples = [bytes(range(256)), b"a" * 300, ("ж" * 150).encode(), ("😀" * 80).encode(),
           ("x" * 70 + "中" * 60).encode(), b"\xf0\x9f\x98" * 90]
stream = b"".join(frames.encode_frame(op, data[:size], mask_key=KEY)
                  for op, data, size in [(1, samples[2], 200), (2, samples[0], 126), (9, b"p", 1),
                                         (1, samples[3], 300), (8, b"\x03\xe8bye", 5)])
checks = 0
for scanner in utf8.implementations():  # every UTF-8 scanner this processor runs, SIMD included
    utf8.use(scanner)
    for sample in samples:
        for length in range(0, min(len(sample), 300) + 1):
            for data in placed(sample[:length]):
                masking.mask(data, KEY)
                utf8.validate_utf8(data)
                utf8.Utf8Validator().validate(data)
                frames.encode_frame(2, data, mask_key=KEY)
                checks += 1
for length in range(0, 300):
    data = (samples[0] * 2)[:length]
    for offset in (0, length // 2, length):
        end = 2 * PAGE
        view[end - length:end] = data
        masking.mask_inplace(view[end - length:end], KEY, offset)
for length in range(0, len(stream) + 1):
    for data in placed(stream[:length]):
        parser = frames.FrameParser()
        try:
            parser.feed(data)
        except ProtocolError:
            pass
        checks += 1
print("ok", checks)
"""


def test_no_read_outside_the_input(compiled):
    result = subprocess.run(
        [sys.executable, "-c", GUARD_PROBE],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, f"probe died with {result.returncode}: {result.stderr[-2000:]}"
    assert result.stdout.startswith("ok ")


# ---------------------------------------------------------------- AddressSanitizer

ASAN_FUZZ = r"""
import random, sys
from ws4redis import _speedups_frames as frames, _speedups_mask as masking, _speedups_utf8 as utf8
from ws4redis.exceptions import ProtocolError

rounds = int(sys.argv[1])
rng = random.Random(20240607)
scanners = utf8.implementations()
KEY = b"\x37\xfa\x21\x3d"
texts = ["plain ascii ", "ünïcødé ", "中文 ", "😀 ", "ж"]
for round_ in range(rounds):
    size = rng.choice([0, 1, 3, 7, 15, 16, 17, 63, 64, 65, 127, 128, 129, 300, 70000])
    text = (rng.choice(texts) * (size // 2 + 1)).encode()[:size]
    data = bytearray(text if rng.random() < 0.7 else rng.randbytes(size))
    if data and rng.random() < 0.5:
        data[rng.randrange(len(data))] = rng.randrange(256)
    data = bytes(data)
    utf8.use(scanners[round_ % len(scanners)])
    masking.mask(data, KEY)
    buf = bytearray(data)
    masking.mask_inplace(buf, KEY, rng.randint(0, len(buf)))
    utf8.validate_utf8(data)
    validator = utf8.Utf8Validator()
    cut = rng.randint(0, len(data))
    validator.validate(data[:cut])
    validator.validate(data[cut:])
    stream = b"".join(
        frames.encode_frame(rng.choice([0, 1, 2, 8, 9, 10, 3]), data[: rng.randint(0, len(data))],
                            fin=rng.random() < 0.8, mask_key=KEY, rsv1=rng.random() < 0.2)
        for _ in range(3)
    )
    if rng.random() < 0.5 and stream:
        stream = bytearray(stream)
        stream[rng.randrange(len(stream))] ^= 1 << rng.randrange(8)
        stream = bytes(stream)
    parser = frames.FrameParser(max_message_size=rng.choice([100, 1 << 20]),
                                allow_compressed=rng.random() < 0.5)
    position = 0
    try:
        while position < len(stream):
            step = rng.randint(1, 200)
            parser.feed(stream[position:position + step])
            position += step
    except ProtocolError:
        pass

# The send lanes: random deliveries, flushes, takes, closes and reopens over small socket buffers
# (spills with partial frames), audiences that outlive their lanes, peers that vanish.
import socket
from ws4redis import _speedups_fanout as fanout
pairs = []
for _ in range(4):
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    peer.setblocking(False)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    pairs.append([ours, peer])
lanes = fanout.SendLanes(rng.choice([64, 4096, 16384]), rng.choice([1, 3, 256]))
ids = [lanes.open(ours.fileno(), index) for index, (ours, _) in enumerate(pairs)]
audiences = [lanes.audience(ids)]
for round_ in range(rounds * 10):
    action = rng.random()
    if action < 0.5:
        lanes.deliver(rng.randbytes(rng.choice([0, 1, 100, 2000, 70000])), rng.choice(audiences))
    elif action < 0.6:
        lanes.flush()
    elif action < 0.75:
        index = rng.randrange(len(ids))
        lanes.take(ids[index])
        if rng.random() < 0.7:
            lanes.resume(ids[index])
    elif action < 0.8:
        audiences.append(lanes.audience(rng.sample(ids, rng.randint(0, len(ids)))))
        audiences = audiences[-5:]
    elif action < 0.85:
        index = rng.randrange(len(ids))
        lanes.close(ids[index])
        ids[index] = lanes.open(pairs[index][0].fileno(), index)
    elif action < 0.87:
        index = rng.randrange(len(ids))
        pairs[index][1].close()  # the peer is gone: the next write fails with EPIPE
        pairs[index][1] = socket.socket()
    else:
        for _, peer in pairs:
            try:
                peer.recv(1 << 20)
            except OSError:
                pass
    for index in lanes.pop_spilled():
        lanes.take(ids[index])
del lanes
print("ok", rounds)
"""


def asan_runtime() -> str:
    compiler = sysconfig.get_config_var("CC") or "gcc"
    found = subprocess.run(
        [compiler.split()[0], "-print-file-name=libasan.so"], capture_output=True, text=True
    ).stdout.strip()
    if not found or not os.path.isabs(found) or not os.path.exists(found):
        pytest.fail(f"AddressSanitizer runtime (libasan.so) not found via {compiler}", pytrace=False)
    return found


@pytest.mark.slow
def test_fuzz_batch_under_address_sanitizer(compiled, tmp_path):
    runtime = asan_runtime()
    build_copy(
        tmp_path, CFLAGS="-fsanitize=address -fno-omit-frame-pointer -O1 -g", LDFLAGS="-fsanitize=address"
    )
    result = run_in_copy(
        tmp_path, ASAN_FUZZ, "400",
        LD_PRELOAD=runtime, ASAN_OPTIONS="detect_leaks=0:abort_on_error=1", PYTHONMALLOC="malloc",
    )
    assert result.returncode == 0, f"AddressSanitizer run failed: {result.stderr[-4000:]}"
    assert result.stdout.startswith("ok ")
