"""The sans-I/O websocket connection: frames in, messages and replies out.

:class:`WebSocketProtocol` sits on top of the frame layer (through the
``ws4redis.speedups`` facade, so it runs compiled when it can). It reassembles
fragmented messages, answers pings, runs the close handshake and turns a
protocol violation into the right close frame. It never touches a socket:
adapters feed it received bytes with :meth:`~WebSocketProtocol.receive_data`
and write out whatever :meth:`~WebSocketProtocol.data_to_send` returns.
"""

from __future__ import annotations

import enum
import os
import struct
from dataclasses import dataclass

from ws4redis import constants
from ws4redis.deflate import Compressor, Deflation
from ws4redis.exceptions import ConnectionClosed, InvalidPayloadError, ProtocolError
from ws4redis.speedups import FrameParser, encode_frame, validate_utf8

__all__ = [
    "CloseReceived",
    "Event",
    "Message",
    "Ping",
    "Pong",
    "ProtocolViolation",
    "State",
    "WebSocketProtocol",
    "frame_compressed",
    "frame_for",
    "frame_message",
    "frame_payload",
]

# Module globals: looked up faster than constants.X in the per-frame loop.
_CONTINUATION = constants.OP_CONTINUATION
_TEXT = constants.OP_TEXT
_BINARY = constants.OP_BINARY
_PING = constants.OP_PING
_PONG = constants.OP_PONG

_CLOSE_CODE = struct.Struct("!H")
# A close frame is a control frame: 2 bytes of code leave 123 for the reason.
_MAX_CLOSE_REASON = constants.MAX_CONTROL_PAYLOAD - _CLOSE_CODE.size


class State(enum.Enum):
    """Connection states of RFC 6455, section 7, once the handshake is done."""

    OPEN = "open"
    CLOSING = "closing"  # we sent a close frame and wait for the peer's
    CLOSED = "closed"


@dataclass(slots=True)
class Message:
    """A complete (reassembled) data message."""

    data: bytes
    binary: bool

    @property
    def text(self) -> str:
        """The message as text; the parser has already proven it is UTF-8."""
        if self.binary:
            raise TypeError("a binary message has no text; use .data")
        return self.data.decode("utf-8")


@dataclass(slots=True)
class Ping:
    """The peer pinged; the matching pong has already been queued."""

    payload: bytes


@dataclass(slots=True)
class Pong:
    """The peer answered a ping (or sent an unsolicited heartbeat pong)."""

    payload: bytes


@dataclass(slots=True)
class CloseReceived:
    """The peer sent a close frame; ``code`` is 1005 when it carried no status."""

    code: int
    reason: str


@dataclass(slots=True)
class ProtocolViolation:
    """The peer broke the protocol; a close frame with ``error.close_code`` is queued."""

    error: ProtocolError


Event = Message | Ping | Pong | CloseReceived | ProtocolViolation


def _utf8(data: str | bytes | bytearray | memoryview, what: str) -> bytes:
    """``data`` as UTF-8 bytes, refusing bytes that are not UTF-8 (a peer would fail us with 1007)."""
    if isinstance(data, str):
        return data.encode("utf-8")
    if not validate_utf8(data):
        raise ValueError(f"{what} must be valid UTF-8; send it as binary instead")
    return bytes(data)


def frame_message(data: str | bytes | bytearray | memoryview, binary: bool = False) -> bytes:
    """One server-side (unmasked) frame carrying ``data``.

    A server broadcasting one message to many clients frames it once with this
    and writes the same bytes to every socket.
    """
    if binary:
        if isinstance(data, str):
            data = data.encode("utf-8")
        return encode_frame(constants.OP_BINARY, data)
    return encode_frame(constants.OP_TEXT, _utf8(data, "a text message"))


def _opcode(payload: bytes | bytearray | memoryview, binary: bool | None) -> int:
    """Binary when declared so; otherwise text exactly when the bytes are UTF-8 (never invalid text)."""
    if binary or not validate_utf8(payload):
        return constants.OP_BINARY
    return constants.OP_TEXT


def frame_payload(payload: bytes | bytearray | memoryview, binary: bool | None = None) -> bytes:
    """One server-side frame for bytes read from Redis.

    Redis carries no opcode, so unless the message declared its type (``binary``, carried on
    channels with a history) the bytes decide: UTF-8 goes out as text, which is what 0.6.0's
    browsers expect, anything else as binary, so that invalid UTF-8 never reaches a peer in a
    text frame (it would fail us with 1007).
    """
    return encode_frame(_opcode(payload, binary), payload)


def frame_compressed(payload: bytes | bytearray | memoryview, compressor: Compressor,
                     binary: bool | None = None) -> bytes:
    """:func:`frame_payload`'s frame, deflated (RSV1 set) for every socket that negotiated ``compressor``."""
    return encode_frame(_opcode(payload, binary), compressor.compress(payload), rsv1=True)


