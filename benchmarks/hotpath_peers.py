"""What the micro-benchmarks compare: inputs, and every implementation of each hot path.

Shared by the pytest-benchmark modules (``benchmarks/test_bench_*.py``) and
the table printer (``python -m benchmarks.compare``), so both measure the
same calls on the same bytes. Each implementation is a ``prepare`` function
returning ``(callable, args)``: the timed call is ``callable(*args)`` with no
wrapper of ours around a peer's function, so per-call overheads compare
fairly.

Peers: websockets' C ``apply_mask`` and its sans-I/O protocol, wsaccel's
masker and UTF-8 validator, aiohttp's Cython mask and frame reader, and
``bytes.decode``.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from functools import cache
from types import SimpleNamespace
from typing import Any

from aiohttp._websocket.mask import _websocket_mask_cython as aiohttp_mask
from aiohttp._websocket.reader import WebSocketDataQueue, WebSocketReader
from aiohttp.base_protocol import BaseProtocol
from websockets.frames import Frame as WebsocketsFrame
from websockets.frames import Opcode
from websockets.protocol import Protocol, Side, State
from websockets.speedups import apply_mask
from wsaccel.utf8validator import Utf8Validator as WsaccelUtf8Validator
from wsaccel.xormask import XorMaskerSimple

from tests.compiled import import_compiled as import_compiled_or_error
from ws4redis import constants
from ws4redis.pure import frames as pure_frames
from ws4redis.pure import mask as pure_mask
from ws4redis.pure import utf8 as pure_utf8

Prepared = tuple[Callable[..., Any], tuple]

SIZES = {"16B": 16, "125B": 125, "1KiB": 1 << 10, "64KiB": 1 << 16, "1MiB": 1 << 20}
KEY = b"\x37\xfa\x21\x3d"
SAMPLES = {
    "ascii": "The quick brown fox jumps over the lazy dog; {\"id\": 42, \"ok\": true}. ",
    "cyrillic": "Съешь же ещё этих мягких французских булок, да выпей чаю. ",
    "cjk": "我能吞下玻璃而不伤身体。私はガラスを食べられます。それは私を傷つけません。",
    "emoji": "😀😃😄😁😆😅🤣😂🙂🙃😉😊😇🥰😍🤩😘😗",
}
SMALL_FRAMES = 10_000
SMALL_FRAME_SIZE = 16
PARSE_LIMIT = 2 << 20  # every parser's message size limit: above the largest stream's message


class CompiledMissing(ImportError):
    """The compiled ws4redis speedups are not built."""


def import_compiled() -> SimpleNamespace:
    """The compiled modules as ``.mask``, ``.utf8`` and ``.frames``, imported as the tests do."""
    modules, error = import_compiled_or_error()
    if modules is None:
        raise CompiledMissing(
            f"the ws4redis speedups are not built ({error}); run `python setup.py build_ext --inplace`"
        ) from error
    return modules


# ---------------------------------------------------------------- inputs


@cache
def payload(size: int) -> bytes:
    """Deterministic random bytes."""
    return random.Random(size).randbytes(size)


@cache
def text(kind: str, size: int) -> bytes:
    """Valid UTF-8 of one kind, at most ``size`` bytes, cut on a character boundary."""
    sample = SAMPLES[kind]
    cut = (sample * (size // len(sample.encode()) + 1)).encode()[:size]
    return cut.decode("utf-8", "ignore").encode()  # drops a character cut in half


@cache
def stream(name: str) -> tuple[bytes, int]:
    """(client-to-server bytes, number of frames in them): masked frames, as a browser sends."""
    rng = random.Random(name)
    if name == f"{SMALL_FRAMES}x{SMALL_FRAME_SIZE}B-text":
        frames = [(constants.OP_TEXT, text("ascii", SMALL_FRAME_SIZE))] * SMALL_FRAMES
    elif name == "64KiB-text":
        frames = [(constants.OP_TEXT, text("cyrillic", 1 << 16))]
    elif name == "1MiB-text":
        frames = [(constants.OP_TEXT, text("cjk", 1 << 20))]
    elif name == "1MiB-binary":
        frames = [(constants.OP_BINARY, payload(1 << 20))]
    else:
        raise KeyError(name)
    data = b"".join(pure_frames.encode_frame(op, body, mask_key=rng.randbytes(4)) for op, body in frames)
    return data, len(frames)


STREAMS = [f"{SMALL_FRAMES}x{SMALL_FRAME_SIZE}B-text", "64KiB-text", "1MiB-text", "1MiB-binary"]


# ---------------------------------------------------------------- masking


def mask_implementations(compiled: SimpleNamespace) -> dict[str, Callable[[bytes, bytes], Prepared]]:
    """Masking that returns new bytes."""
    return {
        "ws4redis-compiled": lambda data, key: (compiled.mask.mask, (data, key)),
        "ws4redis-pure": lambda data, key: (pure_mask.mask, (data, key)),
        "websockets-C": lambda data, key: (apply_mask, (data, key)),
        "wsaccel": lambda data, key: (XorMaskerSimple(key).process, (data,)),
    }


def mask_inplace_implementations(
    compiled: SimpleNamespace,
) -> dict[str, Callable[[bytearray, bytes], Prepared]]:
    """Masking a bytearray in place (XOR twice restores it, so repeated calls are fine)."""
    return {
        "ws4redis-compiled": lambda buf, key: (compiled.mask.mask_inplace, (buf, key)),
        "ws4redis-pure": lambda buf, key: (pure_mask.mask_inplace, (buf, key)),
        "aiohttp-cython": lambda buf, key: (aiohttp_mask, (key, buf)),
    }


# ---------------------------------------------------------------- UTF-8


def utf8_implementations(compiled: SimpleNamespace) -> dict[str, Callable[[bytes], Prepared]]:
    """Validation of one complete text. Validators are reused: valid input keeps them valid."""
    return {
        "ws4redis-compiled": lambda data: (compiled.utf8.validate_utf8, (data,)),
        "ws4redis-compiled-validator": lambda data: (compiled.utf8.Utf8Validator().validate, (data,)),
        "ws4redis-pure": lambda data: (pure_utf8.validate_utf8, (data,)),
        "ws4redis-pure-validator": lambda data: (pure_utf8.Utf8Validator().validate, (data,)),
        "bytes.decode": lambda data: (data.decode, ()),
        "wsaccel-validator": lambda data: (WsaccelUtf8Validator().validate, (data,)),
    }


# ---------------------------------------------------------------- parsing


def _feed_websockets(protocol: Protocol, data: bytes) -> list:
    protocol.receive_data(data)
    return protocol.events_received()


def _feed_aiohttp(reader: WebSocketReader, queue: WebSocketDataQueue, data: bytes) -> int:
    reader.feed_data(data)
    return len(queue._buffer)  # messages delivered to the queue


_loop: asyncio.AbstractEventLoop | None = None


def _aiohttp_reader(data: bytes) -> Prepared:
    global _loop
    if _loop is None:
        _loop = asyncio.new_event_loop()  # the queue only stores it; nothing runs on it
    queue = WebSocketDataQueue(BaseProtocol(_loop), 1 << 30, loop=_loop)
    reader = WebSocketReader(queue, PARSE_LIMIT, compress=False, decode_text=True)
    return _feed_aiohttp, (reader, queue, data)


def parse_implementations(compiled: SimpleNamespace) -> dict[str, Callable[[bytes], Prepared]]:
    """A fresh parser fed one whole stream; the call returns the frames (or their count).

    ws4redis and aiohttp validate UTF-8 while parsing; websockets' sans-I/O
    layer does not (its asyncio layer decodes text later), so its figure
    flatters it slightly.
    """
    return {
        "ws4redis-compiled": lambda data: (compiled.frames.FrameParser(PARSE_LIMIT).feed, (data,)),
        "ws4redis-pure": lambda data: (pure_frames.FrameParser(PARSE_LIMIT).feed, (data,)),
        "websockets-sansio": lambda data: (
            _feed_websockets,
            (Protocol(Side.SERVER, state=State.OPEN, max_size=PARSE_LIMIT), data),
        ),
        "aiohttp-cython": _aiohttp_reader,
    }


def frames_parsed(result: Any) -> int:
    return result if isinstance(result, int) else len(result)


# ---------------------------------------------------------------- encoding


def _websockets_encode(data: bytes) -> bytes:
    return WebsocketsFrame(Opcode.TEXT, data).serialize(mask=False, extensions=[])


def encode_implementations(compiled: SimpleNamespace) -> dict[str, Callable[[bytes], Prepared]]:
    """One unmasked text frame, as a server sends it (client masking is the mask benchmark)."""
    return {
        "ws4redis-compiled": lambda data: (compiled.frames.encode_frame, (constants.OP_TEXT, data)),
        "ws4redis-pure": lambda data: (pure_frames.encode_frame, (constants.OP_TEXT, data)),
        "websockets": lambda data: (_websockets_encode, (data,)),
    }
