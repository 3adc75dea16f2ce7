# cython: language_level=3
"""RFC 6455 payload masking (section 5.3), compiled twin of ws4redis.pure.mask.

Same API, same errors. The loop itself is in mask_core.h (16-byte vectors);
this module keeps the per-call cost low: exact bytes and bytearray objects are
read directly, without the buffer protocol, and the result is written straight
into a new bytes object.
"""

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_CheckExact, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.string cimport memcpy

from wscore cimport (
    PyBUF_SIMPLE,
    PyBUF_WRITABLE,
    PyBuffer_Release,
    PyErr_Clear,
    PyObject_CheckBuffer,
    WS_MASK_KEY_LENGTH,
    acquire_read,
    read_mask_key,
    ws_get_buffer,
    ws_mask,
)

from ws4redis import constants

if constants.MASK_KEY_LENGTH != WS_MASK_KEY_LENGTH:
    raise ImportError(
        f"ws4redis._speedups_mask was built for {WS_MASK_KEY_LENGTH}-byte mask keys, "
        f"constants.MASK_KEY_LENGTH is {constants.MASK_KEY_LENGTH}: rebuild the extensions"
    )


cdef inline int load_key(object key, unsigned char *out) except -1:
    if PyBytes_CheckExact(key) and PyBytes_GET_SIZE(key) == WS_MASK_KEY_LENGTH:
        memcpy(out, PyBytes_AS_STRING(key), WS_MASK_KEY_LENGTH)
        return 0
    return read_mask_key(key, out)


def mask(data, key) -> bytes:
    """Return ``data`` masked (or unmasked: the operation is its own inverse) with ``key``.

    ``data`` and ``key`` may be any buffer (bytes, bytearray, memoryview, even a
    non-contiguous one, which is copied). ``key`` must be 4 bytes long.
    """
    cdef unsigned char k[WS_MASK_KEY_LENGTH]
    cdef const unsigned char *src
    cdef Py_ssize_t n
    cdef Py_buffer view
    load_key(key, k)
    if PyBytes_CheckExact(data):
        src = <const unsigned char *>PyBytes_AS_STRING(data)
        n = PyBytes_GET_SIZE(data)
    elif PyByteArray_CheckExact(data):
        src = <const unsigned char *>PyByteArray_AS_STRING(data)
        n = PyByteArray_GET_SIZE(data)
    else:
        owner = acquire_read(data, &view)
        try:
            result = PyBytes_FromStringAndSize(NULL, view.len)
            ws_mask(<unsigned char *>PyBytes_AS_STRING(result), <const unsigned char *>view.buf,
                    <size_t>view.len, k, 0)
        finally:
            PyBuffer_Release(&view)
        return result
    result = PyBytes_FromStringAndSize(NULL, n)
    ws_mask(<unsigned char *>PyBytes_AS_STRING(result), src, <size_t>n, k, 0)
    return result


def mask_inplace(buf, key, Py_ssize_t offset=0) -> None:
    """Unmask ``buf[offset:]`` in place, the key's first byte applying to ``buf[offset]``.

    This is what a receive buffer needs: the header sits before ``offset`` and
    the payload after it is turned into plain text without a copy. ``buf``
    must be writable and C-contiguous (a bytearray or a writable memoryview);
    anything else raises TypeError, as in-place work on a copy would silently
    do nothing. ``offset`` must lie in ``0..len(buf)`` (ValueError otherwise).
    """
    cdef unsigned char k[WS_MASK_KEY_LENGTH]
    cdef unsigned char *target
    cdef Py_ssize_t n
    cdef Py_buffer view
    load_key(key, k)
    if PyByteArray_CheckExact(buf):
        n = PyByteArray_GET_SIZE(buf)
        check_offset(offset, n)
        ws_mask(<unsigned char *>PyByteArray_AS_STRING(buf) + offset,
                <const unsigned char *>PyByteArray_AS_STRING(buf) + offset, <size_t>(n - offset), k, 0)
        return
    if not PyObject_CheckBuffer(buf):
        raise TypeError(f"a bytes-like object is required, not '{type(buf).__name__}'")
    if ws_get_buffer(buf, &view, PyBUF_SIMPLE | PyBUF_WRITABLE) != 0:
        PyErr_Clear()
        raise TypeError(
            f"mask_inplace needs a writable C-contiguous buffer (bytearray or memoryview), "
            f"got {type(buf).__name__}"
        )
    try:
        n = view.len
        check_offset(offset, n)
        target = <unsigned char *>view.buf + offset
        ws_mask(target, target, <size_t>(n - offset), k, 0)
    finally:
        PyBuffer_Release(&view)


cdef inline int check_offset(Py_ssize_t offset, Py_ssize_t length) except -1:
    if offset < 0 or offset > length:
        raise ValueError(f"mask_inplace offset {offset} is outside the buffer of {length} bytes")
    return 0