def frame_for(payload: bytes | bytearray | memoryview, deflation: Deflation | None,
              binary: bool | None = None) -> bytes:
    """The frame one connection sends for ``payload``: compressed when it negotiated it and it pays."""
    if deflation is not None and len(payload) >= deflation.threshold:
        return frame_compressed(payload, deflation.compressor, binary)
    return frame_payload(payload, binary)


def _close_payload(code: int, reason: str | bytes) -> bytes:
    encoded = _utf8(reason, "a close reason")
    if len(encoded) > _MAX_CLOSE_REASON:
        raise ValueError(f"a close reason is at most {_MAX_CLOSE_REASON} bytes of UTF-8")
    return _CLOSE_CODE.pack(code) + encoded


def _short_reason(error: ProtocolError) -> str:
    """The error message cut to fit a close frame, on a character boundary."""
    encoded = str(error).encode("utf-8")[:_MAX_CLOSE_REASON]
    return encoded.decode("utf-8", "ignore")


class WebSocketProtocol:
    """One websocket connection after the handshake, as a state machine.

    Server side by default: input must be masked, output is not. With
    ``client=True`` it is the other way round and every outgoing frame is
    masked with a fresh ``os.urandom`` key (RFC 6455, section 5.3).
    """

    def __init__(
        self,
        *,
        client: bool = False,
        max_message_size: int = constants.DEFAULT_MAX_MESSAGE_SIZE,
        max_fragments: int | None = None,
        deflation: Deflation | None = None,
    ) -> None:
        self.client = client
        # permessage-deflate, when the handshake negotiated it (ws4redis.deflate).
        self.deflation = deflation
        self.state = State.OPEN
        self.close_code: int | None = None
        self.close_reason: str = ""
        # The code of the close frame each way, None while none went that way (for metrics and logs).
        self.close_sent: int | None = None
        self.close_received: int | None = None
        self.error: ProtocolError | None = None
        self._parser = FrameParser(
            max_message_size=max_message_size,
            require_mask=not client,
            max_fragments=max_fragments,
            validate_utf8=True,
            allow_compressed=deflation is not None,
        )
        self._outgoing: list[bytes] = []
        self._fragments: list[bytes] = []
        self._fragmented_binary = False
        self._inflating = False  # the fragmented message in progress is compressed

    # --- input ------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """Feed bytes read from the peer; return the events they complete, in order.

        Input after the connection is closed (or failed) is ignored.
        """
        if self.state is State.CLOSED or self.error is not None:
            return []
        try:
            frames = self._parser.feed(data)
        except ProtocolError as error:
            events = self._handle_frames(error.frames)
            if self.state is not State.CLOSED and self.error is None:
                self._fail(error)
                events.append(ProtocolViolation(error))
            return events
        return self._handle_frames(frames)

    def receive_eof(self) -> None:
        """The peer closed the TCP stream; without a close handshake that is 1006."""
        if self.state is not State.CLOSED:
            self.state = State.CLOSED
            if self.close_code is None:
                self.close_code = constants.CLOSE_ABNORMAL

    def _handle_frames(self, frames: list) -> list[Event]:
        events: list[Event] = []
        append = events.append
        for frame in frames:
            opcode = frame.opcode
            if self.deflation is not None and (frame.rsv1 or (opcode == _CONTINUATION and self._inflating)):
                try:
                    event = self._inflate(frame)
                except ProtocolError as error:
                    self._fail(error)
                    append(ProtocolViolation(error))
                    break
                if event is not None:
                    append(event)
            elif opcode == _TEXT:
                if frame.fin:
                    append(Message(frame.payload, False))
                else:
                    self._fragments = [frame.payload]
                    self._fragmented_binary = False
            elif opcode == _BINARY:
                if frame.fin:
                    append(Message(frame.payload, True))
                else:
                    self._fragments = [frame.payload]
                    self._fragmented_binary = True
            elif opcode == _CONTINUATION:
                self._fragments.append(frame.payload)
                if frame.fin:
                    append(Message(b"".join(self._fragments), self._fragmented_binary))
                    self._fragments = []
            elif opcode == _PING:
                # Section 5.5.2: answer with a pong carrying the same payload.
                if self.state is State.OPEN:
                    self._send_frame(_PONG, frame.payload)
                append(Ping(frame.payload))
            elif opcode == _PONG:
                append(Pong(frame.payload))
            else:
                append(self._receive_close(frame.payload))
                break  # section 5.5.1: nothing after a close frame counts
        return events

    def _inflate(self, frame) -> Message | None:
        """A frame of a compressed message (RFC 7692): inflated as it comes, capped, UTF-8 checked last."""
        inflater = self.deflation.inflater
        if frame.opcode != _CONTINUATION:
            inflater.begin()
            self._fragments = []
            self._fragmented_binary = frame.opcode == _BINARY
            self._inflating = True
        self._fragments.append(inflater.feed(frame.payload, frame.fin))
        if not frame.fin:
            return None
        data = b"".join(self._fragments)
        self._fragments = []
        self._inflating = False
        binary = self._fragmented_binary
        if not binary and not validate_utf8(data):
            raise InvalidPayloadError("text message is not valid UTF-8")
        return Message(data, binary)

    def _receive_close(self, payload: bytes) -> CloseReceived:
        if payload:
            code = _CLOSE_CODE.unpack_from(payload)[0]
            reason = payload[_CLOSE_CODE.size :].decode("utf-8")
        else:
            code, reason = constants.CLOSE_NO_STATUS, ""
        if self.state is State.OPEN:
            # Section 5.5.1: echo the status code back once; 1005 means "none"
            # and must not go on the wire, so answer a bare close with 1000.
            echoed = constants.CLOSE_NORMAL if code == constants.CLOSE_NO_STATUS else code
            self._send_frame(constants.OP_CLOSE, _CLOSE_CODE.pack(echoed))
            self.close_sent = echoed
        self.close_received = code
        self.state = State.CLOSED
        self.close_code = code
        self.close_reason = reason
        self._fragments = []
        return CloseReceived(code, reason)

    def _fail(self, error: ProtocolError) -> None:
        """Section 7.1.7: fail the connection, telling the peer why when we still may."""
        self.error = error
        if self.state is State.OPEN:
            self._send_frame(constants.OP_CLOSE, _close_payload(error.close_code, _short_reason(error)))
            self.close_sent = error.close_code
        self.state = State.CLOSED
        self.close_code = error.close_code
        self.close_reason = str(error)
        self._fragments = []

    # --- output -----------------------------------------------------------

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        mask_key = os.urandom(constants.MASK_KEY_LENGTH) if self.client else None
        self._outgoing.append(encode_frame(opcode, payload, mask_key=mask_key))

    def _ensure_open(self) -> None:
        if self.state is not State.OPEN:
            code = constants.CLOSE_ABNORMAL if self.close_code is None else self.close_code
            raise ConnectionClosed(code, self.close_reason)

    def send_message(self, data: str | bytes | bytearray | memoryview, binary: bool = False) -> None:
        """Queue a message: text (str, or bytes that are UTF-8) or binary (compressed if negotiated)."""
        self._ensure_open()
        if binary:
            payload = data.encode("utf-8") if isinstance(data, str) else data
            opcode = constants.OP_BINARY
        else:
            payload = _utf8(data, "a text message")
            opcode = constants.OP_TEXT
        if self.deflation is not None:
            compressed = self.deflation.compress(bytes(payload))
            if compressed is not None:
                mask_key = os.urandom(constants.MASK_KEY_LENGTH) if self.client else None
                self._outgoing.append(encode_frame(opcode, compressed, mask_key=mask_key, rsv1=True))
                return
        self._send_frame(opcode, payload)

    def send_ping(self, payload: bytes = b"") -> None:
        """Queue a ping; the peer's pong arrives as a :class:`Pong` event."""
        self._ensure_open()
        self._send_frame(constants.OP_PING, self._control_payload(payload))

    def send_pong(self, payload: bytes = b"") -> None:
        """Queue an unsolicited pong (a one-way heartbeat, section 5.5.3)."""
        self._ensure_open()
        self._send_frame(constants.OP_PONG, self._control_payload(payload))

    @staticmethod
    def _control_payload(payload: bytes) -> bytes:
        if len(payload) > constants.MAX_CONTROL_PAYLOAD:
            raise ValueError(f"a control frame payload is at most {constants.MAX_CONTROL_PAYLOAD} bytes")
        return bytes(payload)

    def send_close(self, code: int = constants.CLOSE_NORMAL, reason: str | bytes = "") -> None:
        """Start the close handshake; the peer's close frame completes it.

        ``reason`` is text, or UTF-8 bytes as 0.6.0 accepted, of at most 123 bytes.

        Does nothing once a close has been sent or received: a connection is
        closed only once.
        """
        if self.state is not State.OPEN:
            return
        if not constants.is_valid_close_code(code):
            raise ValueError(f"{code} is not a close code that may be sent")
        payload = _close_payload(code, reason)
        self._send_frame(constants.OP_CLOSE, payload)
        self.close_sent = code
        self.state = State.CLOSING
        self.close_code = code
        self.close_reason = payload[_CLOSE_CODE.size :].decode("utf-8")

    def data_to_send(self) -> bytes:
        """Everything queued for the peer since the last call (b"" when nothing)."""
        if not self._outgoing:
            return b""
        data = b"".join(self._outgoing)
        self._outgoing = []
        return data
