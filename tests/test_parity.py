"""The compiled core and the pure-Python reference behave identically (hypothesis).

Both implementations are imported directly, so these tests run in both suite
runs whenever the extensions are built (see tests/compiled.py for what
happens when they are not). Besides compiled == pure, each property is also
checked against an independent model: a byte-by-byte XOR for masking,
CPython's codec for UTF-8, and any-split == one-shot for the parser.
"""

from __future__ import annotations

import array
from codecs import utf_8_decode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ws4redis import constants
from ws4redis.exceptions import ProtocolError
from ws4redis.pure import frames as pure_frames
from ws4redis.pure import mask as pure_mask
from ws4redis.pure import utf8 as pure_utf8

pytestmark = pytest.mark.once  # the same in both suite runs: tests/run.py runs it once

TEXT, BINARY, CONT = constants.OP_TEXT, constants.OP_BINARY, constants.OP_CONTINUATION
CLOSE, PING, PONG = constants.OP_CLOSE, constants.OP_PING, constants.OP_PONG

PARITY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def reference_mask(data: bytes, key: bytes) -> bytes:
    return bytes(byte ^ key[index % 4] for index, byte in enumerate(data))


def decodes(data: bytes) -> bool:
    try:
        utf_8_decode(data, "strict", True)
    except UnicodeDecodeError:
        return False
    return True


# A prefix is valid UTF-8 so far when some completion makes it decode: after a
# lead byte, 80, 90 or A0 satisfies every first-continuation range, and 80
# every later one.
COMPLETIONS = [b""] + [first + b"\x80" * extra for first in (b"\x80", b"\x90", b"\xa0") for extra in range(3)]


def valid_prefix(data: bytes) -> bool:
    return any(decodes(data + completion) for completion in COMPLETIONS)


def first_invalid_index(data: bytes) -> int:
    """Model of the failing index: the shortest prefix that no completion can save, minus one."""
    if valid_prefix(data):
        return -1
    low, high = 0, len(data) - 1  # data[:high + 1] is invalid; find the first such prefix
    while low < high:
        middle = (low + high) // 2
        if valid_prefix(data[: middle + 1]):
            low = middle + 1
        else:
            high = middle
    return low


# ---------------------------------------------------------------- strategies

