"""Masking (RFC 6455, section 5.3): ws4redis compiled and pure vs websockets' C, wsaccel and aiohttp.

Groups ``mask <size>`` (returns new bytes) and ``mask-inplace <size>``
(unmasks a bytearray) put the peers side by side.
"""

from __future__ import annotations

import pytest

from benchmarks.conftest import record_throughput
from benchmarks.hotpath_peers import KEY, SIZES, mask_implementations, mask_inplace_implementations, payload
from ws4redis.pure.mask import mask as reference_mask

MASKERS = list(mask_implementations(None))
INPLACE_MASKERS = list(mask_inplace_implementations(None))


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", MASKERS)
def test_mask(benchmark, compiled, name, size):
    data = payload(SIZES[size])
    function, args = mask_implementations(compiled)[name](data, KEY)
    benchmark.group = f"mask {size}"
    assert benchmark(function, *args) == reference_mask(data, KEY)
    record_throughput(benchmark, len(data), "bytes")


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", INPLACE_MASKERS)
def test_mask_inplace(benchmark, compiled, name, size):
    data = payload(SIZES[size])
    check = bytearray(data)
    function, args = mask_inplace_implementations(compiled)[name](check, KEY)
    function(*args)
    assert check == reference_mask(data, KEY)
    function, args = mask_inplace_implementations(compiled)[name](bytearray(data), KEY)
    benchmark.group = f"mask-inplace {size}"
    benchmark(function, *args)
    record_throughput(benchmark, len(data), "bytes")
