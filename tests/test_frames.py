"""The frame layer (RFC 6455, section 5): encoding and every rule the parser enforces.

Everything goes through ``ws4redis.speedups``, so the compiled run of the
suite covers ext/frames.pyx and the pure run covers ws4redis/pure/frames.py.
"""

from __future__ import annotations

import os
import struct

import pytest

from tests.wire import client_frame
from ws4redis import constants
from ws4redis.exceptions import InvalidPayloadError, MessageTooBigError, ProtocolError
from ws4redis.speedups import Frame, FrameParser, encode_frame

KEY = b"\x37\xfa\x21\x3d"  # the key of the examples in RFC 6455, section 5.7

TEXT, BINARY, CONT = constants.OP_TEXT, constants.OP_BINARY, constants.OP_CONTINUATION
CLOSE, PING, PONG = constants.OP_CLOSE, constants.OP_PING, constants.OP_PONG


def parse_all(data: bytes, **kwargs) -> list:
    return FrameParser(**kwargs).feed(data)


def expect_error(data: bytes, code: int, exc_type: type = ProtocolError, **kwargs) -> ProtocolError:
    parser = FrameParser(**kwargs)
    with pytest.raises(exc_type) as info:
        parser.feed(data)
    assert info.value.close_code == code
    return info.value


# --- encoding -------------------------------------------------------------


def test_rfc_examples_unmasked_and_masked_hello():
    assert encode_frame(TEXT, b"Hello") == bytes.fromhex("810548656c6c6f")
    assert encode_frame(TEXT, b"Hello", mask_key=KEY) == bytes.fromhex("818537fa213d7f9f4d5158")
    assert encode_frame(TEXT, b"Hel", fin=False) == bytes.fromhex("010348656c")
    assert encode_frame(CONT, b"lo") == bytes.fromhex("80026c6f")
    assert encode_frame(PING, b"Hello") == bytes.fromhex("890548656c6c6f")


def test_rfc_examples_extended_lengths():
    assert encode_frame(BINARY, bytes(256))[:4] == bytes.fromhex("827e0100")
    assert encode_frame(BINARY, bytes(65536))[:10] == bytes.fromhex("827f0000000000010000")


@pytest.mark.parametrize(
    ("length", "header"), [(0, 2), (125, 2), (126, 4), (65535, 4), (65536, 10)]
)
def test_shortest_length_encoding(length, header):
    assert len(encode_frame(BINARY, bytes(length))) == header + length
    assert len(encode_frame(BINARY, bytes(length), mask_key=KEY)) == header + 4 + length


def test_encode_sets_rsv_bits_and_fin():
    first = encode_frame(TEXT, b"", fin=False, rsv1=True, rsv2=True, rsv3=True)[0]
    assert first == 0x70 | TEXT
    assert encode_frame(BINARY, b"")[0] == 0x80 | BINARY


def test_encode_accepts_bytes_like_payloads():
    expected = encode_frame(BINARY, b"abcdef", mask_key=KEY)
    assert encode_frame(BINARY, bytearray(b"abcdef"), mask_key=KEY) == expected
    assert encode_frame(BINARY, memoryview(b"xxabcdef")[2:], mask_key=KEY) == expected


def test_encode_rejects_bad_arguments():
    with pytest.raises(ValueError):
        encode_frame(16, b"")
    with pytest.raises(ValueError):
        encode_frame(-1, b"")
    with pytest.raises(ValueError):
        encode_frame(TEXT, b"x", mask_key=b"abc")


# --- Frame ----------------------------------------------------------------


def test_frame_fields_equality_and_repr():
    frame = Frame(TEXT, b"hi")
    assert (frame.opcode, frame.payload, frame.fin) == (TEXT, b"hi", True)
    assert (frame.rsv1, frame.rsv2, frame.rsv3) == (False, False, False)
    assert frame == Frame(TEXT, b"hi", True)
    assert frame != Frame(TEXT, b"hi", fin=False)
    assert frame != Frame(BINARY, b"hi")
    assert frame != Frame(TEXT, b"ho")
    assert frame != Frame(TEXT, b"hi", rsv2=True)
    assert frame != "Frame"
    assert "payload=b'hi'" in repr(frame)
    assert "100000 bytes" in repr(Frame(BINARY, bytes(100000)))


def test_frame_equals_any_object_with_the_same_fields():
    class Twin:
        def __init__(self):
            self.opcode, self.payload, self.fin = PING, b"p", True
            self.rsv1 = self.rsv2 = self.rsv3 = False

    assert Frame(PING, b"p") == Twin()
    assert Twin() == Frame(PING, b"p")


