"""RFC 6455 payload masking (section 5.3), pure Python.

Masking XORs the payload with a 4-byte key repeated over its length. Doing it
byte by byte in Python costs about 100 ns a byte, so this version turns the
whole payload and the repeated key into two big integers and XORs those: one
C-level operation whatever the size. ``ext/mask.pyx`` is the compiled twin
with the same API, errors and semantics.
"""

from __future__ import annotations

import operator
import sys

from ws4redis.constants import MASK_KEY_LENGTH

BytesLike = bytes | bytearray | memoryview


def _key_bytes(key: BytesLike) -> bytes:
    """The mask key as exactly four bytes, or a ValueError naming the problem."""
    raw = key if type(key) is bytes else memoryview(key).tobytes()
    if len(raw) != MASK_KEY_LENGTH:
        raise ValueError(f"a websocket mask key is exactly {MASK_KEY_LENGTH} bytes, got {len(raw)}")
    return raw


def _xor(data: BytesLike, key: bytes, length: int) -> bytes:
    """``data`` XOR the repeated ``key``; ``length`` is the byte length of ``data``."""
    repeated = (key * ((length >> 2) + 1))[:length]
    value = int.from_bytes(data, "little") ^ int.from_bytes(repeated, "little")
    return value.to_bytes(length, "little")


def mask(data: BytesLike, key: BytesLike) -> bytes:
    """Return ``data`` masked (or unmasked: the operation is its own inverse) with ``key``.

    ``data`` and ``key`` may be any buffer (bytes, bytearray, memoryview, even a
    non-contiguous one, which is copied). ``key`` must be 4 bytes long.
    """
    raw_key = _key_bytes(key)
    if type(data) is bytes or type(data) is bytearray:
        length = len(data)
    else:
        view = memoryview(data)
        length = view.nbytes
        data = view if view.c_contiguous else view.tobytes()
    if not length:
        return b""
    return _xor(data, raw_key, length)


def mask_inplace(buf: BytesLike, key: BytesLike, offset: int = 0) -> None:
    """Unmask ``buf[offset:]`` in place, the key's first byte applying to ``buf[offset]``.

    This is what a receive buffer needs: the header sits before ``offset`` and
    the payload after it is turned into plain text without a copy. ``buf``
    must be writable and C-contiguous (a bytearray or a writable memoryview);
    anything else raises TypeError, as in-place work on a copy would silently
    do nothing. ``offset`` must lie in ``0..len(buf)`` (ValueError otherwise;
    OverflowError when it does not even fit a C ``ssize_t``, as in the
    compiled twin).
    """
    offset = operator.index(offset)
    if not -sys.maxsize - 1 <= offset <= sys.maxsize:
        raise OverflowError(f"mask_inplace offset {offset} does not fit a C ssize_t")
    raw_key = _key_bytes(key)
    view = memoryview(buf)
    if view.readonly or not view.c_contiguous:
        raise TypeError(
            f"mask_inplace needs a writable C-contiguous buffer (bytearray or memoryview), "
            f"got {type(buf).__name__}"
        )
    view = view.cast("B")
    length = len(view)
    if offset < 0 or offset > length:
        raise ValueError(f"mask_inplace offset {offset} is outside the buffer of {length} bytes")
    if offset == length:
        return
    target = view[offset:]
    target[:] = _xor(target, raw_key, length - offset)