keys = st.binary(min_size=4, max_size=4)
# Around the 16-bit/64-bit length boundary, built by repetition (cheap to draw).
long_payloads = st.builds(
    lambda seed, size: (seed * (size // len(seed) + 1))[:size],
    st.binary(min_size=1, max_size=8),
    st.integers(65530, 65545),
)
payloads = st.one_of(st.binary(max_size=40), st.binary(min_size=100, max_size=300), long_payloads)
texts = st.text(st.characters(codec="utf-8"), max_size=60)
special_text = st.sampled_from(
    ["", "a", "é", "€", "😀", "\u0000\u007f\u0080\u07ff\u0800\uffff\U00010000\U0010ffff", "\ud7ff\ue000"]
)
utf8_bytes = st.one_of(texts, special_text).map(lambda s: s.encode("utf-8"))


@st.composite
def mutated_utf8(draw):
    """Valid UTF-8 with one mutation: a byte changed, inserted, removed, or the end cut."""
    data = bytearray(draw(st.one_of(texts, special_text).map(lambda s: (s * 3).encode("utf-8"))))
    kind = draw(st.sampled_from(["change", "insert", "delete", "truncate"]))
    if not data:
        kind = "insert"
    position = draw(st.integers(0, max(len(data) - 1, 0)))
    byte = draw(st.one_of(st.integers(0x80, 0xFF), st.integers(0, 0xFF)))
    if kind == "change":
        data[position] = byte
    elif kind == "insert":
        data.insert(position, byte)
    elif kind == "delete":
        del data[position]
    else:
        del data[position:]
    return bytes(data)


any_utf8_candidate = st.one_of(st.binary(max_size=80), utf8_bytes, mutated_utf8())


def one_in(count: int) -> st.SearchStrategy[bool]:
    """True about once in ``count`` draws; False is first, so it is also what examples shrink to."""
    return st.sampled_from([False] * (count - 1) + [True])


def split_points(draw, length: int) -> list[int]:
    cuts = draw(st.lists(st.integers(0, length), max_size=6))
    return sorted(set(cuts))


def chunks_of(data: bytes, cuts: list[int]) -> list[bytes]:
    edges = [0, *cuts, len(data)]
    return [data[start:end] for start, end in zip(edges, edges[1:], strict=False)]


# ---------------------------------------------------------------- masking


@PARITY
@given(data=st.one_of(st.binary(max_size=300), payloads), key=keys)
def test_mask_parity_and_inverse(compiled, data, key):
    expected = reference_mask(data, key)
    assert compiled.mask.mask(data, key) == expected
    assert pure_mask.mask(data, key) == expected
    assert compiled.mask.mask(expected, key) == data
    assert compiled.mask.mask(bytearray(data), memoryview(key)) == expected


@PARITY
@given(data=st.binary(max_size=300), key=keys, st_offset=st.data())
def test_mask_inplace_parity(compiled, data, key, st_offset):
    offset = st_offset.draw(st.integers(0, len(data)))
    expected = data[:offset] + reference_mask(data[offset:], key)
    for implementation in (compiled.mask, pure_mask):
        buf = bytearray(data)
        implementation.mask_inplace(buf, key, offset)
        assert bytes(buf) == expected
        view_target = bytearray(b"??" + data + b"??")
        implementation.mask_inplace(memoryview(view_target)[2:-2], key, offset)
        assert bytes(view_target) == b"??" + expected + b"??"


@PARITY
@given(
    data=st.one_of(st.binary(max_size=20), st.text(max_size=5), st.integers(), st.none()),
    key=st.one_of(keys, st.binary(max_size=8), st.text(max_size=4)),
)
def test_mask_errors_match(compiled, data, key):
    outcomes = []
    for implementation in (compiled.mask, pure_mask):
        try:
            outcomes.append(("ok", implementation.mask(data, key)))
        except (TypeError, ValueError) as exc:
            outcomes.append(("error", type(exc)))
    assert outcomes[0] == outcomes[1]


# ---------------------------------------------------------------- UTF-8


@PARITY
@given(data=any_utf8_candidate)
def test_validate_utf8_agrees_with_the_codec(compiled, data):
    expected = decodes(data)
    assert compiled.utf8.validate_utf8(data) is expected
    assert pure_utf8.validate_utf8(data) is expected


@PARITY
@given(
    data=st.one_of(utf8_bytes, mutated_utf8()),
    filler=st.sampled_from([b"", b"x" * 40, "ж".encode() * 70]),
)
def test_validate_utf8_in_long_inputs(compiled, data, filler):
    # Long fillers route the input through the ASCII skip and the two-halves path.
    for candidate in (filler + data, data + filler, filler + data + filler):
        expected = decodes(candidate)
        assert compiled.utf8.validate_utf8(candidate) is expected
        assert pure_utf8.validate_utf8(candidate) is expected
        result = compiled.utf8.Utf8Validator().validate(candidate)
        assert result == pure_utf8.Utf8Validator().validate(candidate)


@PARITY
@given(data=any_utf8_candidate)
def test_validator_reports_the_model_index(compiled, data):
    bad = first_invalid_index(data)
    for implementation in (compiled.utf8, pure_utf8):
        result = implementation.Utf8Validator().validate(data)
        if bad < 0:
            assert result == (True, decodes(data), len(data), len(data))
        else:
            assert result == (False, False, bad, bad)


@PARITY
@given(data=any_utf8_candidate)
def test_every_two_way_split_agrees_with_one_shot(compiled, data):
    bad = first_invalid_index(data)
    for implementation in (compiled.utf8, pure_utf8):
        for split in range(len(data) + 1):
            validator = implementation.Utf8Validator()
            first = validator.validate(data[:split])
            second = validator.validate(data[split:])
            if bad < 0:
                assert first[0] and second[0]
                assert second[1:] == (decodes(data), len(data) - split, len(data))
            elif bad < split:
                assert first == (False, False, bad, bad)
                assert second == (False, False, 0, bad)
            else:
                assert first == (True, decodes(data[:split]), split, split)
                assert second == (False, False, bad - split, bad)


@PARITY
@given(data=any_utf8_candidate, st_cuts=st.data())
def test_many_chunks_compiled_equals_pure(compiled, data, st_cuts):
    chunks = chunks_of(data, split_points(st_cuts.draw, len(data)))
    fast, slow = compiled.utf8.Utf8Validator(), pure_utf8.Utf8Validator()
    for chunk in chunks:
        assert fast.validate(chunk) == slow.validate(chunk)
    assert fast.validate(b"") == slow.validate(b"")


# ---------------------------------------------------------------- frames


close_payloads = st.one_of(
    st.just(b""),
    st.binary(max_size=1),
    st.tuples(
        st.sampled_from([0, 999, 1000, 1001, 1004, 1005, 1006, 1007, 1015, 2999, 3000, 4999, 5000]),
        st.one_of(utf8_bytes, st.binary(max_size=8)),
    ).map(lambda pair: pair[0].to_bytes(2, "big") + pair[1][:123]),
)


@st.composite
def frame_specs(draw, valid: bool):
    """(opcode, payload, fin, rsv) for one frame; valid=False allows any header."""
    if valid:
        opcode = draw(st.sampled_from([TEXT, BINARY, PING, PONG, CLOSE]))
    else:
        opcode = draw(st.integers(0, 15))
    if opcode == CLOSE:
        payload = draw(close_payloads)
    elif opcode == TEXT and draw(st.booleans()):
        payload = draw(st.one_of(utf8_bytes, mutated_utf8()))
    elif opcode >= CLOSE and valid:
        payload = draw(st.binary(max_size=125))
    else:
        payload = draw(payloads)
    fin = True if valid else draw(st.booleans())
    rsv = (False, False, False)
    if valid and opcode in (TEXT, BINARY) and draw(one_in(4)):
        rsv = (True, False, False)  # permessage-deflate: accepted only with allow_compressed
    if not valid and draw(one_in(8)):
        rsv = draw(st.tuples(st.booleans(), st.booleans(), st.booleans()))
    return opcode, payload, fin, rsv


@st.composite
def fragmented_messages(draw):
    """A data message split into fragments, with control frames interleaved."""
    opcode = draw(st.sampled_from([TEXT, BINARY]))
    if opcode == TEXT:
        whole = draw(st.one_of(utf8_bytes, mutated_utf8())) * draw(st.integers(1, 3))
    else:
        whole = draw(st.binary(max_size=200))
    parts = chunks_of(whole, split_points(draw, len(whole)))
    compressed = draw(one_in(4))  # RSV1 on the first fragment: no UTF-8 check on deflated text
    specs = []
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        rsv = (compressed and index == 0, False, False)
        specs.append((opcode if index == 0 else CONT, part, last, rsv))
        if not last and draw(st.booleans()):
            specs.append((PING, draw(st.binary(max_size=10)), True, (False, False, False)))
    return specs


@st.composite
def streams(draw):
    """(stream bytes, parser options): valid conversations, damaged ones and noise."""
    masked = not draw(one_in(5))
    specs = []
    for _ in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(["fragmented"] * 3 + ["valid"] * 4 + ["any"] * 2))
        if kind == "fragmented":
            specs.extend(draw(fragmented_messages()))
        else:
            specs.append(draw(frame_specs(valid=kind == "valid")))
    data = b"".join(
        pure_frames.encode_frame(
            opcode,
            payload,
            fin=fin,
            mask_key=draw(keys) if masked else None,
            rsv1=rsv[0],
            rsv2=rsv[1],
            rsv3=rsv[2],
        )
        for opcode, payload, fin, rsv in specs
    )
    damage = draw(st.sampled_from(["none"] * 4 + ["flip", "insert", "cut", "noise"]))
    if damage != "none" and data:
        position = draw(st.integers(0, len(data) - 1))
        if damage == "flip":
            flipped = data[position] ^ draw(st.integers(1, 255))
            data = data[:position] + bytes([flipped]) + data[position + 1 :]
        elif damage == "insert":
            data = data[:position] + draw(st.binary(min_size=1, max_size=12)) + data[position:]
        elif damage == "cut":
            data = data[:position]
        else:
            data = draw(st.binary(max_size=200))
    options = {"require_mask": masked != draw(one_in(10)), "validate_utf8": not draw(one_in(6))}
    if draw(one_in(3)):
        options["max_message_size"] = draw(st.sampled_from([1, 16, 125, 126, 200, 65536]))
    if draw(one_in(4)):
        options["max_fragments"] = draw(st.integers(1, 4))
    if draw(st.booleans()):
        options["allow_compressed"] = True
    return data, options


def frame_tuple(frame) -> tuple:
    return (
        type(frame.opcode),
        frame.opcode,
        type(frame.fin),
        frame.fin,
        frame.rsv1,
        frame.rsv2,
        frame.rsv3,
        type(frame.payload),
        frame.payload,
    )


def trace(parser_class, chunks: list[bytes], options: dict) -> list:
    """Everything observable while feeding ``chunks``: frames, errors, buffered bytes, state."""
    parser = parser_class(**options)
    events = []
    for chunk in chunks:
        try:
            frames = parser.feed(chunk)
        except ProtocolError as exc:
            completed = [frame_tuple(f) for f in exc.frames]
            events.append(("error", type(exc), exc.close_code, str(exc), completed))
            with pytest.raises(ProtocolError) as again:
                parser.feed(b"\x81")
            events.append(("sticky", again.value is exc, again.value.frames, parser.error is exc))
            events.append(("state", parser.buffered, parser.in_message))
            return events
        events.append(("frames", [frame_tuple(f) for f in frames], parser.buffered, parser.in_message))
    return events


def outcome(events: list) -> tuple:
    """What any split must agree on: every frame, then the error class and close code."""
    frames, error = [], None
    for event in events:
        if event[0] == "frames":
            frames.extend(event[1])
        elif event[0] == "error":
            frames.extend(event[4])
            error = (event[1], event[2])
    return frames, error


@PARITY
@given(stream=streams(), st_cuts=st.data())
def test_parser_compiled_equals_pure_for_any_split(compiled, stream, st_cuts):
    data, options = stream
    chunks = chunks_of(data, split_points(st_cuts.draw, len(data)))
    expected = trace(pure_frames.FrameParser, chunks, options)
    assert trace(compiled.frames.FrameParser, chunks, options) == expected
    whole = trace(pure_frames.FrameParser, [data], options)
    assert outcome(expected) == outcome(whole)
    assert trace(compiled.frames.FrameParser, [data], options) == whole


@settings(PARITY, max_examples=60)
@given(stream=streams())
def test_parser_byte_by_byte(compiled, stream):
    data, options = stream
    chunks = [data[index : index + 1] for index in range(len(data))]
    expected = trace(pure_frames.FrameParser, chunks, options)
    assert trace(compiled.frames.FrameParser, chunks, options) == expected
    assert outcome(expected) == outcome(trace(compiled.frames.FrameParser, [data], options))


@PARITY
@given(
    data=st.binary(max_size=300),
    require_mask=st.booleans(),
    max_message_size=st.sampled_from([1, 10, 1000, 1 << 20]),
)
def test_parser_on_noise(compiled, data, require_mask, max_message_size):
    options = {"require_mask": require_mask, "max_message_size": max_message_size}
    expected = trace(pure_frames.FrameParser, [data], options)
    assert trace(compiled.frames.FrameParser, [data], options) == expected


@PARITY
@given(
    opcode=st.integers(0, 15),
    payload=st.one_of(st.binary(max_size=300), payloads),
    fin=st.booleans(),
    mask_key=st.one_of(st.none(), keys),
    rsv=st.tuples(st.booleans(), st.booleans(), st.booleans()),
    kind=st.sampled_from([bytes, bytearray, memoryview]),
)
def test_encode_frame_is_byte_identical(compiled, opcode, payload, fin, mask_key, rsv, kind):
    arguments = dict(fin=fin, mask_key=mask_key, rsv1=rsv[0], rsv2=rsv[1], rsv3=rsv[2])
    encoded = compiled.frames.encode_frame(opcode, kind(payload), **arguments)
    assert type(encoded) is bytes
    assert encoded == pure_frames.encode_frame(opcode, kind(payload), **arguments)
    parser = compiled.frames.FrameParser(
        require_mask=mask_key is not None, validate_utf8=False, max_message_size=1 << 20
    )
    if opcode in constants.DATA_OPCODES - {CONT} and fin and not any(rsv):
        assert parser.feed(encoded) == [pure_frames.Frame(opcode, payload, fin)]


@pytest.mark.parametrize(
    "payload",
    [array.array("H", range(300)), memoryview(bytes(range(200))).cast("I"), array.array("d", [1.5] * 20)],
    ids=["array-H", "memoryview-I", "array-d"],
)
@pytest.mark.parametrize("mask_key", [None, b"abcd"])
def test_encode_frame_counts_bytes_of_typed_buffers(compiled, payload, mask_key):
    raw = memoryview(payload).tobytes()
    expected = pure_frames.encode_frame(BINARY, raw, mask_key=mask_key)
    assert pure_frames.encode_frame(BINARY, payload, mask_key=mask_key) == expected
    assert compiled.frames.encode_frame(BINARY, payload, mask_key=mask_key) == expected


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((16, b""), {}),
        ((-1, b""), {}),
        ((1, b"x"), {"mask_key": b"abc"}),
        ((1, b"x"), {"mask_key": b"abcde"}),
        ((1, "text"), {}),
        ((1, None), {}),
    ],
)
def test_encode_frame_errors_match(compiled, args, kwargs):
    errors = []
    for module in (compiled.frames, pure_frames):
        with pytest.raises((TypeError, ValueError)) as info:
            module.encode_frame(*args, **kwargs)
        # ValueError texts are ours and must match; TypeError texts come from CPython.
        errors.append((type(info.value), str(info.value) if type(info.value) is ValueError else None))
    assert errors[0] == errors[1]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_message_size": 0},
        {"max_message_size": -5},
        {"max_fragments": 0},
        {"max_fragments": -1},
    ],
)
def test_parser_constructor_errors_match(compiled, kwargs):
    messages = []
    for module in (compiled.frames, pure_frames):
        with pytest.raises(ValueError) as info:
            module.FrameParser(**kwargs)
        messages.append(str(info.value))
    assert messages[0] == messages[1]


