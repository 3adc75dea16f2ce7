"""Frame parsing and encoding: ws4redis compiled and pure vs websockets (sans-I/O) and aiohttp.

``parse <stream>`` feeds one whole client stream (masked frames) to a fresh
parser each round: 10,000 text frames of 16 bytes, or one large text or
binary frame. ``encode <size>`` builds one unmasked text frame, as a server
sends it.
"""

from __future__ import annotations

import pytest

from benchmarks.conftest import record_throughput
from benchmarks.hotpath_peers import (
    SIZES,
    STREAMS,
    encode_implementations,
    frames_parsed,
    parse_implementations,
    stream,
    text,
)
from ws4redis import constants
from ws4redis.pure.frames import encode_frame as reference_encode

PARSERS = list(parse_implementations(None))
ENCODERS = list(encode_implementations(None))
ROUNDS = 20


def call(function, args):
    return function(*args)


@pytest.mark.parametrize("stream_name", STREAMS)
@pytest.mark.parametrize("name", PARSERS)
def test_parse(benchmark, compiled, name, stream_name):
    data, count = stream(stream_name)
    prepare = parse_implementations(compiled)[name]
    benchmark.group = f"parse {stream_name}"
    result = benchmark.pedantic(call, setup=lambda: (prepare(data), {}), rounds=ROUNDS)
    assert frames_parsed(result) == count
    record_throughput(benchmark, count, "frames")


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", ENCODERS)
def test_encode(benchmark, compiled, name, size):
    data = text("ascii", SIZES[size])
    function, args = encode_implementations(compiled)[name](data)
    benchmark.group = f"encode {size}"
    assert benchmark(function, *args) == reference_encode(constants.OP_TEXT, data)
    record_throughput(benchmark, len(data), "bytes")
