"""RFC 6455 frames: encoding and an incremental, validating parser (pure Python).

This is the readable reference of the frame layer; ``ext/frames.pyx`` is its
compiled twin with the identical API and behaviour, held together by parity
tests. Everything here is sans-I/O: bytes in, frames out, no sockets.

The parser enforces every rule that is visible at frame level (RFC 6455,
section 5) and raises a :class:`~ws4redis.exceptions.ProtocolError` carrying
the close code the connection must be failed with. Message reassembly, pong
replies and the close handshake live one layer up, in ``ws4redis.protocol``.
"""

from __future__ import annotations

import struct

from ws4redis import constants
from ws4redis.constants import (
    FRAME_FIN,
    FRAME_LENGTH_16,
    FRAME_LENGTH_64,
    FRAME_LENGTH_BITS,
    FRAME_MASKED,
    FRAME_OPCODE_BITS,
    FRAME_RSV1,
    FRAME_RSV2,
    FRAME_RSV3,
    FRAME_RSV_BITS,
    KNOWN_OPCODES,
    MASK_KEY_LENGTH,
    MAX_LENGTH_16,
    MAX_LENGTH_64,
)
from ws4redis.exceptions import InvalidPayloadError, MessageTooBigError, ProtocolError
from ws4redis.pure.mask import mask, mask_inplace
from ws4redis.pure.utf8 import Utf8Validator
from ws4redis.pure.utf8 import validate_utf8 as is_utf8

__all__ = ["Frame", "FrameParser", "encode_frame"]

# Header layouts of section 5.2: two fixed bytes, then a 16-bit or a 64-bit
# extended payload length in network byte order.
_HEADER_16 = struct.Struct("!BBH")
_HEADER_64 = struct.Struct("!BBQ")
_UINT16 = struct.Struct("!H")
_UINT64 = struct.Struct("!Q")


class Frame:
    """One frame as it travels on the wire, with its payload already unmasked."""

    __slots__ = ("fin", "opcode", "payload", "rsv1", "rsv2", "rsv3")

    def __init__(
        self,
        opcode: int,
        payload: bytes,
        fin: bool = True,
        rsv1: bool = False,
        rsv2: bool = False,
        rsv3: bool = False,
    ) -> None:
        self.opcode = opcode
        self.payload = payload
        self.fin = fin
        self.rsv1 = rsv1
        self.rsv2 = rsv2
        self.rsv3 = rsv3

    def __eq__(self, other: object) -> bool:
        # Compare by attributes rather than by class so that a compiled frame
        # and a pure one carrying the same data are equal (parity tests).
        try:
            return (
                self.opcode == other.opcode  # type: ignore[attr-defined]
                and self.fin == other.fin  # type: ignore[attr-defined]
                and self.rsv1 == other.rsv1  # type: ignore[attr-defined]
                and self.rsv2 == other.rsv2  # type: ignore[attr-defined]
                and self.rsv3 == other.rsv3  # type: ignore[attr-defined]
                and self.payload == other.payload  # type: ignore[attr-defined]
            )
        except AttributeError:
            return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value

    def __repr__(self) -> str:
        payload = self.payload
        shown = repr(payload) if len(payload) <= 48 else f"{payload[:48]!r}...<{len(payload)} bytes>"
        rsv = "".join(f", rsv{i}=True" for i, bit in ((1, self.rsv1), (2, self.rsv2), (3, self.rsv3)) if bit)
        return f"Frame(opcode={self.opcode:#x}, payload={shown}, fin={bool(self.fin)}{rsv})"


