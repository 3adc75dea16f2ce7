# cython: language_level=3
"""RFC 6455 frames: encoding and the validating parser, compiled twin of ws4redis.pure.frames.

The pure module is the readable reference; this one mirrors it rule for rule
(same checks in the same order, same exceptions, same messages, same state
after every ``feed``), which the parity tests verify on random and mutated
streams. What changes is where the bytes go:

- a ``feed`` that starts on a frame boundary parses straight from the
  caller's buffer, and only an incomplete tail is copied into the parser's own
  buffer;
- a payload is unmasked while it is copied into its final bytes object, and
  UTF-8 is checked there, with the C cores shared with the mask and utf8
  modules (mask_core.h, utf8_core.h);
- frames are created without calling ``__init__`` and from a free list.

Protocol numbers and the header bit layout come from ws4redis.constants at
import time; nothing is restated here.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport uint64_t
from libc.stdlib cimport free, realloc
from libc.string cimport memcpy, memmove

from wscore cimport (
    WS_MASK_KEY_LENGTH,
    WS_UTF8_ACCEPT_BITS,
    PyBuffer_Release,
    PyBUF_SIMPLE,
    PyErr_Clear,
    read_mask_key,
    ws_get_buffer,
    ws_mask,
    ws_utf8_accepting,
    ws_utf8_init,
    ws_utf8_rejected,
    ws_utf8_scan,
    ws_utf8_valid,
)

from ws4redis import constants
from ws4redis.exceptions import InvalidPayloadError, MessageTooBigError, ProtocolError

__all__ = ["Frame", "FrameParser", "encode_frame"]

ws_utf8_init()

# Header bit layout (section 5.2).
cdef unsigned char FIN = constants.FRAME_FIN
cdef unsigned char RSV1 = constants.FRAME_RSV1
cdef unsigned char RSV2 = constants.FRAME_RSV2
cdef unsigned char RSV3 = constants.FRAME_RSV3
cdef unsigned char RSV_BITS = constants.FRAME_RSV_BITS
cdef unsigned char OPCODE_BITS = constants.FRAME_OPCODE_BITS
cdef unsigned char MASKED = constants.FRAME_MASKED
cdef unsigned char LENGTH_BITS = constants.FRAME_LENGTH_BITS
cdef unsigned char LENGTH_16 = constants.FRAME_LENGTH_16
cdef unsigned char LENGTH_64 = constants.FRAME_LENGTH_64
cdef Py_ssize_t MAX_LENGTH_16 = constants.MAX_LENGTH_16
cdef uint64_t MAX_LENGTH_64 = constants.MAX_LENGTH_64

# Opcodes and limits.
cdef int OP_CONTINUATION = constants.OP_CONTINUATION
cdef int OP_TEXT = constants.OP_TEXT
cdef int OP_BINARY = constants.OP_BINARY
cdef int OP_CLOSE = constants.OP_CLOSE
cdef Py_ssize_t MAX_CONTROL_PAYLOAD = constants.MAX_CONTROL_PAYLOAD
cdef uint64_t UNLIMITED = 0xFFFFFFFFFFFFFFFF
# Bit n set when opcode n is defined.
cdef unsigned int KNOWN_OPCODES = sum(1 << opcode for opcode in constants.KNOWN_OPCODES)
# Python objects handed out in frames, created once.
cdef tuple OPCODES = tuple(range(OPCODE_BITS + 1))
is_valid_close_code = constants.is_valid_close_code


@cython.freelist(64)
cdef class Frame:
    """One frame as it travels on the wire, with its payload already unmasked."""

    cdef public object fin, opcode, payload, rsv1, rsv2, rsv3

    def __init__(self, opcode, payload, fin=True, rsv1=False, rsv2=False, rsv3=False):
        self.opcode = opcode
        self.payload = payload
        self.fin = fin
        self.rsv1 = rsv1
        self.rsv2 = rsv2
        self.rsv3 = rsv3

    def __eq__(self, other):
        # Compare by attributes rather than by class so that a compiled frame
        # and a pure one carrying the same data are equal (parity tests).
        try:
            return (
                self.opcode == other.opcode
                and self.fin == other.fin
                and self.rsv1 == other.rsv1
                and self.rsv2 == other.rsv2
                and self.rsv3 == other.rsv3
                and self.payload == other.payload
            )
        except AttributeError:
            return NotImplemented

    def __repr__(self):
        payload = self.payload
        shown = repr(payload) if len(payload) <= 48 else f"{payload[:48]!r}...<{len(payload)} bytes>"
        rsv = "".join(f", rsv{i}=True" for i, bit in ((1, self.rsv1), (2, self.rsv2), (3, self.rsv3)) if bit)
        return f"Frame(opcode={self.opcode:#x}, payload={shown}, fin={bool(self.fin)}{rsv})"


cdef inline Frame new_frame(int opcode, bytes payload, bint fin, bint rsv1):
    """A parsed frame, built without the argument parsing of ``Frame(...)``."""
    cdef Frame frame = Frame.__new__(Frame)
    frame.opcode = OPCODES[opcode]
    frame.payload = payload
    frame.fin = True if fin else False
    frame.rsv1 = True if rsv1 else False
    frame.rsv2 = False
    frame.rsv3 = False
    return frame


cdef inline Py_ssize_t header_size(uint64_t length, bint masked):
    """Bytes of the shortest header for ``length`` (section 5.2): 2, 4 or 10, plus the mask key."""
    cdef Py_ssize_t size = 2
    if length > <uint64_t>MAX_CONTROL_PAYLOAD:
        size = 4 if length <= <uint64_t>MAX_LENGTH_16 else 10
    return size + (WS_MASK_KEY_LENGTH if masked else 0)


def encode_frame(opcode, payload, fin=True, mask_key=None, rsv1=False, rsv2=False, rsv3=False) -> bytes:
    """Serialise one frame (section 5.2) with the shortest length encoding.

    Servers pass no ``mask_key``; clients must mask every frame with a fresh
    4-byte key (section 5.3). No protocol rule is enforced here on purpose:
    tests use this to craft the malformed frames the parser must reject.
    """
    cdef Py_buffer view
    cdef const unsigned char *src
    cdef Py_ssize_t length, size, i
    cdef unsigned char key[WS_MASK_KEY_LENGTH]
    cdef unsigned char *out
    cdef unsigned char first
    cdef bint masked = mask_key is not None
    cdef bint have_view = False
    if not 0 <= opcode <= OPCODE_BITS:
        raise ValueError(f"opcode must be between 0 and {OPCODE_BITS}, got {opcode}")
    first = <unsigned char>opcode
    if fin:
        first |= FIN
    if rsv1:
        first |= RSV1
    if rsv2:
        first |= RSV2
    if rsv3:
        first |= RSV3
    if PyBytes_CheckExact(payload):
        src = <const unsigned char *>PyBytes_AS_STRING(payload)
        length = PyBytes_GET_SIZE(payload)
    else:
        if ws_get_buffer(payload, &view, PyBUF_SIMPLE) != 0:
            PyErr_Clear()
            raise TypeError(f"can't concat {type(payload).__name__} to bytes")
        have_view = True
        src = <const unsigned char *>view.buf
        length = view.len
    try:
        if masked:
            read_mask_key(mask_key, key)
        size = header_size(<uint64_t>length, masked)
        result = PyBytes_FromStringAndSize(NULL, size + length)
        out = <unsigned char *>PyBytes_AS_STRING(result)
        out[0] = first
        if length <= MAX_CONTROL_PAYLOAD:
            out[1] = <unsigned char>length
        elif length <= MAX_LENGTH_16:
            out[1] = LENGTH_16
            out[2] = <unsigned char>(length >> 8)
            out[3] = <unsigned char>length
        else:
            out[1] = LENGTH_64
            for i in range(8):
                out[2 + i] = <unsigned char>((<uint64_t>length) >> (56 - 8 * i))
        if masked:
            out[1] |= MASKED
            memcpy(out + size - WS_MASK_KEY_LENGTH, key, WS_MASK_KEY_LENGTH)
            ws_mask(out + size, src, <size_t>length, key, 0)
        else:
            memcpy(out + size, src, <size_t>length)
    finally:
        if have_view:
            PyBuffer_Release(&view)
    return result


cdef class FrameParser:
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

    # Configuration: the Python values (for properties and messages) and
    # their C forms (integers, so a float limit compares the same way).
    cdef object _max_size_value, _max_fragments_value
    cdef uint64_t _max_size, _max_fragments
    cdef bint _require_mask, _validate
    # permessage-deflate (RFC 7692) was negotiated: RSV1 marks a compressed message, whose
    # UTF-8 is checked after inflating, one layer up.
    cdef bint _allow_compressed, _compressed, _msg_compressed
    # Bytes held between feed calls: a partial header or the current payload.
    cdef unsigned char *_buf
    cdef Py_ssize_t _buf_len, _buf_cap
    cdef object _error
    # The frame being received, once its header has been parsed.
    cdef bint _in_payload, _fin, _masked, _text
    cdef int _opcode
    cdef uint64_t _length, _done
    cdef unsigned char _key[WS_MASK_KEY_LENGTH]
    # The fragmented message in progress (section 5.4); opcode 0 means none.
    cdef int _msg_opcode
    cdef uint64_t _msg_size, _msg_fragments
    # UTF-8 state of the current text message, shared by its fragments.
    cdef uint64_t _utf8
    cdef bint _utf8_complete

    def __init__(
        self,
        max_message_size=constants.DEFAULT_MAX_MESSAGE_SIZE,
        require_mask=True,
        max_fragments=None,
        validate_utf8=True,
        allow_compressed=False,
    ):
        if max_message_size <= 0:
            raise ValueError(f"max_message_size must be positive, got {max_message_size}")
        if max_fragments is None:
            max_fragments = constants.default_max_fragments(max_message_size)
        elif max_fragments <= 0:
            raise ValueError(f"max_fragments must be positive, got {max_fragments}")
        self._max_size_value = max_message_size
        self._max_fragments_value = max_fragments
        self._max_size = min(int(max_message_size), UNLIMITED)
        self._max_fragments = min(int(max_fragments), UNLIMITED)
        self._require_mask = bool(require_mask)
        self._validate = bool(validate_utf8)
        self._allow_compressed = bool(allow_compressed)
        self._compressed = False
        self._msg_compressed = False
        self._buf_len = 0
        self._error = None
        self._in_payload = False
        self._opcode = 0
        self._fin = True
        self._masked = False
        self._length = 0
        self._done = 0
        self._text = False
        self._msg_opcode = 0
        self._msg_size = 0
        self._msg_fragments = 0
        self._utf8 = WS_UTF8_ACCEPT_BITS
        self._utf8_complete = True

    def __dealloc__(self):
        free(self._buf)

    @property
    def buffered(self) -> int:
        """Bytes held between ``feed`` calls: a partial header or the current payload."""
        return self._buf_len

    @property
    def max_message_size(self):
        return self._max_size_value

    @property
    def max_fragments(self):
        return self._max_fragments_value

    @property
    def in_message(self) -> bool:
        """Whether a fragmented message has started and awaits its final frame."""
        return self._msg_opcode != 0

    @property
    def error(self):
        """The error that failed the parser, or None while it is healthy."""
        return self._error

    def feed(self, data) -> list:
        """Add bytes from the peer; return every frame they complete, in order."""
        cdef Py_buffer view
        cdef bint have_view = False
        cdef const unsigned char *src
        cdef Py_ssize_t size
        if self._error is not None:
            self._error.frames = []
            raise self._error.with_traceback(None)
        if PyBytes_CheckExact(data):
            src = <const unsigned char *>PyBytes_AS_STRING(data)
            size = PyBytes_GET_SIZE(data)
        else:
            if ws_get_buffer(data, &view, PyBUF_SIMPLE) != 0:
                PyErr_Clear()
                raise TypeError(f"can't concat {type(data).__name__} to bytearray")
            have_view = True
            src = <const unsigned char *>view.buf
            size = view.len
        frames = []
        try:
            if self._buf_len:
                self._append(src, size)
                self._parse(self._buf, self._buf_len, True, frames)
            else:
                self._parse(src, size, False, frames)
        except ProtocolError as exc:
            exc.frames = frames
            self._error = exc
            self._buf_len = 0
            raise
        finally:
            if have_view:
                PyBuffer_Release(&view)
        return frames

    cdef int _append(self, const unsigned char *src, Py_ssize_t size) except -1:
        cdef Py_ssize_t needed = self._buf_len + size
        cdef Py_ssize_t capacity
        cdef unsigned char *grown
        if needed > self._buf_cap:
            capacity = max(needed, 2 * self._buf_cap, 256)
            grown = <unsigned char *>realloc(self._buf, <size_t>capacity)
            if grown is NULL:
                raise MemoryError()
            self._buf = grown
            self._buf_cap = capacity
        memcpy(self._buf + self._buf_len, src, <size_t>size)
        self._buf_len = needed
        return 0

    cdef int _parse(self, const unsigned char *p, Py_ssize_t n, bint own, list frames) except -1:
        """Parse frames from ``p[0:n]``, ``own`` telling whether that is the parser's buffer."""
        cdef Py_ssize_t pos = 0
        cdef Py_ssize_t consumed, available, rest
        while True:
            if not self._in_payload:
                consumed = self._parse_header(p + pos, n - pos)
                if not consumed:
                    break
                pos += consumed
            available = n - pos
            if <uint64_t>available < self._length:
                break
            frames.append(self._complete_frame(p + pos))
            pos += <Py_ssize_t>self._length
        # Keep the incomplete tail, then check the text received so far.
        rest = n - pos
        if own:
            if pos and rest:
                memmove(self._buf, self._buf + pos, <size_t>rest)
            self._buf_len = rest
        else:
            self._buf_len = 0
            if rest:
                self._append(p + pos, rest)
        if self._in_payload and self._text and <uint64_t>rest > self._done:
            self._check_partial_text(<uint64_t>rest)
        return 0

    cdef Py_ssize_t _parse_header(self, const unsigned char *p, Py_ssize_t available) except -1:
        """Validate and record the header at ``p``; return its size, or 0 if incomplete.

        The rules that need only the first two bytes are checked as soon as
        they arrive, so a bad frame fails before its extended length does.
        Parser state changes only once the whole header is present.
        """
        cdef unsigned char first, second
        cdef int opcode
        cdef bint fin, masked, text, compressed
        cdef uint64_t length, total, fragments
        cdef Py_ssize_t size, i
        if available < 2:
            return 0
        first = p[0]
        second = p[1]
        opcode = first & OPCODE_BITS
        fin = (first & FIN) != 0
        masked = (second & MASKED) != 0
        length = second & LENGTH_BITS

        compressed = False
        if first & RSV_BITS:
            if not self._allow_compressed or first & (RSV2 | RSV3):
                raise ProtocolError("reserved bits set but no extension was negotiated")
            if opcode != OP_TEXT and opcode != OP_BINARY:
                raise ProtocolError("RSV1 set on a frame that does not start a data message")
            compressed = True
        if not (KNOWN_OPCODES >> opcode) & 1:
            raise ProtocolError(f"reserved opcode {opcode:#x}")
        if masked != self._require_mask:
            if self._require_mask:
                raise ProtocolError("unmasked frame from a client")
            raise ProtocolError("masked frame from a server")
        if opcode >= OP_CLOSE:
            if not fin:
                raise ProtocolError("fragmented control frame")
            if length > <uint64_t>MAX_CONTROL_PAYLOAD:
                raise ProtocolError(f"control frame payload longer than {MAX_CONTROL_PAYLOAD} bytes")
        elif opcode == OP_CONTINUATION:
            if not self._msg_opcode:
                raise ProtocolError("continuation frame without a message in progress")
        elif self._msg_opcode:
            raise ProtocolError("new data frame while a fragmented message is in progress")

        size = 2
        if length == LENGTH_16:
            size = 4
        elif length == LENGTH_64:
            size = 10
        if masked:
            size += WS_MASK_KEY_LENGTH
        if available < size:
            return 0
        if length == LENGTH_16:
            length = (<uint64_t>p[2] << 8) | p[3]
        elif length == LENGTH_64:
            length = 0
            for i in range(2, 10):
                length = (length << 8) | p[i]
            if length > MAX_LENGTH_64:
                raise ProtocolError("64-bit payload length with the most significant bit set")

        text = False
        if opcode < OP_CLOSE:
            if opcode == OP_CONTINUATION:
                fragments = self._msg_fragments + 1
                text = self._msg_opcode == OP_TEXT and not self._msg_compressed
                if length > UNLIMITED - self._msg_size:
                    total = UNLIMITED  # beyond any limit this parser can hold
                else:
                    total = self._msg_size + length
            else:
                total = length
                fragments = 1
                text = opcode == OP_TEXT and not compressed
            if total > self._max_size:
                if opcode == OP_CONTINUATION:
                    shown = self._msg_size + <object>length
                else:
                    shown = length
                raise MessageTooBigError(
                    f"message of {shown} bytes or more exceeds the limit of {self._max_size_value} bytes"
                )
            if fragments > self._max_fragments:
                raise MessageTooBigError(
                    f"message split into more than {self._max_fragments_value} fragments"
                )
            text = text and self._validate
            if text and opcode == OP_TEXT:
                self._utf8 = WS_UTF8_ACCEPT_BITS
                self._utf8_complete = True
            if fin:
                self._msg_opcode = 0
                self._msg_size = 0
                self._msg_fragments = 0
                self._msg_compressed = False
            else:
                if opcode != OP_CONTINUATION:
                    self._msg_opcode = opcode
                    self._msg_compressed = compressed
                self._msg_size = total
                self._msg_fragments = fragments

        self._opcode = opcode
        self._fin = fin
        self._length = length
        self._masked = masked
        if masked:
            memcpy(self._key, p + size - WS_MASK_KEY_LENGTH, WS_MASK_KEY_LENGTH)
        self._done = 0
        self._text = text
        self._compressed = compressed
        self._in_payload = True
        return size

    cdef int _check_partial_text(self, uint64_t available) except -1:
        """Unmask and validate the text received so far, to fail fast on bad UTF-8.

        The bytes are unmasked in place in the parser's buffer, so completing
        the frame later only has to deal with the rest.
        """
        cdef unsigned char *start = self._buf + self._done
        cdef size_t count = <size_t>(available - self._done)
        if self._masked:
            ws_mask(start, start, count, self._key, <size_t>self._done)
        self._validate_text(start, count)
        self._done = available
        return 0

    cdef int _validate_text(self, const unsigned char *p, size_t n) except -1:
        ws_utf8_scan(&self._utf8, p, n)
        if ws_utf8_rejected(self._utf8):
            raise InvalidPayloadError("text message is not valid UTF-8")
        self._utf8_complete = ws_utf8_accepting(self._utf8)
        return 0

    cdef Frame _complete_frame(self, const unsigned char *p):
        """Build the frame whose whole payload sits at ``p[0:length]``.

        With ``done`` bytes already unmasked and validated, ``p`` is the
        parser's own (writable) buffer.
        """
        cdef int opcode = self._opcode
        cdef size_t length = <size_t>self._length
        cdef size_t done = <size_t>self._done
        cdef unsigned char *own
        cdef bytes payload
        cdef const unsigned char *text_start
        self._in_payload = False
        if done == 0:
            if self._masked:
                payload = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>length)
                ws_mask(<unsigned char *>PyBytes_AS_STRING(payload), p, length, self._key, 0)
            else:
                payload = PyBytes_FromStringAndSize(<const char *>p, <Py_ssize_t>length)
            if self._text:
                text_start = <const unsigned char *>PyBytes_AS_STRING(payload)
                if self._fin and opcode == OP_TEXT:
                    if not ws_utf8_valid(text_start, length):
                        raise InvalidPayloadError("text message is not valid UTF-8")
                    self._utf8_complete = True
                elif length:
                    self._validate_text(text_start, length)
        else:
            own = <unsigned char *>p
            if self._masked and done < length:
                ws_mask(own + done, own + done, length - done, self._key, done)
            if self._text and done < length:
                self._validate_text(own + done, length - done)
            payload = PyBytes_FromStringAndSize(<const char *>p, <Py_ssize_t>length)
        if self._text and self._fin and not self._utf8_complete:
            raise InvalidPayloadError("text message ends in the middle of a UTF-8 sequence")
        if opcode == OP_CLOSE:
            self._check_close_payload(payload)
        return new_frame(opcode, payload, self._fin, self._compressed)

    cdef int _check_close_payload(self, bytes payload) except -1:
        """Section 5.5.1: an optional 2-byte status code, then an optional UTF-8 reason."""
        cdef Py_ssize_t length = PyBytes_GET_SIZE(payload)
        cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(payload)
        cdef int code
        if not length:
            return 0
        if length == 1:
            raise ProtocolError("close frame payload of 1 byte: a status code takes 2")
        code = (p[0] << 8) | p[1]
        if not is_valid_close_code(code):
            raise ProtocolError(f"invalid close code {code}")
        if self._validate and length > 2 and not ws_utf8_valid(p + 2, <size_t>(length - 2)):
            raise InvalidPayloadError("close reason is not valid UTF-8")
        return 0