# --- roundtrips and chunking ---------------------------------------------


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65535, 65536, 70000])
@pytest.mark.parametrize("opcode", [TEXT, BINARY])
def test_roundtrip_at_length_boundaries(length, opcode):
    payload = b"a" * length if opcode == TEXT else os.urandom(length)
    assert parse_all(client_frame(opcode, payload)) == [Frame(opcode, payload)]
    unmasked = encode_frame(opcode, payload)
    assert parse_all(unmasked, require_mask=False) == [Frame(opcode, payload)]


def stream_of_frames() -> tuple[bytes, list]:
    """A conversation mixing every kind of frame, fragmentation and multi-byte text."""
    text = "grüße € 𝄞".encode()
    frames = [
        Frame(TEXT, text),
        Frame(PING, b"ping!"),
        Frame(TEXT, text[:3], fin=False),  # splits the "ü" between fragments
        Frame(PONG, b""),
        Frame(CONT, text[3:11], fin=False),
        Frame(CONT, text[11:]),
        Frame(BINARY, bytes(range(256)) * 2),
        Frame(BINARY, b""),
        Frame(CLOSE, struct.pack("!H", 1000) + "bye ✓".encode()),
    ]
    data = b"".join(client_frame(f.opcode, f.payload, fin=f.fin) for f in frames)
    return data, frames


def test_split_at_every_position_gives_the_same_frames():
    data, expected = stream_of_frames()
    for cut in range(len(data) + 1):
        parser = FrameParser()
        got = parser.feed(data[:cut]) + parser.feed(data[cut:])
        assert got == expected, f"split at {cut}"
        assert parser.buffered == 0


def test_byte_by_byte_and_odd_chunks():
    data, expected = stream_of_frames()
    for size in (1, 2, 3, 5, 13, 64):
        parser = FrameParser()
        got = []
        for start in range(0, len(data), size):
            got += parser.feed(data[start : start + size])
        assert got == expected, f"chunks of {size}"


def test_feed_accepts_bytearray_and_memoryview():
    data, expected = stream_of_frames()
    assert FrameParser().feed(bytearray(data)) == expected
    assert FrameParser().feed(memoryview(data)) == expected


def test_payloads_are_bytes():
    data, _ = stream_of_frames()
    assert all(type(frame.payload) is bytes for frame in FrameParser().feed(data))


def test_buffer_holds_at_most_a_header_and_the_current_payload():
    head = client_frame(TEXT, b"done") + client_frame(PING, b"x")
    big = client_frame(BINARY, bytes(5000))
    parser = FrameParser()
    assert parser.feed(head + big[:3]) == [Frame(TEXT, b"done"), Frame(PING, b"x")]
    assert parser.buffered == 3  # only the partial header of the next frame
    assert parser.feed(big[3:2000]) == []
    assert parser.buffered == 2000 - 8  # the header (4 + 4 mask bytes) is consumed
    assert parser.feed(big[2000:]) == [Frame(BINARY, bytes(5000))]
    assert parser.buffered == 0


def test_properties_describe_the_parser():
    parser = FrameParser(max_message_size=1000)
    assert parser.max_message_size == 1000
    assert parser.max_fragments == constants.default_max_fragments(1000)
    assert FrameParser(max_fragments=7).max_fragments == 7
    assert parser.in_message is False
    parser.feed(client_frame(TEXT, b"a", fin=False))
    assert parser.in_message is True
    parser.feed(client_frame(CONT, b"b"))
    assert parser.in_message is False
    assert parser.error is None


def test_constructor_rejects_nonsense_limits():
    with pytest.raises(ValueError):
        FrameParser(max_message_size=0)
    with pytest.raises(ValueError):
        FrameParser(max_fragments=0)


# --- section 5.2: header rules -------------------------------------------


@pytest.mark.parametrize("bit", ["rsv1", "rsv2", "rsv3"])
@pytest.mark.parametrize("opcode", [TEXT, BINARY, PING])
def test_reserved_bits_are_refused(bit, opcode):
    error = expect_error(client_frame(opcode, b"x", **{bit: True}), 1002)
    assert "reserved bits" in str(error)


@pytest.mark.parametrize("opcode", [3, 4, 5, 6, 7, 11, 12, 13, 14, 15])
def test_reserved_opcodes_are_refused(opcode):
    error = expect_error(client_frame(opcode, b""), 1002)
    assert "opcode" in str(error)


def test_header_rules_fail_on_the_first_two_bytes():
    # Only two bytes of a frame announcing a 64-bit length: the opcode is
    # already known to be bad, so there is no need to wait for the rest.
    expect_error(bytes((0x80 | 3, 0x80 | 127)), 1002)


@pytest.mark.parametrize("opcode", [CLOSE, PING, PONG])
def test_fragmented_control_frame(opcode):
    error = expect_error(client_frame(opcode, b"", fin=False), 1002)
    assert "control" in str(error)