def encode_frame(
    opcode: int,
    payload: bytes | bytearray | memoryview,
    fin: bool = True,
    mask_key: bytes | None = None,
    rsv1: bool = False,
    rsv2: bool = False,
    rsv3: bool = False,
) -> bytes:
    """Serialise one frame (section 5.2) with the shortest length encoding.

    Servers pass no ``mask_key``; clients must mask every frame with a fresh
    4-byte key (section 5.3). No protocol rule is enforced here on purpose:
    tests use this to craft the malformed frames the parser must reject.
    """
    if not 0 <= opcode <= FRAME_OPCODE_BITS:
        raise ValueError(f"opcode must be between 0 and {FRAME_OPCODE_BITS}, got {opcode}")
    first = opcode
    if fin:
        first |= FRAME_FIN
    if rsv1:
        first |= FRAME_RSV1
    if rsv2:
        first |= FRAME_RSV2
    if rsv3:
        first |= FRAME_RSV3
    # Bytes, not items: len() of a typed buffer (array('H'), a cast memoryview) counts items.
    if type(payload) is bytes or type(payload) is bytearray:
        length = len(payload)
    else:
        length = memoryview(payload).nbytes
    mask_bit = 0 if mask_key is None else FRAME_MASKED
    # Section 5.2: 7-bit length up to 125, 126 + 16-bit up to 65535, else
    # 127 + 64-bit with the most significant bit clear.
    if length <= constants.MAX_CONTROL_PAYLOAD:
        header = bytes((first, mask_bit | length))
    elif length <= MAX_LENGTH_16:
        header = _HEADER_16.pack(first, mask_bit | FRAME_LENGTH_16, length)
    elif length <= MAX_LENGTH_64:
        header = _HEADER_64.pack(first, mask_bit | FRAME_LENGTH_64, length)
    else:
        raise ValueError("payload too long for a websocket frame")
    if mask_key is None:
        return header + payload
    # mask() rejects a key that is not 4 bytes long with a ValueError.
    masked = mask(payload, mask_key)
    return header + bytes(mask_key) + masked


def _rotate(key: bytes, offset: int) -> bytes:
    """The mask key as seen from payload byte ``offset`` (section 5.3: byte i uses key[i % 4])."""
    phase = offset & 3
    return key[phase:] + key[:phase] if phase else key


