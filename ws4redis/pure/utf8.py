"""UTF-8 validation for text frames (RFC 6455, section 8.1), pure Python.

The happy path leans on CPython's own decoder, which is written in C and far
faster than any byte loop in Python. Only when it reports an error, or when a
chunk ends inside a sequence, does an exact byte-level state machine run, and
then only over a few bytes, to find the precise first offending byte. That
index is what an Autobahn-style validator reports and what lets a server fail
a fragmented message as soon as the bad byte arrives (fail fast).

``ext/utf8.pyx`` is the compiled twin with the same API and semantics.
"""

from __future__ import annotations

from codecs import utf_8_decode

from ws4redis.pure.mask import BytesLike

# The byte-level checker tracks how many continuation bytes a sequence still
# needs and the range allowed for the next one. Every UTF-8 rule (overlong
# forms, surrogates, the U+10FFFF ceiling) is a narrower range for the first
# continuation byte, as in the table of RFC 3629, section 4.
_CONTINUATION = (0x80, 0xBF)


def _lead(byte: int) -> tuple[int, int, int] | None:
    """(continuation bytes needed, range of the first one) after a lead byte, None if it cannot lead."""
    if 0xC2 <= byte <= 0xDF:
        return (1, *_CONTINUATION)
    if byte == 0xE0:
        return (2, 0xA0, 0xBF)  # no overlong 3-byte forms
    if byte == 0xED:
        return (2, 0x80, 0x9F)  # no surrogates U+D800..U+DFFF
    if 0xE1 <= byte <= 0xEF:
        return (2, *_CONTINUATION)
    if byte == 0xF0:
        return (3, 0x90, 0xBF)  # no overlong 4-byte forms
    if 0xF1 <= byte <= 0xF3:
        return (3, *_CONTINUATION)
    if byte == 0xF4:
        return (3, 0x80, 0x8F)  # nothing above U+10FFFF
    return None


def _first_invalid(data: bytes) -> int:
    """Index of the first byte of ``data`` that cannot belong to valid UTF-8, or -1.

    ``data`` must start on a sequence boundary; running out of bytes in the
    middle of a sequence is not an error here.
    """
    need, low, high = 0, *_CONTINUATION
    for index, byte in enumerate(data):
        if need:
            if not low <= byte <= high:
                return index
            need, low, high = need - 1, *_CONTINUATION
        elif byte >= 0x80:
            lead = _lead(byte)
            if lead is None:
                return index
            need, low, high = lead
    return -1


def _as_bytes(data: BytesLike) -> bytes | bytearray:
    """``data`` itself when it is bytes or a bytearray, else a bytes copy of its buffer."""
    return data if type(data) is bytes or type(data) is bytearray else memoryview(data).tobytes()


def validate_utf8(data: BytesLike) -> bool:
    """Whether ``data`` (any buffer) is complete, well-formed UTF-8."""
    try:
        utf_8_decode(_as_bytes(data), "strict", True)
    except UnicodeDecodeError:
        return False
    return True


class Utf8Validator:
    """Incremental UTF-8 validator with the interface of Autobahn's and wsaccel's.

    ``validate(chunk)`` returns ``(valid, ends_on_codepoint, current_index,
    total_index)``. On success ``current_index == len(chunk)`` and
    ``total_index`` counts every byte seen so far; ``ends_on_codepoint`` is
    False while a multi-byte sequence is still incomplete. On failure
    ``current_index`` is the index, in this chunk, of the first byte that
    cannot belong to valid UTF-8 and ``total_index`` its index in the whole
    stream. A failed validator stays failed (``(False, False, 0, total)``,
    even for an empty chunk) until ``reset()``.
    """

    __slots__ = ("_pending", "_total", "_failed")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget everything: start validating a new stream."""
        self._pending = b""  # bytes of an incomplete sequence held from the last chunk
        self._total = 0
        self._failed = False

    def validate(self, data: BytesLike) -> tuple[bool, bool, int, int]:
        """Validate the next chunk of the stream; see the class docstring for the result."""
        if self._failed:
            return False, False, 0, self._total
        chunk = _as_bytes(data)
        size = len(chunk)
        if not self._pending and chunk.isascii():
            self._total += size
            return True, True, size, self._total
        held = len(self._pending)
        stream = self._pending + chunk if held else chunk
        try:
            _, consumed = utf_8_decode(stream, "strict", False)
        except UnicodeDecodeError as error:
            # Everything before error.start decoded; the offending sequence starts there.
            bad = _first_invalid(stream[error.start : error.start + 4])
            return self._fail(error.start + bad - held)
        # CPython holds back a truncated surrogate (ED A0..BF) without an
        # error, so the incomplete tail is checked exactly here.
        tail = stream[consumed:]
        if tail:
            bad = _first_invalid(tail)
            if bad >= 0:
                return self._fail(consumed + bad - held)
        self._pending = tail
        self._total += size
        return True, not tail, size, self._total

    def _fail(self, index: int) -> tuple[bool, bool, int, int]:
        self._failed = True
        self._pending = b""
        self._total += index
        return False, False, index, self._total