@pytest.mark.parametrize("opcode", [PING, PONG])
def test_control_payload_limit(opcode):
    assert parse_all(client_frame(opcode, b"p" * 125)) == [Frame(opcode, b"p" * 125)]
    expect_error(client_frame(opcode, b"p" * 126), 1002)


def test_close_payload_limit():
    expect_error(client_frame(CLOSE, struct.pack("!H", 1000) + b"r" * 124), 1002)


def test_unmasked_client_frame_is_refused():
    error = expect_error(encode_frame(TEXT, b"hi"), 1002)
    assert "unmasked" in str(error)


def test_masked_server_frame_is_refused_by_a_client_parser():
    error = expect_error(client_frame(TEXT, b"hi"), 1002, require_mask=False)
    assert "masked" in str(error)


def test_64_bit_length_with_top_bit_set():
    header = bytes((0x82, 0x80 | 127)) + struct.pack("!Q", 1 << 63) + KEY
    expect_error(header, 1002, max_message_size=1 << 62)


def test_non_minimal_length_encodings_are_accepted():
    payload = b"hello"
    masked = encode_frame(BINARY, payload, mask_key=KEY)[6:]
    form16 = bytes((0x82, 0x80 | 126)) + struct.pack("!H", 5) + KEY + masked
    form64 = bytes((0x82, 0x80 | 127)) + struct.pack("!Q", 5) + KEY + masked
    assert parse_all(form16) == [Frame(BINARY, payload)]
    assert parse_all(form64) == [Frame(BINARY, payload)]


# --- section 10.4: size limits -------------------------------------------


def test_frame_over_the_limit_is_refused_from_its_header():
    frame = client_frame(BINARY, bytes(1001))
    parser = FrameParser(max_message_size=1000)
    with pytest.raises(MessageTooBigError) as info:
        parser.feed(frame[:8])  # header only: nothing of the payload has arrived
    assert info.value.close_code == 1009
    assert parser.buffered == 0
    assert parse_all(client_frame(BINARY, bytes(1000)), max_message_size=1000) == [Frame(BINARY, bytes(1000))]


def test_huge_announced_length_is_refused_without_buffering():
    header = bytes((0x82, 0x80 | 127)) + struct.pack("!Q", 1 << 40) + KEY
    expect_error(header, 1009, MessageTooBigError)


def test_fragmented_message_over_the_limit():
    parser = FrameParser(max_message_size=1000)
    parser.feed(client_frame(TEXT, b"a" * 600, fin=False))
    with pytest.raises(MessageTooBigError) as info:
        parser.feed(client_frame(CONT, b"a" * 401))
    assert info.value.close_code == 1009


def test_fragmented_message_at_the_limit_is_fine():
    parser = FrameParser(max_message_size=1000)
    frames = parser.feed(client_frame(TEXT, b"a" * 600, fin=False) + client_frame(CONT, b"a" * 400))
    assert [len(frame.payload) for frame in frames] == [600, 400]


def test_fragment_flood():
    frames = client_frame(BINARY, b"", fin=False) + client_frame(CONT, b"", fin=False) * 8
    error = expect_error(frames + client_frame(CONT, b""), 1009, MessageTooBigError, max_fragments=9)
    assert "fragments" in str(error)
    assert len(parse_all(frames + client_frame(CONT, b"x"), max_fragments=10)) == 10


def test_default_fragment_limit_applies():
    limit = constants.default_max_fragments(constants.DEFAULT_MAX_MESSAGE_SIZE)
    flood = client_frame(TEXT, b"", fin=False) + client_frame(CONT, b"", fin=False) * limit
    expect_error(flood, 1009, MessageTooBigError)


def test_control_frames_do_not_count_towards_the_message():
    parser = FrameParser(max_message_size=10, max_fragments=2)
    data = (
        client_frame(TEXT, b"12345", fin=False)
        + client_frame(PING, b"p" * 100)
        + client_frame(PONG, b"q" * 100)
        + client_frame(CONT, b"67890")
    )
    assert [frame.opcode for frame in parser.feed(data)] == [TEXT, PING, PONG, CONT]


# --- section 5.4: fragmentation ------------------------------------------


def test_continuation_without_a_message():
    error = expect_error(client_frame(CONT, b"x"), 1002)
    assert "continuation" in str(error)


def test_continuation_after_a_finished_message():
    data = client_frame(TEXT, b"a", fin=False) + client_frame(CONT, b"b") + client_frame(CONT, b"c")
    expect_error(data, 1002)


@pytest.mark.parametrize("opcode", [TEXT, BINARY])
def test_new_data_frame_inside_a_fragmented_message(opcode):
    data = client_frame(BINARY, b"a", fin=False) + client_frame(opcode, b"b")
    error = expect_error(data, 1002)
    assert "in progress" in str(error)


