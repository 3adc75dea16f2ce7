# cython: language_level=3
"""UTF-8 validation for text frames (RFC 6455, section 8.1), compiled twin of ws4redis.pure.utf8.

Same API and index semantics; the automaton lives in utf8_core.h. Nothing is
decoded or allocated, which is why this beats ``bytes.decode``.
"""

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_CheckExact, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_GET_SIZE
from libc.stdint cimport uint64_t

from wscore cimport (
    WS_UTF8_ACCEPT_BITS,
    WS_UTF8_IMPLS,
    PyBuffer_Release,
    acquire_read,
    ws_utf8_accepting,
    ws_utf8_impl,
    ws_utf8_impl_names,
    ws_utf8_init,
    ws_utf8_rejected,
    ws_utf8_scan,
    ws_utf8_select,
    ws_utf8_supported,
    ws_utf8_valid,
)

ws_utf8_init()


def implementations() -> list:
    """The scanners this processor runs, slowest first (``base``, then ``bmi2``, ``avx2``, ``avx512`` on x86-64)."""
    return [ws_utf8_impl_names[impl].decode() for impl in range(WS_UTF8_IMPLS) if ws_utf8_supported(impl)]


def implementation() -> str:
    """The scanner in use by this module: the fastest one, unless ``use`` chose another."""
    return ws_utf8_impl_names[ws_utf8_impl].decode()


def use(name: str) -> None:
    """Switch this module to the scanner ``name`` (the tests compare every one with the others).

    ValueError when this processor cannot run it. The frame parser keeps its own choice.
    """
    for impl in range(WS_UTF8_IMPLS):
        if ws_utf8_impl_names[impl].decode() == name and ws_utf8_select(impl):
            return
    raise ValueError(f"no UTF-8 scanner {name!r} on this processor; it runs {implementations()}")


def validate_utf8(data) -> bool:
    """Whether ``data`` (any buffer) is complete, well-formed UTF-8."""
    cdef Py_buffer view
    cdef bint valid
    if PyBytes_CheckExact(data):
        return ws_utf8_valid(<const unsigned char *>PyBytes_AS_STRING(data), <size_t>PyBytes_GET_SIZE(data))
    if PyByteArray_CheckExact(data):
        return ws_utf8_valid(<const unsigned char *>PyByteArray_AS_STRING(data),
                             <size_t>PyByteArray_GET_SIZE(data))
    owner = acquire_read(data, &view)
    try:
        valid = ws_utf8_valid(<const unsigned char *>view.buf, <size_t>view.len)
    finally:
        PyBuffer_Release(&view)
    return valid


cdef class Utf8Validator:
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

    cdef uint64_t _state
    cdef Py_ssize_t _total

    def __cinit__(self):
        self._state = WS_UTF8_ACCEPT_BITS
        self._total = 0

    def reset(self) -> None:
        """Forget everything: start validating a new stream."""
        self._state = WS_UTF8_ACCEPT_BITS
        self._total = 0

    def validate(self, data) -> tuple:
        """Validate the next chunk of the stream; see the class docstring for the result."""
        cdef Py_buffer view
        cdef Py_ssize_t index
        if PyBytes_CheckExact(data):
            index = <Py_ssize_t>ws_utf8_scan(&self._state, <const unsigned char *>PyBytes_AS_STRING(data),
                                             <size_t>PyBytes_GET_SIZE(data))
        elif PyByteArray_CheckExact(data):
            index = <Py_ssize_t>ws_utf8_scan(&self._state,
                                             <const unsigned char *>PyByteArray_AS_STRING(data),
                                             <size_t>PyByteArray_GET_SIZE(data))
        else:
            owner = acquire_read(data, &view)
            try:
                index = <Py_ssize_t>ws_utf8_scan(&self._state, <const unsigned char *>view.buf,
                                                 <size_t>view.len)
            finally:
                PyBuffer_Release(&view)
        self._total += index
        if ws_utf8_rejected(self._state):
            return False, False, index, self._total
        return True, ws_utf8_accepting(self._state), index, self._total
