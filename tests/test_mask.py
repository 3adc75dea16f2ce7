"""RFC 6455 masking through the facade, so both suite runs cover their implementation."""

from __future__ import annotations

import array
import os

import pytest

from ws4redis.speedups import mask, mask_inplace

KEY = b"\x37\xfa\x21\x3d"


def reference(data: bytes, key: bytes) -> bytes:
    return bytes(byte ^ key[index % 4] for index, byte in enumerate(data))


SIZES = [*range(0, 70), 125, 126, 127, 1023, 1024, 1025, 65535, 65536, 65537]


@pytest.mark.parametrize("size", SIZES)
def test_mask_matches_reference_and_is_its_own_inverse(size):
    data = os.urandom(size)
    masked = mask(data, KEY)
    assert type(masked) is bytes
    assert masked == reference(data, KEY)
    assert mask(masked, KEY) == data


def test_mask_large_payload():
    data = os.urandom((1 << 20) + 3)
    masked = mask(data, KEY)
    assert masked == reference(data, KEY)
    assert mask(masked, KEY) == data


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_mask_accepts_any_contiguous_buffer(kind):
    data = os.urandom(37)
    assert mask(kind(data), kind(KEY)) == reference(data, KEY)


def test_mask_of_a_memoryview_slice_starts_the_key_at_the_slice():
    data = os.urandom(50)
    assert mask(memoryview(data)[7:41], KEY) == reference(data[7:41], KEY)


def test_mask_copies_a_non_contiguous_buffer():
    data = os.urandom(64)
    strided = memoryview(data)[1::3]
    assert mask(strided, KEY) == reference(data[1::3], KEY)


def test_mask_counts_bytes_not_items_of_a_typed_buffer():
    words = array.array("I", range(10))
    assert mask(words, KEY) == reference(words.tobytes(), KEY)


def test_mask_empty_payload():
    assert mask(b"", KEY) == b""
    assert mask(bytearray(), memoryview(KEY)) == b""


@pytest.mark.parametrize("key", [b"", b"abc", b"abcde", bytearray(8)])
def test_mask_rejects_a_key_that_is_not_four_bytes(key):
    with pytest.raises(ValueError, match="4 bytes"):
        mask(b"payload", key)
    with pytest.raises(ValueError, match="4 bytes"):
        mask_inplace(bytearray(b"payload"), key)


@pytest.mark.parametrize("data", ["text", 12, None, [1, 2, 3]])
def test_mask_rejects_what_is_not_a_buffer(data):
    with pytest.raises(TypeError):
        mask(data, KEY)


def test_mask_rejects_a_key_that_is_not_a_buffer():
    with pytest.raises(TypeError):
        mask(b"payload", "abcd")


@pytest.mark.parametrize("size", [0, 1, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 100, 4099])
def test_mask_inplace_unmasks_from_the_offset(size):
    payload = os.urandom(size)
    for offset in sorted({0, 1, 2, 3, 5, 14, size}):
        if offset > size:
            continue
        header = bytes(index % 256 for index in range(offset))
        buf = bytearray(header + payload[offset:])
        mask_inplace(buf, KEY, offset)
        assert bytes(buf[:offset]) == header
        assert bytes(buf[offset:]) == mask(payload[offset:], KEY)


def test_mask_inplace_default_offset_is_zero():
    data = os.urandom(33)
    buf = bytearray(data)
    mask_inplace(buf, KEY)
    assert bytes(buf) == reference(data, KEY)


def test_mask_inplace_writes_through_a_memoryview_slice():
    data = os.urandom(40)
    buf = bytearray(data)
    mask_inplace(memoryview(buf)[10:30], KEY, 2)
    assert bytes(buf) == data[:12] + reference(data[12:30], KEY) + data[30:]


def test_mask_inplace_on_a_typed_buffer_works_bytewise():
    words = array.array("H", range(9))
    before = words.tobytes()
    mask_inplace(words, KEY, 3)
    assert words.tobytes() == before[:3] + reference(before[3:], KEY)


@pytest.mark.parametrize("offset", [0, 5])
def test_mask_inplace_offset_at_the_end_changes_nothing(offset):
    buf = bytearray(b"abcde"[:offset])
    mask_inplace(buf, KEY, offset)
    assert buf == bytearray(b"abcde"[:offset])


@pytest.mark.parametrize("offset", [-1, 6, 1 << 40])
def test_mask_inplace_rejects_an_offset_outside_the_buffer(offset):
    buf = bytearray(b"abcde")
    with pytest.raises(ValueError, match="offset"):
        mask_inplace(buf, KEY, offset)
    assert buf == bytearray(b"abcde")


@pytest.mark.parametrize(
    "buf",
    [b"read-only bytes", memoryview(b"read-only view"), memoryview(bytearray(20))[::2]],
    ids=["bytes", "readonly-memoryview", "strided-memoryview"],
)
def test_mask_inplace_refuses_what_it_cannot_modify_in_place(buf):
    with pytest.raises(TypeError, match="writable C-contiguous"):
        mask_inplace(buf, KEY)


def test_mask_inplace_offset_beyond_a_c_ssize_t_overflows():
    buf = bytearray(b"abcde")
    with pytest.raises(OverflowError):
        mask_inplace(buf, KEY, 1 << 70)
    with pytest.raises(OverflowError):
        mask_inplace(buf, KEY, -(1 << 70))
    assert buf == bytearray(b"abcde")


def test_mask_inplace_offset_must_be_an_integer():
    with pytest.raises(TypeError):
        mask_inplace(bytearray(b"abcde"), KEY, 1.0)


def test_mask_inplace_rejects_what_is_not_a_buffer():
    with pytest.raises(TypeError):
        mask_inplace("text", KEY)
