"""UTF-8 validation: ws4redis compiled and pure vs bytes.decode and wsaccel.

One group per kind of text and size (``utf8 <kind> <size>``): ASCII, 2-byte
Cyrillic, 3-byte CJK and 4-byte emoji, from 16 bytes to 1 MiB.
"""

from __future__ import annotations

import pytest

from benchmarks.conftest import record_throughput
from benchmarks.hotpath_peers import SAMPLES, SIZES, text, utf8_implementations

VALIDATORS = list(utf8_implementations(None))


def accepted(result) -> bool:
    """True for every implementation's way of saying "valid and complete"."""
    if isinstance(result, str):
        return True  # bytes.decode
    if isinstance(result, tuple):
        return result[0] is True and result[1] is True
    return result is True


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("kind", SAMPLES)
@pytest.mark.parametrize("name", VALIDATORS)
def test_validate_utf8(benchmark, compiled, name, kind, size):
    data = text(kind, SIZES[size])
    function, args = utf8_implementations(compiled)[name](data)
    benchmark.group = f"utf8 {kind} {size}"
    assert accepted(benchmark(function, *args))
    record_throughput(benchmark, len(data), "bytes")
