# cython: language_level=3
"""The cysignals peer: memcpy between sig_on() and sig_off(), the way Cython code
guards risky C today. Buffers are taken exactly as mcsafe.copy takes them."""

from cpython.buffer cimport PyBUF_SIMPLE, PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from cysignals.signals cimport sig_off, sig_on
from libc.string cimport memcpy


def copy(dst, src):
    cdef Py_buffer d, s
    PyObject_GetBuffer(dst, &d, PyBUF_WRITABLE)
    try:
        PyObject_GetBuffer(src, &s, PyBUF_SIMPLE)
        try:
            n = min(d.len, s.len)
            sig_on()
            memcpy(d.buf, s.buf, n)
            sig_off()
            return n
        finally:
            PyBuffer_Release(&s)
    finally:
        PyBuffer_Release(&d)
