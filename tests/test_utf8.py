"""UTF-8 validation through the facade, so both suite runs cover their implementation.

The failing index is the first byte that cannot belong to valid UTF-8, as in
Autobahn's and wsaccel's validators: for an overlong or out-of-range sequence
that is the first continuation byte outside the allowed range, for a byte
that can never lead a sequence it is that byte itself.
"""

from __future__ import annotations

import pytest

from ws4redis.speedups import Utf8Validator, validate_utf8

BOUNDARY_CODE_POINTS = [0x0, 0x7F, 0x80, 0x7FF, 0x800, 0xFFFF, 0x10000, 0x10FFFF, 0xD7FF, 0xE000, 0xFFFD]

# (invalid bytes, index of the first byte that cannot belong to valid UTF-8)
INVALID = [
    (b"\x80", 0),  # lone continuation bytes
    (b"\xbf", 0),
    (b"\xc0\x80", 0),  # C0/C1 only ever start overlong 2-byte forms
    (b"\xc1\xbf", 0),
    (b"\xe0\x80\x80", 1),  # overlong 3-byte forms
    (b"\xe0\x9f\xbf", 1),
    (b"\xed\xa0\x80", 1),  # UTF-16 surrogates
    (b"\xed\xbf\xbf", 1),
    (b"\xf0\x80\x80\x80", 1),  # overlong 4-byte forms
    (b"\xf0\x8f\xbf\xbf", 1),
    (b"\xf4\x90\x80\x80", 1),  # above U+10FFFF
    (b"\xf4\xbf\xbf\xbf", 1),
    (b"\xf5\x80\x80\x80", 0),  # lead bytes that can never appear
    (b"\xf7\xbf\xbf\xbf", 0),
    (b"\xf8\x88\x80\x80\x80", 0),
    (b"\xfc\x84\x80\x80\x80\x80", 0),
    (b"\xfe", 0),
    (b"\xff", 0),
    (b"\xc2\x41", 1),  # a continuation byte is missing
    (b"\xe2\x82\x41", 2),
    (b"\xe2\x41\xac", 1),
    (b"\xf0\x9f\x98\x41", 3),
    (b"\xc2\xc2\x80", 1),  # a new lead byte where a continuation byte was due
    (b"\xe2\x82\xe2\x82\xac", 2),
    (b"\xf0\x9f\xf0\x9f\x98\x80", 2),
    (b"\xe2\x82\xac\x80", 3),  # one continuation byte too many
]
INVALID_IDS = [case.hex() for case, _ in INVALID]

INCOMPLETE = [
    b"\xc2", b"\xdf", b"\xe0\xa0", b"\xe2\x82", b"\xed\x9f", b"\xf0\x90", b"\xf0\x9f\x98", b"\xf4\x8f\xbf"
]

SAMPLES = {
    "ascii": "The quick brown fox jumps over the lazy dog. ",
    "cyrillic": "Съешь же ещё этих мягких французских булок, да выпей чаю. ",
    "cjk": "我能吞下玻璃而不伤身体。私はガラスを食べられます。",
    "emoji": "😀🎉🚀🌍🧪🐍👩‍💻",
    "mixed": "ascii, кириллица, 中文, and emoji 🎉 mixed together. ",
}


def assert_valid(data: bytes) -> None:
    assert validate_utf8(data) is True
    assert Utf8Validator().validate(data) == (True, True, len(data), len(data))


@pytest.mark.parametrize("code_point", BOUNDARY_CODE_POINTS, ids=hex)
def test_boundary_code_points_are_valid(code_point):
    encoded = chr(code_point).encode("utf-8")
    assert_valid(encoded)
    assert_valid(b"ab" + encoded + b"cd")
    assert_valid(encoded * 40)


def test_all_boundary_code_points_together():
    assert_valid("".join(chr(c) for c in BOUNDARY_CODE_POINTS).encode("utf-8") * 7)