@pytest.mark.parametrize("limit", [100, 100.7, 1 << 70])
def test_parser_limits_and_properties_match(compiled, limit):
    fast = compiled.frames.FrameParser(max_message_size=limit)
    slow = pure_frames.FrameParser(max_message_size=limit)
    assert (fast.max_message_size, fast.max_fragments) == (slow.max_message_size, slow.max_fragments)
    assert (fast.buffered, fast.in_message, fast.error) == (slow.buffered, slow.in_message, slow.error)
    frame = pure_frames.encode_frame(BINARY, b"x" * 101, mask_key=b"abcd")
    assert trace(compiled.frames.FrameParser, [frame], {"max_message_size": limit}) == trace(
        pure_frames.FrameParser, [frame], {"max_message_size": limit}
    )


@PARITY
@given(
    opcode=st.integers(0, 15),
    payload=st.binary(max_size=100),
    flags=st.tuples(st.booleans(), st.booleans(), st.booleans(), st.booleans()),
)
def test_frame_objects_match(compiled, opcode, payload, flags):
    fin, rsv1, rsv2, rsv3 = flags
    fast = compiled.frames.Frame(opcode, payload, fin, rsv1, rsv2, rsv3)
    slow = pure_frames.Frame(opcode, payload, fin, rsv1, rsv2, rsv3)
    assert fast == slow and slow == fast
    assert not (fast != slow)
    assert repr(fast) == repr(slow)
    assert frame_tuple(fast) == frame_tuple(slow)
    other = compiled.frames.Frame(opcode, payload + b"!", fin, rsv1, rsv2, rsv3)
    assert other != slow and slow != other
    assert (fast == "not a frame") is False
    with pytest.raises(TypeError):
        hash(fast)
    with pytest.raises(TypeError):
        hash(slow)


def test_model_of_the_failing_index_is_sane():
    assert first_invalid_index(b"ab\xed\xa0\x80") == 3
    assert first_invalid_index(b"\xe2\x82") == -1
    assert first_invalid_index(b"\xe2\x82A") == 2
    assert first_invalid_index(b"\xf4\x90") == 1