def test_control_frames_may_interleave():
    data = client_frame(TEXT, b"a", fin=False) + client_frame(PING) + client_frame(CONT, b"b")
    assert parse_all(data) == [Frame(TEXT, b"a", fin=False), Frame(PING, b""), Frame(CONT, b"b")]


# --- section 8.1: UTF-8 ---------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        b"\xff",
        b"caf\xc3",  # ends in the middle of a code point
        b"\xc0\x80",  # overlong NUL
        b"\xed\xa0\x80",  # UTF-16 surrogate
        b"\xf4\x90\x80\x80",  # above U+10FFFF
        b"ok\x80ok",  # lone continuation byte
    ],
)
def test_invalid_text_frame(bad):
    expect_error(client_frame(TEXT, bad), 1007, InvalidPayloadError)


def test_invalid_utf8_in_a_later_fragment():
    data = client_frame(TEXT, b"fine", fin=False) + client_frame(CONT, b"\xc3\x28")
    expect_error(data, 1007, InvalidPayloadError)


def test_code_point_split_across_fragments_is_valid():
    euro = "€".encode()
    data = client_frame(TEXT, euro[:1], fin=False) + client_frame(CONT, euro[1:2], fin=False)
    data += client_frame(PING, b"between") + client_frame(CONT, euro[2:])
    assert [frame.payload for frame in parse_all(data)] == [euro[:1], euro[1:2], b"between", euro[2:]]


def test_message_ending_inside_a_code_point():
    data = client_frame(TEXT, b"x\xe2\x82", fin=False) + client_frame(CONT, b"")
    error = expect_error(data, 1007, InvalidPayloadError)
    assert "middle" in str(error)


def test_invalid_utf8_fails_before_the_frame_is_complete():
    frame = client_frame(TEXT, b"valid start \xff" + b"x" * 100_000)
    parser = FrameParser()
    with pytest.raises(InvalidPayloadError):
        parser.feed(frame[:100])  # header + the first bytes, including the bad one


def test_invalid_utf8_fails_per_fragment_before_the_message_ends():
    parser = FrameParser()
    parser.feed(client_frame(TEXT, b"good", fin=False))
    with pytest.raises(InvalidPayloadError):
        parser.feed(client_frame(CONT, b"\xfe", fin=False))


def test_binary_frames_are_not_utf8_checked():
    assert parse_all(client_frame(BINARY, b"\xff\xfe")) == [Frame(BINARY, b"\xff\xfe")]


def test_validation_can_be_disabled():
    data = client_frame(TEXT, b"\xff", fin=False) + client_frame(CONT, b"\xe2\x82")
    assert len(parse_all(data, validate_utf8=False)) == 2


def test_utf8_state_resets_between_messages():
    data = client_frame(TEXT, "é".encode()) + client_frame(TEXT, "€".encode()[:2], fin=False)
    data += client_frame(CONT, "€".encode()[2:]) + client_frame(TEXT, b"plain")
    assert len(parse_all(data)) == 4


# --- section 5.5.1: close payload -----------------------------------------


def test_close_without_payload_and_with_code_and_reason():
    assert parse_all(client_frame(CLOSE)) == [Frame(CLOSE, b"")]
    payload = struct.pack("!H", 4000) + "adiós".encode()
    assert parse_all(client_frame(CLOSE, payload)) == [Frame(CLOSE, payload)]


def test_close_payload_of_one_byte():
    expect_error(client_frame(CLOSE, b"\x03"), 1002)


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535])
def test_invalid_close_codes(code):
    error = expect_error(client_frame(CLOSE, struct.pack("!H", code)), 1002)
    assert str(code) in str(error)


def test_close_reason_must_be_utf8():
    expect_error(client_frame(CLOSE, struct.pack("!H", 1000) + b"\xff"), 1007, InvalidPayloadError)


# --- failure is final ------------------------------------------------------


def test_error_reports_frames_completed_before_it():
    good = client_frame(TEXT, b"one") + client_frame(PING, b"two")
    error = expect_error(good + client_frame(TEXT, b"\xff"), 1007, InvalidPayloadError)
    assert error.frames == [Frame(TEXT, b"one"), Frame(PING, b"two")]


def test_parser_stays_failed():
    parser = FrameParser()
    with pytest.raises(ProtocolError):
        parser.feed(encode_frame(TEXT, b"unmasked"))
    assert parser.error is not None and parser.error.close_code == 1002
    for _ in range(2):
        with pytest.raises(ProtocolError) as info:
            parser.feed(client_frame(TEXT, b"valid now"))
        assert info.value.close_code == 1002
        assert info.value.frames == []
