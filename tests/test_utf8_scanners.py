"""Every compiled UTF-8 scanner against the codec and the pure-Python twin.

The compiled core picks the fastest scanner the processor runs (``base``, ``bmi2`` on x86-64,
``avx2`` and ``avx512`` with the Keiser-Lemire lookup algorithm on 32- and 64-byte vectors); the
rest of the suite tests that one. Here each is switched in by turn (``_speedups_utf8.use``) and
must give the same answers, indexes included, on inputs long enough to reach its vector path:
every byte pair and the awkward 3- and 4-byte sequences at every offset of a 64-byte chunk
(so across every 16-byte lane of either width), random damage, and streams cut at
random places. The guard-page probe and the AddressSanitizer batch of test_memory_safety.py
run every scanner too.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ws4redis.pure import utf8 as pure_utf8

pytestmark = pytest.mark.once  # the same in both suite runs: tests/run.py runs it once

SCANNERS = ("base", "bmi2", "avx2", "avx512")
CONTEXTS = (b"", b"a" * 70, "ж".encode() * 45, "中".encode() * 30, "😀".encode() * 25)
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                             HealthCheck.function_scoped_fixture])


@pytest.fixture(params=SCANNERS)
def utf8(request, compiled):
    module = compiled.utf8
    if request.param not in module.implementations():
        pytest.skip(f"this processor does not run the {request.param} scanner: {module.implementations()}")
    chosen = module.implementation()
    module.use(request.param)
    assert module.implementation() == request.param
    yield module
    module.use(chosen)


def model(data: bytes) -> tuple:
    return pure_utf8.Utf8Validator().validate(data)


def test_the_fastest_scanner_is_chosen(compiled):
    assert compiled.utf8.implementation() == compiled.utf8.implementations()[-1]
    with pytest.raises(ValueError, match="no UTF-8 scanner 'sse9'"):
        compiled.utf8.use("sse9")


def sequences() -> list[bytes]:
    """Every one- and two-byte sequence, and 3- and 4-byte ones around every boundary of RFC 3629."""
    found = [bytes([first]) for first in range(256)]
    found += [bytes([first, second]) for first in range(0xC0, 0x100) for second in range(256)]
    edges = (0x00, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xFF)
    found += [bytes([first, second, third])
              for first in range(0xE0, 0xF0) for second in edges for third in edges]
    found += [bytes([first, second, third, fourth]) for first in range(0xF0, 0xF8)
              for second in edges for third in (0x80, 0xBF, 0x41) for fourth in (0x80, 0xBF, 0x41, 0xC0)]
    return found


def test_every_sequence_at_every_chunk_offset(utf8):
    """About 80,000 sequences, each placed at 64 offsets between long runs of 2-byte text."""
    before = "й".encode() * 40
    mismatches = []
    for index, sequence in enumerate(sequences()):
        offset = index % 64
        data = b"a" * offset + before + sequence + before
        if utf8.Utf8Validator().validate(data) != model(data) or \
                utf8.validate_utf8(data) is not model(data)[1]:
            mismatches.append((offset, sequence.hex()))
    assert not mismatches, mismatches[:10]


@SETTINGS
@given(data=st.binary(max_size=300), context=st.sampled_from(CONTEXTS), damage=st.data())
def test_damaged_text_agrees_with_the_model(utf8, data, context, damage):
    text = bytearray(context + data + context)
    for _ in range(damage.draw(st.integers(0, 3))):
        if text:
            text[damage.draw(st.integers(0, len(text) - 1))] = damage.draw(st.integers(0, 255))
    text = bytes(text)
    expected = model(text)
    assert utf8.Utf8Validator().validate(text) == expected
    assert utf8.validate_utf8(text) is expected[1]  # valid and complete


@SETTINGS
@given(text=st.text(min_size=1, max_size=400), context=st.sampled_from(CONTEXTS), cuts=st.data())
def test_a_stream_cut_anywhere_agrees_with_the_model(utf8, text, context, cuts):
    data = context + text.encode("utf-8", "surrogatepass") + context
    points = sorted(cuts.draw(st.lists(st.integers(0, len(data)), max_size=4)))
    fast, slow = utf8.Utf8Validator(), pure_utf8.Utf8Validator()
    start = 0
    for point in [*points, len(data)]:
        assert fast.validate(data[start:point]) == slow.validate(data[start:point])
        start = point