def test_every_scalar_value_of_each_length_boundary_plane():
    text = "".join(chr(c) for c in [*range(0, 0x900), *range(0xD700, 0xD800), *range(0xE000, 0xE100)])
    assert_valid(text.encode("utf-8"))
    assert_valid("".join(chr(c) for c in range(0x10FF00, 0x110000)).encode("utf-8"))


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_real_text_is_valid_at_every_length(name):
    encoded = (SAMPLES[name] * 50).encode("utf-8")
    assert_valid(encoded)
    for end in range(0, 200):
        prefix = encoded[:end]
        expected = _decodes(prefix)
        assert validate_utf8(prefix) is expected
        result = Utf8Validator().validate(prefix)
        assert result[0] is True  # a cut through a sequence is incomplete, not invalid
        assert result[1:] == (expected, end, end)


def _decodes(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def test_empty_input():
    assert validate_utf8(b"") is True
    assert Utf8Validator().validate(b"") == (True, True, 0, 0)


@pytest.mark.parametrize(("data", "index"), INVALID, ids=INVALID_IDS)
def test_invalid_sequences_fail_at_the_first_impossible_byte(data, index):
    assert validate_utf8(data) is False
    assert Utf8Validator().validate(data) == (False, False, index, index)
    prefix = "žluťoučký 😀 ".encode()
    assert Utf8Validator().validate(prefix + data + b"trailing") == (
        False,
        False,
        len(prefix) + index,
        len(prefix) + index,
    )


@pytest.mark.parametrize(("data", "index"), INVALID, ids=INVALID_IDS)
def test_invalid_sequences_fail_fast_byte_by_byte(data, index):
    validator = Utf8Validator()
    seen = b"ok "
    assert validator.validate(seen)[0] is True
    for position, byte in enumerate(data):
        result = validator.validate(bytes([byte]))
        if position < index:
            assert result[0] is True
            assert result[2:] == (1, len(seen) + position + 1)
        else:
            assert result == (False, False, 0, len(seen) + index)
            break


@pytest.mark.parametrize(("data", "index"), INVALID, ids=INVALID_IDS)
def test_invalid_sequences_fail_at_every_split(data, index):
    stream = b"abc " + data + b" xyz"
    fail_at = 4 + index
    for split in range(len(stream) + 1):
        validator = Utf8Validator()
        first = validator.validate(stream[:split])
        if split <= fail_at:
            assert first[0] is True and first[2:] == (split, split)
            assert validator.validate(stream[split:]) == (False, False, fail_at - split, fail_at)
        else:
            assert first == (False, False, fail_at, fail_at)


@pytest.mark.parametrize("data", INCOMPLETE, ids=[case.hex() for case in INCOMPLETE])
def test_incomplete_sequences(data):
    assert validate_utf8(data) is False
    assert validate_utf8(b"text " + data) is False
    validator = Utf8Validator()
    assert validator.validate(data) == (True, False, len(data), len(data))
    assert validator.validate(b"") == (True, False, 0, len(data))


def test_sequence_completed_in_the_next_chunk():
    euro = "€".encode()
    emoji = "😀".encode()
    validator = Utf8Validator()
    assert validator.validate(euro[:1]) == (True, False, 1, 1)
    assert validator.validate(euro[1:2]) == (True, False, 1, 2)
    assert validator.validate(euro[2:] + emoji[:3]) == (True, False, 4, 6)
    assert validator.validate(emoji[3:]) == (True, True, 1, 7)


def test_incomplete_sequence_interrupted_by_ascii_fails_at_the_ascii_byte():
    validator = Utf8Validator()
    assert validator.validate(b"\xf0\x9f") == (True, False, 2, 2)
    assert validator.validate(b"A") == (False, False, 0, 2)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (b"\xe0", b"\x80"),
        (b"\xe0", b"\x9f\xbf"),
        (b"\xed", b"\xa0\x80"),
        (b"\xf0", b"\x8f\xbf\xbf"),
        (b"\xf4", b"\x90\x80\x80"),
        (b"\xc2", b"\xc2"),
    ],
)
def test_fails_fast_across_chunk_boundaries(first, second):
    validator = Utf8Validator()
    assert validator.validate(b"xy" + first) == (True, False, 3, 3)
    assert validator.validate(second) == (False, False, 0, 3)


