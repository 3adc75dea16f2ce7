"""Check an installed ws4redis: the compiled core is there and gives the pure twin's results.

    python tests/wheel_check.py [ROUNDS]

Run as a script (not through pytest), so that ``import ws4redis`` finds the installed package or
the directory on PYTHONPATH, never the checkout: cibuildwheel runs it against each wheel it
builds, and tests/test_compilers.py against builds made with other compilers. A seeded batch of
random text, bytes and frames goes through masking, every UTF-8 scanner the processor runs, the
incremental validator (split at a random point), frame encoding and parsing (in random steps),
compiled and pure; any difference fails with the input. On POSIX the fan-out's send lanes,
compiled and pure, write the same seeded deliveries to socket pairs, and their peers must read
the same bytes. Prints a JSON summary.
"""

from __future__ import annotations

import json
import os
import random
import socket
import sys

from ws4redis import _speedups_frames as cframes
from ws4redis import _speedups_mask as cmask
from ws4redis import _speedups_utf8 as cutf8
from ws4redis import speedups
from ws4redis.exceptions import ProtocolError
from ws4redis.pure import frames as pframes
from ws4redis.pure import mask as pmask
from ws4redis.pure import utf8 as putf8

KEY = b"\x37\xfa\x21\x3d"
TEXTS = ["plain ascii ", "ünïcødé ", "中文 ", "😀 ", "ж"]
SIZES = [0, 1, 3, 7, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129, 300, 4099, 70000]


def parse(module, stream: bytes, steps: list[int], **options) -> list:
    """Every frame (or the error's close code) ``module``'s parser gives for ``stream`` fed in ``steps``."""
    parser = module.FrameParser(**options)
    out: list = []
    position = 0
    try:
        for step in steps:
            chunk = stream[position:position + step]
            out += [(f.fin, f.opcode, f.rsv1, f.rsv2, f.rsv3, f.payload) for f in parser.feed(chunk)]
            position += step
    except ProtocolError as exc:
        out.append(("error", exc.close_code))
    return out


def sample(rng: random.Random) -> bytes:
    size = rng.choice(SIZES)
    text = (rng.choice(TEXTS) * (size // 2 + 1)).encode()[:size]
    data = bytearray(text if rng.random() < 0.7 else rng.randbytes(size))
    if data and rng.random() < 0.5:
        data[rng.randrange(len(data))] = rng.randrange(256)
    return bytes(data)


def check_utf8(data: bytes, rng: random.Random) -> None:
    cut = rng.randint(0, len(data))
    for scanner in cutf8.implementations():
        cutf8.use(scanner)
        assert cutf8.validate_utf8(data) == putf8.validate_utf8(data), (scanner, data)
        compiled, pure = cutf8.Utf8Validator(), putf8.Utf8Validator()
        for part in (data[:cut], data[cut:]):
            assert compiled.validate(part) == pure.validate(part), (scanner, data, cut)


def check_mask(data: bytes, rng: random.Random) -> None:
    assert cmask.mask(data, KEY) == pmask.mask(data, KEY), data
    offset = rng.randint(0, len(data))
    compiled, pure = bytearray(data), bytearray(data)
    cmask.mask_inplace(compiled, KEY, offset)
    pmask.mask_inplace(pure, KEY, offset)
    assert compiled == pure, (data, offset)


def check_frames(data: bytes, rng: random.Random) -> None:
    frames = [
        (rng.choice([0, 1, 2, 8, 9, 10]), data[:rng.randint(0, min(len(data), 125))], rng.random() < 0.8)
        for _ in range(3)
    ]
    stream, pure_stream = (
        b"".join(module.encode_frame(op, payload, fin=fin, mask_key=KEY) for op, payload, fin in frames)
        for module in (cframes, pframes)
    )
    assert stream == pure_stream, frames
    if stream and rng.random() < 0.5:
        flipped = bytearray(stream)
        flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
        stream = bytes(flipped)
    steps = [rng.randint(1, 200) for _ in range(len(stream) + 1)]
    options = {"max_message_size": rng.choice([100, 1 << 20])}
    assert parse(cframes, stream, steps, **options) == parse(pframes, stream, steps, **options), stream


def fan_out(module, frames: list[bytes], groups: list[list[int]]) -> list[bytes]:
    """What the peers of three lanes of ``module`` read after ``frames`` went to ``groups`` of them."""
    pairs = [socket.socketpair() for _ in range(3)]
    try:
        lanes = module.SendLanes(4096, 8)
        ids = [lanes.open(ours.fileno(), index) for index, (ours, _) in enumerate(pairs)]
        for lane in ids:
            lanes.resume(lane)
        for frame, group in zip(frames, groups, strict=True):
            assert list(lanes.deliver(frame, lanes.audience([ids[index] for index in group]))) == []
        lanes.flush()
        assert lanes.pop_spilled() == []
        received = []
        for ours, peer in pairs:
            ours.close()
            received.append(b"".join(iter(lambda peer=peer: peer.recv(1 << 16), b"")))
        return received
    finally:
        for ours, peer in pairs:
            ours.close()
            peer.close()


def check_fanout(rng: random.Random) -> None:
    from ws4redis import _speedups_fanout as cfanout
    from ws4redis.server import lanes as pfanout

    frames = [sample(rng)[:2000] for _ in range(20)]
    groups = [rng.sample(range(3), rng.randint(0, 3)) for _ in frames]
    expected = [b"".join(frame for frame, group in zip(frames, groups, strict=True) if index in group)
                for index in range(3)]
    assert fan_out(cfanout, frames, groups) == fan_out(pfanout, frames, groups) == expected


def main(rounds: int) -> dict:
    assert speedups.COMPILED, "the compiled core is not in use"
    rng = random.Random(20261206)
    for _ in range(rounds):
        data = sample(rng)
        check_utf8(data, rng)
        check_mask(data, rng)
        check_frames(data, rng)
    if os.name == "posix":
        for _ in range(max(1, rounds // 30)):
            check_fanout(rng)
    return {"rounds": rounds, "scanners": cutf8.implementations(), "lanes": os.name == "posix"}


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]) if len(sys.argv) > 1 else 300)))
