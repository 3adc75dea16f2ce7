"""The sans-I/O message layer: reassembly, pings, the close handshake, violations."""

from __future__ import annotations

import os
import struct

import pytest

from tests.wire import client_frame
from ws4redis import constants
from ws4redis.exceptions import ConnectionClosed, InvalidPayloadError, MessageTooBigError
from ws4redis.protocol import (
    CloseReceived,
    Message,
    Ping,
    Pong,
    ProtocolViolation,
    State,
    WebSocketProtocol,
    frame_message,
    frame_payload,
)
from ws4redis.speedups import Frame, FrameParser, encode_frame

TEXT, BINARY, CONT = constants.OP_TEXT, constants.OP_BINARY, constants.OP_CONTINUATION
CLOSE, PING, PONG = constants.OP_CLOSE, constants.OP_PING, constants.OP_PONG

VALID_CODES = sorted(constants.SENDABLE_CLOSE_CODES) + [3000, 3001, 3999, 4000, 4001, 4999]
INVALID_CODES = [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000]


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


def sent_frames(protocol: WebSocketProtocol) -> list:
    """What a server protocol wrote, parsed the way a client would (unmasked frames)."""
    return FrameParser(require_mask=False).feed(protocol.data_to_send())


def close_code_of(frame) -> int:
    assert frame.opcode == CLOSE
    return struct.unpack("!H", frame.payload[:2])[0]


# --- messages ---------------------------------------------------------------


def test_text_and_binary_messages():
    server = WebSocketProtocol()
    events = server.receive_data(client_frame(TEXT, "héllo".encode()) + client_frame(BINARY, b"\x00\xff"))
    assert events == [Message("héllo".encode(), False), Message(b"\x00\xff", True)]
    assert events[0].text == "héllo"
    with pytest.raises(TypeError):
        _ = events[1].text
    assert server.data_to_send() == b""


def test_fragmented_message_with_interleaved_ping():
    server = WebSocketProtocol()
    data = (
        client_frame(TEXT, b"frag", fin=False)
        + client_frame(PING, b"are you there")
        + client_frame(CONT, "mén".encode()[:2], fin=False)
        + client_frame(PONG, b"beat")
        + client_frame(CONT, "mén".encode()[2:])
    )
    events = server.receive_data(data)
    assert events == [Ping(b"are you there"), Pong(b"beat"), Message("fragmén".encode(), False)]
    assert sent_frames(server) == [Frame(PONG, b"are you there")]


def test_fragmented_binary_fed_byte_by_byte():
    server = WebSocketProtocol()
    payload = os.urandom(300)
    data = client_frame(BINARY, payload[:100], fin=False) + client_frame(CONT, payload[100:])
    events = []
    for i in range(len(data)):
        events += server.receive_data(data[i : i + 1])
    assert events == [Message(payload, True)]


def test_ping_gets_a_pong_with_the_same_payload():
    server = WebSocketProtocol()
    assert server.receive_data(client_frame(PING, b"123")) == [Ping(b"123")]
    assert server.receive_data(client_frame(PING)) == [Ping(b"")]
    assert sent_frames(server) == [Frame(PONG, b"123"), Frame(PONG, b"")]
    assert server.data_to_send() == b""  # drained


def test_send_message_ping_pong():
    server = WebSocketProtocol()
    server.send_message("grüß")
    server.send_message(b"bytes as text")
    server.send_message(b"\xff\x00", binary=True)
    server.send_message("str as binary", binary=True)
    server.send_ping(b"p")
    server.send_pong(b"q")
    assert sent_frames(server) == [
        Frame(TEXT, "grüß".encode()),
        Frame(TEXT, b"bytes as text"),
        Frame(BINARY, b"\xff\x00"),
        Frame(BINARY, b"str as binary"),
        Frame(PING, b"p"),
        Frame(PONG, b"q"),
    ]


def test_text_must_be_utf8_when_sent():
    server = WebSocketProtocol()
    with pytest.raises(ValueError, match="UTF-8"):
        server.send_message(b"\xff")
    with pytest.raises(ValueError, match="UTF-8"):
        frame_message(b"\xc3")
    assert server.data_to_send() == b""


def test_control_payload_limits_when_sending():
    server = WebSocketProtocol()
    with pytest.raises(ValueError):
        server.send_ping(b"x" * 126)
    with pytest.raises(ValueError):
        server.send_close(1000, "r" * 124)
    with pytest.raises(ValueError):
        server.send_close(1005)
    assert server.state is State.OPEN