def test_truncated_surrogate_is_rejected_before_the_sequence_ends():
    validator = Utf8Validator()
    assert validator.validate(b"ab\xed\xa0") == (False, False, 3, 3)


def test_failure_is_sticky_until_reset():
    validator = Utf8Validator()
    assert validator.validate(b"ab\xffcd") == (False, False, 2, 2)
    assert validator.validate(b"valid") == (False, False, 0, 2)
    assert validator.validate(b"") == (False, False, 0, 2)
    validator.reset()
    assert validator.validate(b"valid") == (True, True, 5, 5)


def test_reset_forgets_a_pending_sequence_and_the_total():
    validator = Utf8Validator()
    assert validator.validate(b"abc\xe2\x82") == (True, False, 5, 5)
    validator.reset()
    assert validator.validate(b"\xac") == (False, False, 0, 0)


def test_total_index_runs_over_many_chunks():
    validator = Utf8Validator()
    text = ("π≈3.14159 😀 " * 30).encode()
    total = 0
    for start in range(0, len(text), 7):
        chunk = text[start : start + 7]
        total += len(chunk)
        valid, _, current, running = validator.validate(chunk)
        assert valid and current == len(chunk) and running == total
    assert validator.validate(b"") == (True, True, 0, len(text))


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_error_is_located_at_every_position_in_long_text(name):
    text = (SAMPLES[name] * 40).encode("utf-8")
    for position in range(0, 300):
        cut = position
        while cut < len(text) and (text[cut] & 0xC0) == 0x80:
            cut += 1  # insert between whole characters
        broken = text[:cut] + b"\xff" + text[cut:]
        assert validate_utf8(broken) is False
        assert Utf8Validator().validate(broken) == (False, False, cut, cut)


def test_error_at_the_end_of_a_megabyte():
    data = b"a" * (1 << 20) + "é".encode() * 1000 + b"\xc3\x28"
    assert validate_utf8(data) is False
    assert Utf8Validator().validate(data) == (False, False, len(data) - 1, len(data) - 1)
    assert validate_utf8(data[:-2]) is True


@pytest.mark.parametrize("kind", [bytearray, memoryview])
def test_accepts_any_buffer(kind):
    good = "ünïcødé 🎉".encode()
    bad = good + b"\xed\xa0\x80"
    assert validate_utf8(kind(good)) is True
    assert validate_utf8(kind(bad)) is False
    assert Utf8Validator().validate(kind(good)) == (True, True, len(good), len(good))
    assert Utf8Validator().validate(kind(bad))[:3] == (False, False, len(good) + 1)


def test_memoryview_slice_and_non_contiguous_buffer():
    data = b"xx" + "é€😀".encode() + b"yy"
    assert validate_utf8(memoryview(data)[2:-2]) is True
    assert validate_utf8(memoryview(data)[3:]) is False
    strided = memoryview(b"a\xffb\xffc")[::2]
    assert validate_utf8(strided) is True
    assert Utf8Validator().validate(strided) == (True, True, 3, 3)


@pytest.mark.parametrize("data", ["text", 42, None])
def test_rejects_what_is_not_a_buffer(data):
    with pytest.raises(TypeError):
        validate_utf8(data)
    with pytest.raises(TypeError):
        Utf8Validator().validate(data)


def test_agrees_with_the_codec_on_every_two_byte_input():
    for first in range(256):
        for second in range(256):
            data = bytes((first, second))
            assert validate_utf8(data) is _decodes(data), data