class FrameParser:
    """Turn a byte stream into validated frames, whatever the chunking.

    ``feed`` may be given any split of the input and returns the frames that
    became complete. Memory stays bounded: besides the bytes of the current
    ``feed`` call, the parser never holds more than one frame header plus the
    payload of the frame being received, and a frame or message larger than
    ``max_message_size`` is refused as soon as its header is read, before any
    of its payload is buffered.

    When a rule is broken ``feed`` raises a ProtocolError whose ``close_code``
    says how to fail the connection; the error's ``frames`` attribute lists
    the frames completed by that call before the faulty one. The parser then
    stays failed: every later ``feed`` raises the same error (with no frames).
    """

    def __init__(
        self,
        max_message_size: int = constants.DEFAULT_MAX_MESSAGE_SIZE,
        require_mask: bool = True,
        max_fragments: int | None = None,
        validate_utf8: bool = True,
        allow_compressed: bool = False,
    ) -> None:
        if max_message_size <= 0:
            raise ValueError(f"max_message_size must be positive, got {max_message_size}")
        if max_fragments is None:
            max_fragments = constants.default_max_fragments(max_message_size)
        elif max_fragments <= 0:
            raise ValueError(f"max_fragments must be positive, got {max_fragments}")
        self._max_size = max_message_size
        self._max_fragments = max_fragments
        self._require_mask = bool(require_mask)
        self._validate = bool(validate_utf8)
        # permessage-deflate (RFC 7692) was negotiated: RSV1 marks a compressed message, whose
        # UTF-8 is checked after inflating, one layer up.
        self._allow_compressed = bool(allow_compressed)
        self._compressed = False  # the current frame starts a compressed message
        self._msg_compressed = False
        self._buf = bytearray()
        self._error: ProtocolError | None = None
        # The frame being received, once its header has been parsed.
        self._in_payload = False
        self._opcode = 0
        self._fin = True
        self._length = 0
        self._key: bytes | None = None
        self._done = 0  # payload bytes already unmasked in place and validated
        self._text = False  # the payload must be UTF-8 validated
        # The fragmented message in progress (section 5.4); opcode 0 means none.
        self._msg_opcode = 0
        self._msg_size = 0
        self._msg_fragments = 0
        # UTF-8 state of the current text message, shared by its fragments.
        self._utf8 = Utf8Validator()
        self._utf8_complete = True

    @property
    def buffered(self) -> int:
        """Bytes held between ``feed`` calls: a partial header or the current payload."""
        return len(self._buf)

    @property
    def max_message_size(self) -> int:
        return self._max_size

    @property
    def max_fragments(self) -> int:
        return self._max_fragments

    @property
    def in_message(self) -> bool:
        """Whether a fragmented message has started and awaits its final frame."""
        return self._msg_opcode != 0

    @property
    def error(self) -> ProtocolError | None:
        """The error that failed the parser, or None while it is healthy."""
        return self._error

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Add bytes from the peer; return every frame they complete, in order."""
        if self._error is not None:
            self._error.frames = []
            raise self._error.with_traceback(None)
        buf = self._buf
        buf += data
        frames: list[Frame] = []
        pos = 0
        try:
            while True:
                if not self._in_payload:
                    consumed = self._parse_header(buf, pos)
                    if not consumed:
                        break
                    pos += consumed
                length = self._length
                available = len(buf) - pos
                if available < length:
                    if self._text and available > self._done:
                        self._check_partial_text(buf, pos, available)
                    break
                frames.append(self._complete_frame(buf, pos))
                pos += length
        except ProtocolError as exc:
            exc.frames = frames
            self._error = exc
            self._buf = bytearray()
            raise
        if pos:
            del buf[:pos]
        return frames

    def _parse_header(self, buf: bytearray, pos: int) -> int:
        """Validate and record the header at ``pos``; return its size, or 0 if incomplete.

        The rules that need only the first two bytes are checked as soon as
        they arrive, so a bad frame fails before its extended length does.
        Parser state changes only once the whole header is present.
        """
        available = len(buf) - pos
        if available < 2:
            return 0
        first = buf[pos]
        second = buf[pos + 1]
        opcode = first & FRAME_OPCODE_BITS
        fin = bool(first & FRAME_FIN)
        masked = bool(second & FRAME_MASKED)
        length = second & FRAME_LENGTH_BITS

        # Section 5.2: RSV1-3 must be 0 unless an extension defining them was negotiated;
        # permessage-deflate defines RSV1, on the first frame of a data message only
        # (RFC 7692, section 6).
        compressed = False
        if first & FRAME_RSV_BITS:
            if not self._allow_compressed or first & (FRAME_RSV2 | FRAME_RSV3):
                raise ProtocolError("reserved bits set but no extension was negotiated")
            if opcode not in (constants.OP_TEXT, constants.OP_BINARY):
                raise ProtocolError("RSV1 set on a frame that does not start a data message")
            compressed = True
        # Section 5.2: opcodes 0x3-0x7 and 0xB-0xF are reserved.
        if opcode not in KNOWN_OPCODES:
            raise ProtocolError(f"reserved opcode {opcode:#x}")
        # Section 5.1: a client masks every frame, a server masks none, and the
        # receiving side fails the connection otherwise.
        if masked != self._require_mask:
            if self._require_mask:
                raise ProtocolError("unmasked frame from a client")
            raise ProtocolError("masked frame from a server")
        if opcode >= constants.OP_CLOSE:
            # Section 5.5: control frames are never fragmented and carry at most
            # 125 bytes (the extended length forms are therefore invalid too).
            if not fin:
                raise ProtocolError("fragmented control frame")
            if length > constants.MAX_CONTROL_PAYLOAD:
                raise ProtocolError("control frame payload longer than 125 bytes")
        elif opcode == constants.OP_CONTINUATION:
            # Section 5.4: a continuation frame only continues a started message.
            if not self._msg_opcode:
                raise ProtocolError("continuation frame without a message in progress")
        elif self._msg_opcode:
            # Section 5.4: fragments of one message are not interleaved with
            # another data message (only control frames may interleave).
            raise ProtocolError("new data frame while a fragmented message is in progress")

        size = 2
        if length == FRAME_LENGTH_16:
            size = 4
        elif length == FRAME_LENGTH_64:
            size = 10
        if masked:
            size += MASK_KEY_LENGTH
        if available < size:
            return 0
        # Section 5.2: the non-minimal length encodings are tolerated (be liberal
        # in what you accept); only the 64-bit form's top bit is forbidden.
        if length == FRAME_LENGTH_16:
            length = _UINT16.unpack_from(buf, pos + 2)[0]
        elif length == FRAME_LENGTH_64:
            length = _UINT64.unpack_from(buf, pos + 2)[0]
            if length > MAX_LENGTH_64:
                raise ProtocolError("64-bit payload length with the most significant bit set")

        text = False
        if opcode < constants.OP_CLOSE:
            if opcode == constants.OP_CONTINUATION:
                total = self._msg_size + length
                fragments = self._msg_fragments + 1
                text = self._msg_opcode == constants.OP_TEXT and not self._msg_compressed
            else:
                total = length
                fragments = 1
                text = opcode == constants.OP_TEXT and not compressed
            # Section 10.4: bound frames and messages. Refuse now, before any
            # of the payload is buffered.
            if total > self._max_size:
                raise MessageTooBigError(
                    f"message of {total} bytes or more exceeds the limit of {self._max_size} bytes"
                )
            if fragments > self._max_fragments:
                raise MessageTooBigError(f"message split into more than {self._max_fragments} fragments")
            text = text and self._validate
            if text and opcode == constants.OP_TEXT:
                self._utf8.reset()
                self._utf8_complete = True
            if fin:
                self._msg_opcode = 0
                self._msg_size = 0
                self._msg_fragments = 0
                self._msg_compressed = False
            else:
                if opcode != constants.OP_CONTINUATION:
                    self._msg_opcode = opcode
                    self._msg_compressed = compressed
                self._msg_size = total
                self._msg_fragments = fragments

        self._opcode = opcode
        self._fin = fin
        self._length = length
        self._key = bytes(buf[pos + size - MASK_KEY_LENGTH : pos + size]) if masked else None
        self._done = 0
        self._text = text
        self._compressed = compressed
        self._in_payload = True
        return size

    def _check_partial_text(self, buf: bytearray, pos: int, available: int) -> None:
        """Unmask and validate the text received so far, to fail fast on bad UTF-8.

        The bytes are unmasked in place so completing the frame later only has
        to deal with the rest; the Utf8Validator keeps its state across calls.
        """
        start = pos + self._done
        end = pos + available
        if self._key is not None:
            mask_inplace(memoryview(buf)[start:end], _rotate(self._key, self._done))
        self._validate_text(memoryview(buf)[start:end])
        self._done = available

    def _validate_text(self, chunk: bytes | memoryview) -> None:
        valid, complete, _, _ = self._utf8.validate(chunk)
        if not valid:
            raise InvalidPayloadError("text message is not valid UTF-8")
        self._utf8_complete = complete

    def _complete_frame(self, buf: bytearray, pos: int) -> Frame:
        """Build the frame whose whole payload sits at ``buf[pos:pos + length]``."""
        opcode = self._opcode
        length = self._length
        end = pos + length
        key = self._key
        done = self._done
        self._in_payload = False
        if done == 0:
            if key is None:
                payload = bytes(memoryview(buf)[pos:end])
            else:
                # A bytearray slice is the fastest input for mask() at every size.
                payload = mask(buf[pos:end], key)
            if self._text:
                if self._fin and opcode == constants.OP_TEXT:
                    # A whole text message in one frame: one-shot validation.
                    if not is_utf8(payload):
                        raise InvalidPayloadError("text message is not valid UTF-8")
                    self._utf8_complete = True
                elif length:
                    self._validate_text(payload)
        else:
            # Part of this payload was unmasked and validated in place already.
            if key is not None and done < length:
                mask_inplace(memoryview(buf)[pos + done : end], _rotate(key, done))
            if self._text and done < length:
                self._validate_text(memoryview(buf)[pos + done : end])
            payload = bytes(memoryview(buf)[pos:end])
        if self._text and self._fin and not self._utf8_complete:
            # Section 8.1: the whole message must be UTF-8, so it cannot end
            # in the middle of a code point.
            raise InvalidPayloadError("text message ends in the middle of a UTF-8 sequence")
        if opcode == constants.OP_CLOSE:
            self._check_close_payload(payload)
        return Frame(opcode, payload, self._fin, self._compressed)

    def _check_close_payload(self, payload: bytes) -> None:
        """Section 5.5.1: an optional 2-byte status code, then an optional UTF-8 reason."""
        if not payload:
            return
        if len(payload) == 1:
            raise ProtocolError("close frame payload of 1 byte: a status code takes 2")
        code = (payload[0] << 8) | payload[1]
        if not constants.is_valid_close_code(code):
            raise ProtocolError(f"invalid close code {code}")
        if self._validate and len(payload) > 2 and not is_utf8(payload[2:]):
            raise InvalidPayloadError("close reason is not valid UTF-8")