def test_frame_message_is_the_server_frame():
    assert frame_message("hi") == encode_frame(TEXT, b"hi")
    assert frame_message(b"hi") == encode_frame(TEXT, b"hi")
    assert frame_message(b"\xff", binary=True) == encode_frame(BINARY, b"\xff")
    big = "x" * 70000
    assert FrameParser(require_mask=False).feed(frame_message(big)) == [Frame(TEXT, big.encode())]


# --- close handshake ----------------------------------------------------------


def test_peer_initiated_close_is_echoed_once():
    server = WebSocketProtocol()
    events = server.receive_data(client_frame(CLOSE, close_payload(1001, "adiós".encode())))
    assert events == [CloseReceived(1001, "adiós")]
    assert server.state is State.CLOSED
    assert (server.close_code, server.close_reason) == (1001, "adiós")
    frames = sent_frames(server)
    assert len(frames) == 1 and close_code_of(frames[0]) == 1001
    # Nothing is answered or sent after the close.
    assert server.receive_data(client_frame(PING, b"late") + client_frame(CLOSE)) == []
    assert server.data_to_send() == b""
    with pytest.raises(ConnectionClosed) as info:
        server.send_message("too late")
    assert info.value.code == 1001
    with pytest.raises(ConnectionClosed):
        server.send_ping()
    server.send_close()  # already closed: a no-op
    assert server.data_to_send() == b""


def test_frames_after_a_close_in_the_same_chunk_are_ignored():
    server = WebSocketProtocol()
    data = client_frame(TEXT, b"before") + client_frame(CLOSE) + client_frame(TEXT, b"after")
    assert server.receive_data(data) == [Message(b"before", False), CloseReceived(1005, "")]


def test_close_without_status_is_1005_and_answered_with_1000():
    server = WebSocketProtocol()
    assert server.receive_data(client_frame(CLOSE)) == [CloseReceived(1005, "")]
    assert server.close_code == 1005
    [frame] = sent_frames(server)
    assert frame.payload == struct.pack("!H", 1000)


def test_close_reason_may_be_utf8_bytes():
    server = WebSocketProtocol()
    with pytest.raises(ValueError, match="UTF-8"):
        server.send_close(1000, b"\xff")
    server.send_close(4000, "ciao ✓".encode())
    assert server.close_reason == "ciao ✓"
    [frame] = sent_frames(server)
    assert frame.payload == close_payload(4000, "ciao ✓".encode())


def test_server_initiated_close():
    server = WebSocketProtocol()
    server.send_close(1001, "going away")
    assert server.state is State.CLOSING
    [frame] = sent_frames(server)
    assert frame.payload == close_payload(1001, b"going away")
    with pytest.raises(ConnectionClosed):
        server.send_message("no more data after a close")
    server.send_close(1000)  # a second close is never sent
    assert server.data_to_send() == b""
    # The peer may still finish what it was sending, then answers the close.
    events = server.receive_data(client_frame(TEXT, b"last words") + client_frame(PING, b"p"))
    assert events == [Message(b"last words", False), Ping(b"p")]
    assert server.data_to_send() == b""  # no pong while closing
    assert server.receive_data(client_frame(CLOSE, close_payload(1001))) == [CloseReceived(1001, "")]
    assert server.state is State.CLOSED
    assert server.data_to_send() == b""  # the handshake is complete: no echo


@pytest.mark.parametrize("code", VALID_CODES)
def test_every_valid_close_code_is_accepted_and_echoed(code):
    server = WebSocketProtocol()
    assert server.receive_data(client_frame(CLOSE, close_payload(code, b"r"))) == [CloseReceived(code, "r")]
    [frame] = sent_frames(server)
    assert close_code_of(frame) == code


def test_the_whole_private_range_is_accepted():
    for code in range(3000, 5000):
        server = WebSocketProtocol()
        assert server.receive_data(client_frame(CLOSE, close_payload(code))) == [CloseReceived(code, "")]
        assert close_code_of(sent_frames(server)[0]) == code


@pytest.mark.parametrize("code", INVALID_CODES)
def test_invalid_close_codes_fail_with_1002(code):
    server = WebSocketProtocol()
    [event] = server.receive_data(client_frame(CLOSE, close_payload(code)))
    assert isinstance(event, ProtocolViolation)
    assert event.error.close_code == 1002
    assert server.state is State.CLOSED and server.close_code == 1002
    [frame] = sent_frames(server)
    assert close_code_of(frame) == 1002


def test_eof_without_close_is_abnormal():
    server = WebSocketProtocol()
    server.receive_data(client_frame(TEXT, b"half", fin=False))
    server.receive_eof()
    assert server.state is State.CLOSED and server.close_code == 1006
    assert server.receive_data(client_frame(CONT, b"rest")) == []


