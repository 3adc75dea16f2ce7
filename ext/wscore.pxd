# The C core shared by the compiled modules, and their buffer handling.
#
# mask.pyx, utf8.pyx and frames.pyx cimport this file so the masking loop,
# the UTF-8 automaton and the rules for accepting a Python buffer exist once.
# Only extern declarations and inline functions live here, so no runtime
# module of this name is needed.

from cpython.buffer cimport PyBUF_SIMPLE, PyBUF_WRITABLE, PyObject_CheckBuffer
from libc.stdint cimport uint64_t


cdef extern from "Python.h":
    # Declared without Cython's error check: a failure is handled (cleared)
    # by the callers below instead of being raised at once.
    int ws_get_buffer "PyObject_GetBuffer"(object obj, Py_buffer *view, int flags)
    void PyBuffer_Release(Py_buffer *view)
    void PyErr_Clear()


cdef extern from "mask_core.h":
    enum: WS_MASK_KEY_LENGTH
    void ws_mask(unsigned char *dst, const unsigned char *src, size_t n,
                 const unsigned char *key, size_t phase) nogil


cdef extern from "utf8_core.h":
    uint64_t WS_UTF8_ACCEPT_BITS
    void ws_utf8_init()
    size_t ws_utf8_scan(uint64_t *state, const unsigned char *p, size_t n) nogil
    bint ws_utf8_valid(const unsigned char *p, size_t n) nogil
    bint ws_utf8_accepting(uint64_t state) nogil
    bint ws_utf8_rejected(uint64_t state) nogil
    enum: WS_UTF8_IMPLS
    const char *ws_utf8_impl_names[]
    int ws_utf8_impl
    bint ws_utf8_supported(int impl)
    bint ws_utf8_select(int impl)


cdef inline object acquire_read(object obj, Py_buffer *view):
    """Fill ``view`` with ``obj``'s bytes as one C-contiguous block.

    Returns the object that owns the view: ``obj`` itself, or a bytes copy
    when ``obj`` is a non-contiguous buffer. The caller releases ``view``.
    """
    if not PyObject_CheckBuffer(obj):
        raise TypeError(f"a bytes-like object is required, not '{type(obj).__name__}'")
    if ws_get_buffer(obj, view, PyBUF_SIMPLE) == 0:
        return obj
    PyErr_Clear()
    copy = memoryview(obj).tobytes()
    ws_get_buffer(copy, view, PyBUF_SIMPLE)
    return copy


cdef inline int read_mask_key(object key, unsigned char *out) except -1:
    """Copy the mask key into ``out`` (4 bytes); ValueError for any other length."""
    cdef Py_buffer view
    cdef Py_ssize_t i
    owner = acquire_read(key, &view)
    try:
        if view.len != WS_MASK_KEY_LENGTH:
            raise ValueError(
                f"a websocket mask key is exactly {WS_MASK_KEY_LENGTH} bytes, got {view.len}"
            )
        for i in range(WS_MASK_KEY_LENGTH):
            out[i] = (<const unsigned char *>view.buf)[i]
    finally:
        PyBuffer_Release(&view)
    return 0