def test_eof_after_close_keeps_the_code():
    server = WebSocketProtocol()
    server.receive_data(client_frame(CLOSE, close_payload(4001)))
    server.receive_eof()
    assert server.close_code == 4001


# --- violations ------------------------------------------------------------------


def assert_failed(server: WebSocketProtocol, events: list, code: int, exc_type: type) -> None:
    assert isinstance(events[-1], ProtocolViolation)
    assert isinstance(events[-1].error, exc_type)
    assert server.error is events[-1].error
    assert server.state is State.CLOSED and server.close_code == code
    [frame] = sent_frames(server)
    assert close_code_of(frame) == code
    assert len(frame.payload) <= constants.MAX_CONTROL_PAYLOAD
    # Further input is ignored, and nothing more is sent.
    assert server.receive_data(client_frame(TEXT, b"ignored")) == []
    assert server.data_to_send() == b""


def test_invalid_utf8_text_fails_with_1007():
    server = WebSocketProtocol()
    events = server.receive_data(client_frame(TEXT, b"ok") + client_frame(TEXT, b"bad \xed\xa0\x80"))
    assert events[0] == Message(b"ok", False)  # parsed before the error: kept
    assert_failed(server, events, 1007, InvalidPayloadError)


def test_invalid_utf8_in_a_fragment_fails_with_1007():
    server = WebSocketProtocol()
    events = server.receive_data(client_frame(TEXT, b"ok", fin=False))
    events += server.receive_data(client_frame(CONT, b"\xc0\xaf"))
    assert_failed(server, events, 1007, InvalidPayloadError)


def test_invalid_utf8_in_close_reason_fails_with_1007():
    server = WebSocketProtocol()
    events = server.receive_data(client_frame(CLOSE, close_payload(1000, b"\xff")))
    assert_failed(server, events, 1007, InvalidPayloadError)


def test_fragment_flood_fails_with_1009():
    server = WebSocketProtocol(max_fragments=100)
    data = client_frame(BINARY, b"", fin=False) + client_frame(CONT, b"", fin=False) * 100
    assert_failed(server, server.receive_data(data), 1009, MessageTooBigError)


def test_oversized_message_fails_with_1009():
    server = WebSocketProtocol(max_message_size=1000)
    assert server.receive_data(client_frame(BINARY, bytes(1000))) == [Message(bytes(1000), True)]
    data = client_frame(TEXT, b"a" * 999, fin=False) + client_frame(CONT, b"bb")
    assert_failed(server, server.receive_data(data), 1009, MessageTooBigError)


def test_unmasked_frame_fails_with_1002():
    server = WebSocketProtocol()
    events = server.receive_data(encode_frame(TEXT, b"not masked"))
    assert_failed(server, events, 1002, type(events[-1].error))


def test_violation_while_closing_sends_no_second_close():
    server = WebSocketProtocol()
    server.send_close(1000)
    server.data_to_send()
    [event] = server.receive_data(client_frame(TEXT, b"\xff"))
    assert isinstance(event, ProtocolViolation)
    assert server.state is State.CLOSED
    assert server.data_to_send() == b""


# --- client side -------------------------------------------------------------------


def test_client_masks_and_rejects_masked_input():
    client = WebSocketProtocol(client=True)
    client.send_message("hello")
    wire = client.data_to_send()
    assert wire[1] & 0x80  # the mask bit
    assert FrameParser().feed(wire) == [Frame(TEXT, b"hello")]
    [event] = client.receive_data(client_frame(TEXT, b"masked by a server?"))
    assert isinstance(event, ProtocolViolation) and event.error.close_code == 1002


def test_client_and_server_talk():
    client = WebSocketProtocol(client=True)
    server = WebSocketProtocol()
    client.send_message("ping me")
    client.send_ping(b"hb")
    events = server.receive_data(client.data_to_send())
    assert events == [Message(b"ping me", False), Ping(b"hb")]
    server.send_message(b"\x01\x02", binary=True)
    assert client.receive_data(server.data_to_send()) == [Pong(b"hb"), Message(b"\x01\x02", True)]
    client.send_close(4000, "done")
    assert server.receive_data(client.data_to_send()) == [CloseReceived(4000, "done")]
    assert client.receive_data(server.data_to_send()) == [CloseReceived(4000, "")]
    assert client.state is State.CLOSED and server.state is State.CLOSED


def test_payloads_from_redis_are_text_when_utf8_and_binary_otherwise():
    assert frame_payload(b"caf\xc3\xa9") == bytes([0x81, 5]) + b"caf\xc3\xa9"
    assert frame_payload(memoryview(b"\xc3")) == bytes([0x82, 1]) + b"\xc3"
