# cython: language_level=3, boundscheck=False, wraparound=False, auto_pickle=False
"""The mcsafe extension: the table-driven copy and the handler's controls."""

from cpython.buffer cimport (PyBUF_SIMPLE, PyBUF_WRITABLE, PyBuffer_FillInfo,
                             PyBuffer_Release, PyObject_GetBuffer)
from cpython.exc cimport PyErr_CheckSignals, PyErr_Clear, PyErr_ExceptionMatches
from libc.errno cimport errno as c_errno
from libc.signal cimport SIGBUS, SIGSEGV
from libc.string cimport memchr
from cpython.long cimport PyLong_AsLongAndOverflow, PyLong_CheckExact
from cpython.number cimport PyIndex_Check, PyNumber_Index
from cpython.list cimport PyList_GET_SIZE
from cpython.tuple cimport PyTuple_GET_SIZE
from cpython.ref cimport PyObject
cimport cython
from cpython.pycapsule cimport PyCapsule_New
from cpython.pyport cimport PY_SSIZE_T_MAX, PY_SSIZE_T_MIN
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t, uintptr_t

cdef extern from "<signal.h>" nogil:
    ctypedef struct siginfo_t:
        pass

cdef extern from "mcsafe_core.h" nogil:
    struct mcsafe_ao_record:
        uint64_t addr
        int64_t sec
        int64_t nsec
    size_t mcsafe_ao_read(mcsafe_ao_record *out, size_t max, unsigned long *total)
    struct mcsafe_object_info:
        char *name
        uintptr_t bias
        uintptr_t anchor
        unsigned char *phdrs
        size_t phdrs_size
        unsigned char build_id[64]
        size_t build_id_size
    struct mcsafe_objects:
        mcsafe_object_info *list
        size_t n
    int mcsafe_loaded_objects(mcsafe_objects *out)
    void mcsafe_free_objects(mcsafe_objects *all)
    int mcsafe_register_file_table(const void *bytes, size_t size, uintptr_t anchor,
                                   const char *name, char *err, size_t errlen)
    int mcsafe_register_own(char *err, size_t errlen)
    int MCSAFE_AO_LOG
    size_t mcsafe_copy(void *dst, const void *src, size_t n, mcsafe_fault *rec)
    void mcsafe_arch_init()
    const char *const mcsafe_path_names[]
    size_t mcsafe_copy_path(int path, void *dst, const void *src, size_t n, mcsafe_fault *rec)
    struct mcsafe_copy_plan:
        size_t bulk_stop, nt_threshold, l2, l3
        unsigned features
    const char *const mcsafe_feature_names[]
    const mcsafe_copy_plan *mcsafe_plan()
    int mcsafe_copy_choice(size_t n)
    size_t mcsafe_scan(const void *src, size_t n, mcsafe_fault *rec)
    const char *const mcsafe_scan_path_names[]
    size_t mcsafe_scan_path(int path, const void *src, size_t n, mcsafe_fault *rec)
    int mcsafe_register(const void *table, size_t size, const char *name,
                        char *err, size_t errlen)
    int mcsafe_unregister(const void *table)
    size_t mcsafe_published()
    const void *mcsafe_own_table(size_t *size)
    int mcsafe_install()
    int mcsafe_handler_active()
    int mcsafe_in_front(int sig, uintptr_t *handler)
    int mcsafe_handler_origin(uintptr_t address, const char **file, const char **symbol,
                              uintptr_t *vaddr)
    int MCSAFE_GENERATIONS
    int mcsafe_generations_taken(int sig)
    int mcsafe_faults_blocked()
    int mcsafe_handle_fault(int sig, siginfo_t *info, void *ucontext)
    unsigned long mcsafe_claimed_count()
    int MCSAFE_SMALL_COPY

from ._types import CopyResult, FaultInfo, PoisonNotice


cdef size_t copy_nogil(void *dst, const void *src, size_t n, mcsafe_fault *rec) noexcept nogil:
    """The table-driven copy for C and Cython callers: bytes copied; rec says where."""
    return mcsafe_copy(dst, src, n, rec)


# The C API, for C extensions: a capsule holding this struct (see mcsafe.h).
cdef struct mcsafe_c_api:
    int version
    size_t (*copy)(void *, const void *, size_t, mcsafe_fault *) noexcept nogil
    int (*register_table)(const void *, size_t, const char *, char *, size_t) noexcept nogil
    int (*unregister_table)(const void *) noexcept nogil
    int (*handle_fault)(int, siginfo_t *, void *) noexcept nogil

cdef mcsafe_c_api _c_api
_c_api.version = 2
_c_api.copy = copy_nogil
_c_api.register_table = mcsafe_register
_c_api.unregister_table = mcsafe_unregister
_c_api.handle_fault = mcsafe_handle_fault
_C_API = PyCapsule_New(&_c_api, b"mcsafe._mcsafe._C_API", NULL)

#: Copies of at least this many bytes release the GIL.
cdef Py_ssize_t GIL_RELEASE = 64 * 1024
# Copies of at least this many bytes first check that a fault in them can be
# recovered: that this thread does not block SIGBUS/SIGSEGV (a fault would then
# kill the process), and that mcsafe is still in front of both signals' handlers
# (else it puts itself in front again, with a RuntimeWarning). Three syscalls,
# 0.33 us here (about six whole 64-byte copies); from 1 MiB about 1%.
cdef Py_ssize_t MASK_CHECK = 1 << 20


cdef int _refuse_blocked() except -1:
    raise RuntimeError("mcsafe cannot recover faults on this thread: it blocks SIGBUS or "
                       "SIGSEGV, so the kernel would kill the process on a fault (unblock "
                       "them with signal.pthread_sigmask)")


cdef inline bint _ready() noexcept:
    """Whether a fault on this thread, now, would reach mcsafe and be recovered."""
    return not mcsafe_faults_blocked() and mcsafe_handler_active()


cdef int _make_ready(int stacklevel) except -1:
    """Raise if this thread blocks the signals; put mcsafe in front again of any
    handler installed over it, with a warning naming that handler. (Cython code
    has no frames of its own: stacklevel 1 is the Python code that called in.)"""
    if mcsafe_faults_blocked():
        _refuse_blocked()
    _front_again(stacklevel)
    return 0


def _handler_origin(uintptr_t address):
    """(file, exact dynamic symbol or None, address in the file) of a loaded
    handler, or None."""
    cdef const char *file
    cdef const char *symbol
    cdef uintptr_t vaddr
    if not mcsafe_handler_origin(address, &file, &symbol, &vaddr):
        return None
    return (file.decode("utf-8", "surrogateescape"),
            symbol.decode("utf-8", "surrogateescape") if symbol != NULL else None, vaddr)


cdef int _front_again(int stacklevel) except -1:
    cdef uintptr_t handler = 0
    replaced = []
    for sig, signame in ((SIGSEGV, "SIGSEGV"), (SIGBUS, "SIGBUS")):
        if not mcsafe_in_front(sig, &handler):
            from ._names import handler_name
            replaced.append(f"{signame} by {handler_name(sig, handler)}")
    if not replaced:
        return 0
    install()
    import sys
    import warnings
    hint = ""
    if "_pytest.faulthandler" in sys.modules and sys.modules["faulthandler"].is_enabled():
        hint = (" Under pytest, which enables faulthandler after conftest files are "
                "imported, add pytest_plugins = ['mcsafe.pytest_plugin'] to the root "
                "conftest (or run pytest -p mcsafe.pytest_plugin).")
    warnings.warn("mcsafe's handler was replaced (" + ", ".join(replaced) + "); mcsafe "
                  "put itself in front again, and passes on what is not its own as that "
                  "handler would have had it. Call mcsafe.install() after installing "
                  "signal handlers to do this explicitly." + hint, RuntimeWarning,
                  stacklevel=stacklevel)
    return 0


def _ensure_front(int stacklevel=1):
    """MappedFile's check when it opens a file and before a scrub: mcsafe in front
    of both signals' handlers again, with a RuntimeWarning, if another replaced it."""
    if not mcsafe_handler_active():
        _front_again(stacklevel)


GIL_RELEASE_BYTES = GIL_RELEASE
#: Copies below this many bytes take the word path, the rest the bulk path.
SMALL_COPY_BYTES = MCSAFE_SMALL_COPY

cdef str _own_status = "not registered"
cdef bint _own_ok = False
cdef tuple _SIDES = (None, "src", "dst")


cdef object _ZERO = 0


cdef extern from "Python.h":
    # With NULL for exc, a value outside the Py_ssize_t range is clipped to it.
    Py_ssize_t _as_ssize_t "PyNumber_AsSsize_t"(object o, PyObject *exc) except? -1


cdef inline Py_ssize_t _size(object value, str name) except? -1:
    """An integer argument as a Py_ssize_t: a TypeError for a non-integer, and
    a ValueError, like any other size out of range, for one that does not fit."""
    cdef int overflow = 0
    cdef long v
    if PyLong_CheckExact(value):            # long is Py_ssize_t on Linux (LP64, ILP32)
        v = PyLong_AsLongAndOverflow(value, &overflow)
        if not overflow:
            return v
    return _size_slow(value, name)


cdef Py_ssize_t _size_slow(object value, str name) except? -1:
    cdef Py_ssize_t v
    if not PyIndex_Check(value):
        raise TypeError(f"{name} must be an integer, not {type(value).__name__}")
    v = _as_ssize_t(value, NULL)
    if (v == PY_SSIZE_T_MAX or v == PY_SSIZE_T_MIN) \
            and not PY_SSIZE_T_MIN <= value <= PY_SSIZE_T_MAX:
        raise ValueError(f"{name}={value} is out of range (no buffer is that large)")
    return v


cdef inline Py_ssize_t _offset(object value, str name) except? -1:
    return 0 if value is _ZERO else _size(value, name)


cdef inline Py_ssize_t _span(Py_ssize_t avail_dst, Py_ssize_t avail_src, object n) except -2:
    cdef Py_ssize_t want
    if n is None:
        return avail_dst if avail_dst < avail_src else avail_src
    want = _size(n, "n")
    if want < 0:
        raise ValueError(f"n must be >= 0, got {want}")
    if want > avail_src:
        raise ValueError(f"n={want} exceeds the {avail_src} bytes of src after src_offset")
    if want > avail_dst:
        raise ValueError(f"n={want} exceeds the {avail_dst} bytes of dst after dst_offset")
    return want


cdef extern from "Python.h":
    # PyObject_GetBuffer without Cython's error check, so the fast path has no
    # try block (Cython saves the exception state on entering one).
    int _get_buffer "PyObject_GetBuffer"(object obj, Py_buffer *view, int flags)


cdef int _raise_buffer_error(str which, object obj) except -1:
    """Turn the pending error of a buffer request (BufferError, TypeError for
    an object with no buffer, numpy's ValueError) into a TypeError naming the
    argument."""
    if not (PyErr_ExceptionMatches(BufferError) or PyErr_ExceptionMatches(TypeError)
            or PyErr_ExceptionMatches(ValueError)):
        return -1                                  # anything else propagates as it is
    PyErr_Clear()
    raise TypeError(f"{which} must be a {'writable ' if which == 'dst' else ''}contiguous "
                    f"buffer (bytes-like, C-contiguous), not {type(obj).__name__}")


cdef inline int _acquire(object dst, object src, Py_buffer *d, Py_buffer *s) except -1:
    if _get_buffer(dst, d, PyBUF_WRITABLE) < 0:
        _raise_buffer_error("dst", dst)
    if _get_buffer(src, s, PyBUF_SIMPLE) < 0:
        PyBuffer_Release(d)
        _raise_buffer_error("src", src)
    return 0


cdef Py_ssize_t _copy(object dst, object src, object n, Py_ssize_t dst_offset,
                      Py_ssize_t src_offset, mcsafe_fault *rec,
                      Py_ssize_t *length, uintptr_t *dst_at, uintptr_t *src_at) except -1:
    cdef Py_buffer d, s
    cdef Py_ssize_t count, done
    cdef char *dp
    cdef const char *sp
    if not _own_ok:
        raise RuntimeError(f"mcsafe cannot recover faults: {_own_status}")
    _acquire(dst, src, &d, &s)
    try:
        if dst_offset < 0 or dst_offset > d.len:
            raise ValueError(f"dst_offset={dst_offset} is outside dst (0..{d.len})")
        if src_offset < 0 or src_offset > s.len:
            raise ValueError(f"src_offset={src_offset} is outside src (0..{s.len})")
        count = _span(d.len - dst_offset, s.len - src_offset, n)
        dp = <char *>d.buf + dst_offset
        sp = <const char *>s.buf + src_offset
        if count and dp < sp + count and sp < dp + count:
            raise ValueError("src and dst overlap")
        if count >= GIL_RELEASE:
            if count >= MASK_CHECK and not _ready():
                _make_ready(1)
            with nogil:
                done = <Py_ssize_t>mcsafe_copy(dp, sp, <size_t>count, rec)
        else:
            done = <Py_ssize_t>mcsafe_copy(dp, sp, <size_t>count, rec)
        length[0] = count
        dst_at[0] = <uintptr_t>dp
        src_at[0] = <uintptr_t>sp
        return done
    finally:
        PyBuffer_Release(&s)
        PyBuffer_Release(&d)


def copy(dst, src, n=None, *, dst_offset=_ZERO, src_offset=_ZERO):
    """Copy bytes from src to dst; return how many were copied before any fault.

    n defaults to as many bytes as both buffers hold after their offsets.
    """
    cdef mcsafe_fault rec
    cdef Py_buffer d, s
    cdef Py_ssize_t count, done
    cdef char *dp
    cdef const char *sp
    # The defaults are _ZERO's object; any other offset takes the checked path.
    if n is not None or dst_offset is not _ZERO or src_offset is not _ZERO or not _own_ok:
        return _copy(dst, src, n, _offset(dst_offset, "dst_offset"),
                     _offset(src_offset, "src_offset"), &rec, &count, <uintptr_t *>&dp,
                     <uintptr_t *>&sp)
    # The common call, copy(dst, src): the same steps as _copy, without the options.
    _acquire(dst, src, &d, &s)
    count = d.len if d.len < s.len else s.len
    dp = <char *>d.buf
    sp = <const char *>s.buf
    if count and dp < sp + count and sp < dp + count:
        PyBuffer_Release(&s)
        PyBuffer_Release(&d)
        raise ValueError("src and dst overlap")
    if count >= GIL_RELEASE:
        if count >= MASK_CHECK and not _ready():
            PyBuffer_Release(&s)
            PyBuffer_Release(&d)
            return _copy(dst, src, None, 0, 0, &rec, &count, <uintptr_t *>&dp,
                         <uintptr_t *>&sp)
        with nogil:
            done = <Py_ssize_t>mcsafe_copy(dp, sp, <size_t>count, &rec)
    else:
        done = <Py_ssize_t>mcsafe_copy(dp, sp, <size_t>count, &rec)
    PyBuffer_Release(&s)
    PyBuffer_Release(&d)
    return done


cdef object _fault_info(mcsafe_fault *rec, uintptr_t dst_at, uintptr_t src_at):
    if rec.side == 0:
        return None
    base = src_at if rec.side == 1 else dst_at
    return FaultInfo(rec.addr, <Py_ssize_t>(rec.addr - base), _SIDES[rec.side], rec.signo,
                     rec.code)


def copy_report(dst, src, n=None, *, dst_offset=_ZERO, src_offset=_ZERO):
    """Like copy(), and say where the copy faulted: a CopyResult(copied, fault)."""
    cdef mcsafe_fault rec
    cdef Py_ssize_t length, done
    cdef uintptr_t dst_at, src_at
    done = _copy(dst, src, n, _offset(dst_offset, "dst_offset"),
                 _offset(src_offset, "src_offset"), &rec, &length, &dst_at, &src_at)
    return CopyResult(done, _fault_info(&rec, dst_at, src_at) if done < length else None)


cdef tuple _names(const char *const *names):
    cdef int i = 0
    out = []
    while names[i] != NULL:
        out.append((<bytes>names[i]).decode())
        i += 1
    return tuple(out)


cdef tuple _PATHS = _names(mcsafe_path_names)
# The names of the scan's paths (loads only) on this machine, for _scan(path=); the
# last is the one _scan() takes.
SCAN_PATHS = _SCAN_PATHS = _names(mcsafe_scan_path_names)


def copy_paths():
    """The names of the copy paths this machine has, for _copy_path()."""
    return _PATHS


def copy_plan():
    """How copies are made on this machine, chosen from the CPU at import:
    ``small`` (copies below it take the word path), ``bulk_stop`` and
    ``nt_threshold`` (copies from ``small`` up to ``bulk_stop`` take the bulk
    path, then the vector loop, then from ``nt_threshold`` the non-temporal one;
    None: never), the cache sizes ``l2`` and ``l3`` it read (None if unknown) and
    the CPU ``features`` it looked at that this CPU has."""
    cdef const mcsafe_copy_plan *p = mcsafe_plan()
    cdef int i = 0
    features = []
    while mcsafe_feature_names[i] != NULL:
        if p.features >> i & 1:
            features.append((<bytes>mcsafe_feature_names[i]).decode())
        i += 1
    never = <size_t>-1
    return {"small": MCSAFE_SMALL_COPY,
            "bulk_stop": None if p.bulk_stop == never else p.bulk_stop,
            "nt_threshold": None if p.nt_threshold == never else p.nt_threshold,
            "l2": p.l2 or None, "l3": p.l3 or None, "features": tuple(features)}


def copy_path_for(n):
    """The name of the path (one of copy_paths()) a copy of n bytes takes."""
    if n < 0:
        raise ValueError(f"negative size {n}")
    return copy_paths()[mcsafe_copy_choice(<size_t>n)]


cdef extern from "<sys/stat.h>" nogil:
    struct _timespec "timespec":
        long tv_sec
        long tv_nsec
    struct _stat "stat":
        unsigned long long st_dev
        unsigned int st_mode
        unsigned long long st_nlink
        unsigned int st_uid
        long long st_size
        _timespec st_mtim
        _timespec st_ctim
    int _fstat "fstat"(int fd, _stat *buf)
    bint S_ISREG(unsigned int mode)

from cpython.exc cimport PyErr_SetFromErrno


def _file_stamp(int fd):
    """(st_size, st_mtime_ns, st_ctime_ns) of fd: MappedFile's careful path asks
    this around every copy, and os.fstat spends most of its microsecond building a
    stat_result."""
    cdef _stat st
    if _fstat(fd, &st) != 0:
        PyErr_SetFromErrno(OSError)
        return None
    return (st.st_size, st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec,
            st.st_ctim.tv_sec * 1000000000 + st.st_ctim.tv_nsec)


def _copy_or_report(dst, src, n=None, Py_ssize_t dst_offset=0, Py_ssize_t src_offset=0):
    """copy() when nothing faults, copy_report() when something does: one call on
    the fast path of MappedFile."""
    cdef mcsafe_fault rec
    cdef Py_ssize_t length, done
    cdef uintptr_t dst_at, src_at
    done = _copy(dst, src, n, dst_offset, src_offset, &rec, &length, &dst_at, &src_at)
    if done == length:
        return done
    return CopyResult(done, _fault_info(&rec, dst_at, src_at))


def _copy_bracketed(dst, src, Py_ssize_t dst_offset, Py_ssize_t src_offset, bint from_src,
                    Py_ssize_t limit, uintptr_t probe, uint64_t expect):
    """MappedFile's fast path, in one call: read the 8-byte word at address `probe`,
    copy as much as both buffers hold after their offsets, read the word again;
    every access through the table-driven copy. The copy must end at or before
    offset `limit` of the file's buffer (src if from_src, else dst).
    Returns the count, or -1 if a probe faulted or read other than `expect` (the
    copy may have run), or -2 if nothing was done: the copy would pass `limit`,
    there is no probe (`probe` 0), the buffers overlap or dst's view is gone (the
    careful path decides), or a CopyResult if the copy faulted. The caller's src
    that is no buffer raises its own error, as os.pwrite's would."""
    cdef mcsafe_fault rec
    cdef Py_buffer d, s
    cdef Py_ssize_t count, done
    cdef char *dp
    cdef const char *sp
    cdef uint64_t word
    if not _own_ok:
        raise RuntimeError(f"mcsafe cannot recover faults: {_own_status}")
    PyObject_GetBuffer(src, &s, PyBUF_SIMPLE)
    if _get_buffer(dst, &d, PyBUF_WRITABLE) < 0:
        PyErr_Clear()
        PyBuffer_Release(&s)
        return -2
    try:
        if not (0 <= dst_offset <= d.len and 0 <= src_offset <= s.len):
            return -2
        count = _span(d.len - dst_offset, s.len - src_offset, None)
        if (src_offset if from_src else dst_offset) + count > limit or \
                limit >= (s.len if from_src else d.len) or not probe:
            return -2
        dp = <char *>d.buf + dst_offset
        sp = <const char *>s.buf + src_offset
        if count and dp < sp + count and sp < dp + count:
            return -2
        if count >= MASK_CHECK and not _ready():
            _make_ready(1)
        if mcsafe_copy(&word, <const void *>probe, 8, &rec) != 8 or word != expect:
            return -1
        if count >= GIL_RELEASE:
            with nogil:
                done = <Py_ssize_t>mcsafe_copy(dp, sp, <size_t>count, &rec)
        else:
            done = <Py_ssize_t>mcsafe_copy(dp, sp, <size_t>count, &rec)
        if done < count:
            return CopyResult(done, _fault_info(&rec, <uintptr_t>dp, <uintptr_t>sp))
        if mcsafe_copy(&word, <const void *>probe, 8, &rec) != 8 or word != expect:
            return -1
        return done
    finally:
        PyBuffer_Release(&s)
        PyBuffer_Release(&d)


cdef extern from "<unistd.h>" nogil:
    long _lseek "lseek"(int fd, long offset, int whence)
    int SEEK_END

cdef extern from "<errno.h>" nogil:
    int errno
    int EINTR

cdef Py_ssize_t _size_now(int fd) except -1:
    """The file's size, asked now. lseek(SEEK_END) is the cheapest question here:
    about 190 ns on ext4 and tmpfs where fstat and statx cost 380-430 ns (pread
    of 100 bytes 460 ns); on FUSE with attr_timeout=0 each is one GETATTR. The
    offset it moves is the MappedFile's own descriptor's, which nothing reads
    through. The GIL is released around it, as os.pread releases it: on FUSE
    and NFS it is a round trip to a server, which may hang."""
    cdef long size
    cdef int err
    while True:
        with nogil:
            size = _lseek(fd, 0, SEEK_END)
            err = errno
        if size >= 0:
            return size
        if err != EINTR:
            errno = err
            PyErr_SetFromErrno(OSError)
        PyErr_CheckSignals()         # interrupted (a FUSE request): handlers, then again


cdef bint _no_zero(const char *buf, Py_ssize_t offset, Py_ssize_t count) noexcept:
    """Whether buf, `count` (> 0) bytes copied from file offset `offset`, holds no
    zero byte in the file page of its last byte; False also where buf cannot be
    read back. It is read back through the table-driven copy, a piece at a time:
    the caller's buffer may be a mapping another thread cuts meanwhile (found by
    review: a plain memchr of it died of SIGBUS)."""
    cdef char piece[4096]
    cdef mcsafe_fault rec
    cdef size_t n
    cdef Py_ssize_t page = <Py_ssize_t>_PAGE
    cdef Py_ssize_t at = (offset + count - 1) // page * page - offset
    if at < 0:
        at = 0
    while at < count:
        n = <size_t>(count - at) if count - at < 4096 else 4096
        rec.side = 0
        if mcsafe_copy(piece, buf + at, n, &rec) != n or memchr(piece, 0, n) != NULL:
            return False
        at += <Py_ssize_t>n
    return True


cdef object _read_exact(Py_buffer *d, tuple state, Py_ssize_t offset, bint careful):
    """Fill d from file offset `offset` through the table-driven copy from the
    mapping, and count only bytes that were in the file: _FastPath.readinto's and
    _readinto_careful's body. The fast path (not careful) takes a mapping it
    cannot have (a closed file's, released) as -2, to the careful path."""
    cdef mcsafe_fault rec
    cdef Py_buffer s
    cdef Py_ssize_t end, count, done, size = -1
    cdef uint64_t word
    cdef unsigned char last = 0
    cdef const char *sp
    # boundscheck is off: a tuple of another length is refused, never read past
    if state is None or PyTuple_GET_SIZE(state) != 7:
        raise ValueError(f"not a published state: {state!r}")
    cdef object src = state[0]
    cdef Py_ssize_t limit = state[2]
    cdef uintptr_t probe = state[3]
    cdef uint64_t expect = state[4]
    cdef int fd = state[5]
    cdef Py_ssize_t room = state[6]
    if room == 0 and not careful:
        # A closed file's state: to the careful path, which says so. Not by the
        # view's release alone: a reader whose size question waits without the
        # GIL holds the view, and four of them could keep close() waiting.
        return -2
    if not _own_ok:
        raise RuntimeError(f"mcsafe cannot recover faults: {_own_status}")
    if _get_buffer(src, &s, PyBUF_SIMPLE) < 0:
        if careful:
            _raise_buffer_error("src", src)
        PyErr_Clear()
        return -2
    try:
        if room < s.len:
            room = s.len
        if not 0 <= offset < room or limit >= s.len:
            return -2
        if d.len == 0:
            return 0
        end = offset + d.len
        if not probe or end > limit:
            # The file's last page (or no probe): its bytes past the end read as
            # zeros without a fault, so the copy stops at the size asked now.
            size = _size_now(fd)
            if offset >= size:
                return 0
            if end > size:
                end = size
            if end > room:              # grown past the mapping
                if not careful:
                    return -2           # the careful path maps it again first
                end = room              # and goes on from there in its next call
        count = end - offset
        sp = <const char *>s.buf + offset
        if <const char *>d.buf < sp + count and sp < <const char *>d.buf + count:
            raise ValueError("src and dst overlap")
        if count >= MASK_CHECK and mcsafe_faults_blocked():
            _refuse_blocked()
        if probe and (mcsafe_copy(&word, <const void *>probe, 8, &rec) != 8
                      or word != expect):
            return -1
        if count >= GIL_RELEASE:
            with nogil:
                done = <Py_ssize_t>mcsafe_copy(d.buf, sp, <size_t>count, &rec)
        else:
            done = <Py_ssize_t>mcsafe_copy(d.buf, sp, <size_t>count, &rec)
        if done < count:
            return CopyResult(done, _fault_info(&rec, <uintptr_t>d.buf, <uintptr_t>sp))
        if probe and (mcsafe_copy(&word, <const void *>probe, 8, &rec) != 8
                      or word != expect):
            return -1
        if size < 0:
            return count                # ends before the probe's page: proved by it
        # A cut sets the size, unmaps every page past the one it falls in (the
        # probe's too, if it falls below the probe's page), then zeroes that page
        # from the cut on. So if the last byte counted, read again, is neither 0
        # nor a fault, no cut fell below its page; nor below it in its page if no
        # zero was copied from there: a copy can overtake the zeroing (a truncate
        # is not atomic) and read a cut's zeros before bytes not yet zeroed. A
        # zero there may be the file's, or a cut's: the size, asked again, tells
        # (as it always does without a probe: a block device, which a shrink
        # neither zeroes nor unmaps). Unless the file was also written long again
        # meanwhile, which pread(2) cannot see either.
        # And unless another process wrote past the cut through its own mapping of
        # that page (the kernel drops those bytes; a zero needs not be among them):
        # pread(2) reads the size just before copying each page (tmpfs) or batch
        # of pages, so a copy that reached this page from another one, past the
        # size asked before it, has the size asked again.
        if (limit >= 0 and (offset + count - 1) // <Py_ssize_t>_PAGE == offset // <Py_ssize_t>_PAGE
                and mcsafe_copy(&last, sp + count - 1, 1, &rec) == 1 and last != 0
                and _no_zero(<const char *>d.buf, offset, count)):
            return count
        size = _size_now(fd) - offset
        return count if count <= size else (size if size > 0 else 0)
    finally:
        PyBuffer_Release(&s)


def _readinto_careful(dst, tuple state, Py_ssize_t offset):
    """_FastPath.readinto's copy for the careful path: a state without a probe
    (limit < 0) is read with the size asked before and after the copy, and a
    file grown past the mapping is read to its end (a short count: the caller
    maps it again and goes on). -2 only for an offset outside the mapping."""
    cdef Py_buffer d
    if _get_buffer(dst, &d, PyBUF_WRITABLE) < 0:
        _raise_buffer_error("dst", dst)
    try:
        return _read_exact(&d, state, offset, True)
    finally:
        PyBuffer_Release(&d)


cdef class _Published:
    """The base of mcsafe.mapped.mapping.Window: `state`, the tuple the window
    publishes for every call (None until it first does), in a slot, so that
    _FastPath.readinto reads it without an attribute lookup (two of those, this
    and the bad ranges', cost a tenth of a 4 KiB read)."""
    cdef public tuple state


cdef class _Starts:
    """The base of mcsafe.mapped.badranges.BadRanges: the bad ranges' `starts`
    and `ends` (sorted, disjoint), in slots for _FastPath.readinto. publish()
    replaces both at once (never mutated), so a reader sees a consistent pair."""
    cdef readonly list starts
    cdef readonly list ends

    def publish(self, list starts not None, list ends not None) -> None:
        """Make (starts, ends) the ranges: both in one step, under the GIL."""
        if len(starts) != len(ends):
            raise ValueError(f"{len(starts)} starts but {len(ends)} ends")
        self.starts, self.ends = starts, ends


cdef inline bint _misses(_Starts bad, Py_ssize_t offset, Py_ssize_t n) except -1:
    """Whether [offset, offset + n) (its first byte if n is 0) touches no bad
    range: bisect the starts, then the end of the last range starting before it.
    Anything odd (lists of other lengths, an item not an int) says no: the
    careful path decides. Only exact ints are read, so no Python code runs
    (which could change the lists under the bisection)."""
    cdef list starts = bad.starts, ends = bad.ends
    cdef Py_ssize_t lo = 0, hi, mid, stop
    cdef object item
    if starts is None or ends is None:
        return False
    hi = PyList_GET_SIZE(starts)
    if hi == 0:
        return True
    if PyList_GET_SIZE(ends) != hi:     # boundscheck is off: never read past either
        return False
    if n < 1:
        n = 1
    stop = offset + n if offset <= PY_SSIZE_T_MAX - n else PY_SSIZE_T_MAX
    while lo < hi:                      # the ranges starting before stop: [0, lo)
        mid = (lo + hi) // 2
        item = starts[mid]
        if not PyLong_CheckExact(item):
            return False
        if <Py_ssize_t>item < stop:
            lo = mid + 1
        else:
            hi = mid
    if lo == 0:
        return True
    item = ends[lo - 1]
    return PyLong_CheckExact(item) and <Py_ssize_t>item <= offset


cdef int _refuse_dst(object buf) except -1:
    """The pending error of buf's buffer request, as readinto() reports it: the
    refusals of a buffer that cannot be written into (BufferError: read-only or
    not contiguous; TypeError: no buffer) as FileIO.readinto words them; anything
    else (a __buffer__'s own error, numpy's) propagates as it is, as in
    os.preadv."""
    if not (PyErr_ExceptionMatches(BufferError) or PyErr_ExceptionMatches(TypeError)):
        return -1
    PyErr_Clear()
    raise TypeError("readinto() argument must be read-write bytes-like object, "
                    f"not {type(buf).__name__}")


cdef class _FastPath:
    """MappedFile's base: readinto()'s fast path as one call from Python.

    `_window` and `_bad` are the MappedFile's parts (mcsafe.mapped.mapping.Window
    and mcsafe.mapped.badranges.BadRanges), set by its __init__. readinto()
    fills buf from the mapping through the table-driven copy, from the state the
    window published: (src, size, limit, probe, expect, fd, room). src is a view
    of the file's bytes as last seen, and the first `room` bytes from its start
    are mapped (the mapping src is a view of, with room to grow; src's export
    keeps it mapped): a read of a file grown since copies from there, up to the
    size it asks.

    A copy that ends at or before `limit` (the start of the file's last page as
    last seen, where the probe word at address `probe` is armed) is proved by
    the probe read before and after it: no system call. One that reaches past
    it is bounded by the size asked just before it (lseek), and, if it lay in
    that page alone, its last byte read again after it (a cut during the copy
    makes it 0 or fault, or left zeros copied from its page: then the size
    asked again bounds the count); one that reached that page from another has
    the size asked again.

    A read that is not plainly fast goes on in Python, in the subclass's
    _readinto_slow(buf, offset, state, got), with `got` -1 if the probe failed
    (the copy may have run: count none of it), -2 if nothing was done (the read
    touches a known bad range, the offset outside the mapping or not a
    Py_ssize_t, the file grown past it, a closed file), or the CopyResult of a
    fault. Without a probe (limit < 0: a block device, a file whose size can
    change behind the kernel's back, a last page that could not be read) the
    size is asked before and after the copy. The offset it gets is an int (operator.index, once, as os.preadv)."""
    cdef public _Published _window
    cdef public _Starts _bad

    def readinto(self, buf, offset=0):
        """Fill buf from the file at offset, as pread(2): the count, short at a bad
        byte or the end of the file, 0 at or past the end. Raises MemoryFaultError
        if the first byte is bad."""
        cdef Py_buffer d
        cdef tuple state
        cdef object got = -2
        cdef long at
        cdef int overflow = 0
        # A cyfunction, unlike a method descriptor, takes any object as self:
        # MappedFile.readinto(object(), buf) would read object()'s memory as slots.
        if not isinstance(<object>self, _FastPath):
            raise TypeError(f"descriptor 'readinto' for 'MappedFile' objects doesn't "
                            f"apply to a '{type(<object>self).__name__}' object")
        if not PyLong_CheckExact(offset):
            offset = PyNumber_Index(offset)     # first and once, as os.preadv: its errors
        # typed slots, read without a check: never read None as a part
        if self._window is None or self._bad is None or self._window.state is None:
            raise ValueError(f"{type(self).__name__} was never opened (its __init__ did "
                             "not run)")
        state = self._window.state
        at = PyLong_AsLongAndOverflow(offset, &overflow)   # long is Py_ssize_t (LP64)
        if overflow:
            return self._readinto_slow(buf, offset, state, got)
        if _get_buffer(buf, &d, PyBUF_WRITABLE) < 0:
            _refuse_dst(buf)
        try:
            if _misses(self._bad, at, d.len):
                got = _read_exact(&d, state, at, False)
        finally:
            PyBuffer_Release(&d)
        if PyLong_CheckExact(got) and <Py_ssize_t>got >= 0:   # a count
            return got
        return self._readinto_slow(buf, offset, state, got)


cdef size_t _through(void *sink, size_t sink_len, const char *src, size_t n,
                     mcsafe_fault *rec) noexcept nogil:
    """Copy n bytes of src through sink, a sink-full at a time: the bytes read
    before a fault (n if none; rec says where)."""
    cdef size_t piece, got, done = 0
    while done < n:
        piece = n - done
        if piece > sink_len:
            piece = sink_len
        got = mcsafe_copy(sink, src + done, piece, rec)
        done += got
        if got < piece:
            break
    return done


def _scan(src, Py_ssize_t src_offset, Py_ssize_t n, path=None):
    """scrub()'s reader: load every byte of src from src_offset to src_offset + n,
    storing nothing, without the GIL. Returns n, or a CopyResult whose count is
    the bytes readable before the first that faulted (and its fault's offset is
    that byte's in src). path (tests and benchmarks): one of SCAN_PATHS only."""
    cdef mcsafe_fault rec
    cdef Py_buffer s
    cdef size_t done
    cdef int index = -1
    if path is not None:
        if path not in _SCAN_PATHS:
            raise ValueError(f"path must be one of {_SCAN_PATHS}, not {path!r}")
        index = _SCAN_PATHS.index(path)
    if not _own_ok:
        raise RuntimeError(f"mcsafe cannot recover faults: {_own_status}")
    if _get_buffer(src, &s, PyBUF_SIMPLE) < 0:
        _raise_buffer_error("src", src)
    try:
        if not (0 <= src_offset <= s.len and 0 <= n <= s.len - src_offset):
            raise ValueError("src_offset or n outside src")
        if n >= MASK_CHECK and not _ready():
            _make_ready(1)
        with nogil:
            if index < 0:
                done = mcsafe_scan(<const char *>s.buf + src_offset, <size_t>n, &rec)
            else:
                rec.side = 0
                done = n - mcsafe_scan_path(index, <const char *>s.buf + src_offset,
                                            <size_t>n, &rec)
        if done < <size_t>n:
            return CopyResult(<Py_ssize_t>done, _fault_info(&rec, 0, <uintptr_t>s.buf))
        return n
    finally:
        PyBuffer_Release(&s)


cdef extern from "<sys/mman.h>" nogil:
    void *_mmap "mmap"(void *addr, size_t length, int prot, int flags, int fd, long offset)
    int _munmap "munmap"(void *addr, size_t length)
    int _mincore "mincore"(void *addr, size_t length, unsigned char *vec)
    void *MAP_FAILED
    int PROT_READ
    int MAP_SHARED


from posix.unistd cimport _SC_PAGESIZE, sysconf

# The page size mincore(2) and cachestat(2) count in (4 KiB, or 16 or 64 KiB on arm64)
cdef size_t _PAGE = <size_t>sysconf(_SC_PAGESIZE)


cdef bint _sink_buffers(sink, residency, Py_ssize_t size, Py_buffer *d,
                       Py_buffer *r) except -1:
    """Acquire sink (writable, not empty) and residency unless None (writable, a byte
    per page of size bytes): whether residency was. Nothing stays acquired on an
    error."""
    PyObject_GetBuffer(sink, d, PyBUF_WRITABLE)
    try:
        if d.len == 0:
            raise ValueError("an empty sink")
        if residency is None:
            return False
        PyObject_GetBuffer(residency, r, PyBUF_WRITABLE)
        if r.len < (size + _PAGE - 1) // _PAGE:
            PyBuffer_Release(r)
            raise ValueError("residency holds fewer bytes than the file has pages")
        return True
    except BaseException:
        PyBuffer_Release(d)
        raise


def _read_mapped(int fd, Py_ssize_t size, sink, residency=None):
    """A file's first `size` bytes read whole through a mapping of its own, in one
    call (mcsafe scan's reader of small files, where per-file cost decides):
    map them (shared, read-only), copy them through sink a sink-full at a time
    with the table-driven copy, unmap. Returns size, or the CopyResult of the
    first fault (its src offset is the file offset). residency, if given, a
    writable buffer of a byte per page, first gets mincore(2) of the mapping:
    what was cached before anything was read."""
    cdef mcsafe_fault rec
    cdef Py_buffer d, r
    cdef void *addr
    cdef size_t done
    cdef bint have_r = False
    if not _own_ok:
        raise RuntimeError(f"mcsafe cannot recover faults: {_own_status}")
    if size <= 0:
        return 0
    have_r = _sink_buffers(sink, residency, size, &d, &r)
    try:
        if size >= MASK_CHECK and not _ready():
            _make_ready(1)
        addr = _mmap(NULL, <size_t>size, PROT_READ, MAP_SHARED, fd, 0)
        if addr == MAP_FAILED:
            PyErr_SetFromErrno(OSError)
            return None
        try:
            if have_r and _mincore(addr, <size_t>size, <unsigned char *>r.buf) != 0:
                PyErr_SetFromErrno(OSError)
                return None
            if size >= GIL_RELEASE:
                with nogil:
                    done = _through(d.buf, <size_t>d.len, <const char *>addr, <size_t>size, &rec)
            else:
                done = _through(d.buf, <size_t>d.len, <const char *>addr, <size_t>size, &rec)
            if done < <size_t>size:
                return CopyResult(<Py_ssize_t>done,
                                  _fault_info(&rec, <uintptr_t>d.buf, <uintptr_t>addr))
            return size
        finally:
            _munmap(addr, <size_t>size)
    finally:
        if have_r:
            PyBuffer_Release(&r)
        PyBuffer_Release(&d)


cdef extern from "<fcntl.h>" nogil:
    int _openat "openat"(int dir_fd, const char *path, int flags)
    int _posix_fadvise "posix_fadvise"(int fd, long offset, long length, int advice)
    int O_RDONLY, O_NONBLOCK, O_NOCTTY, O_CLOEXEC, O_NOFOLLOW, POSIX_FADV_DONTNEED

cdef extern from "<unistd.h>" nogil:
    int _close "close"(int fd)
    long _syscall "syscall"(long number, ...)

# cachestat(2), Linux 6.5 (451 on every architecture; newer than Debian 12's headers)
cdef struct _cachestat_range:
    uint64_t off
    uint64_t len
cdef struct _cachestat:
    uint64_t nr_cache, nr_dirty, nr_writeback, nr_evicted, nr_recently_evicted
cdef long SYS_CACHESTAT = 451



cdef bint _all_cached(int fd, size_t offset, size_t size) noexcept nogil:
    """Whether every page of fd's bytes [offset, offset + size) (size > 0) is in
    the page cache, by one cachestat(2) (cheaper than mapping the file's pages in
    mincore(2)); False also where the kernel cannot say (older than 6.5, or not
    ours to see)."""
    cdef _cachestat_range r
    cdef _cachestat cs
    r.off = offset
    r.len = size
    return _syscall(SYS_CACHESTAT, fd, &r, &cs, 0) == 0 and \
        cs.nr_cache >= (offset + size - 1) // _PAGE - offset // _PAGE + 1


def _cached(int fd, Py_ssize_t offset, Py_ssize_t size):
    """Whether every page of fd's bytes [offset, offset + size) is in the page
    cache; False also where the kernel cannot say."""
    return offset >= 0 and size > 0 and _all_cached(fd, <size_t>offset, <size_t>size)


def _read_in(uintptr_t address, size_t length):
    """Whether every page of the mapping [address, address + length) is in the page
    cache with its data read (mincore(2)); False where it cannot say."""
    cdef unsigned char vec[512]
    cdef size_t n, i
    while length:
        n = min(length, 512 * _PAGE)
        if _mincore(<void *>address, n, vec) != 0:
            return False
        for i in range((n + _PAGE - 1) // _PAGE):
            if not vec[i] & 1:
                return False
        address += n
        length -= n
    return True

from cpython.mem cimport PyMem_Free, PyMem_Malloc

cdef extern from "Python.h":
    object PyUnicode_EncodeFSDefault(object text)
from libc.string cimport memset

# What _scan_small says of one name.
cdef enum:
    SMALL_CLEAN = 0         # read whole, no fault, unchanged (its size beside)
    SMALL_ELSEWHERE = 1     # not for this path: the caller's own path decides
    SMALL_FAULTED = 2       # the read faulted: the caller's careful path judges it

# What _scan_one read of one name (size when opened; where a read faulted, and how).
cdef struct _small_read:
    long long size
    size_t copied
    uintptr_t src_at
    mcsafe_fault rec

# The mappings of clean small files _scan_small unmaps together at the end of a call:
# the kernel places consecutive mappings next to each other (below the last), and one
# munmap(2) per run of them spares a system call per file (10,000 cached 4 KiB files:
# 57 -> 47 ms). A window remapped with MAP_FIXED measured no faster, and a MAP_FIXED
# that fails may leave a hole another thread can map into. At most a call's budget of
# bytes (and its names) stays mapped until it returns.
cdef struct _kept:
    char **at
    size_t *length
    Py_ssize_t n


cdef void _unmap_kept(_kept *kept) noexcept nogil:
    """Unmap every kept mapping, a run of adjacent ones (each just below the
    previous) per munmap(2): only ranges mapped here, nothing between them."""
    cdef Py_ssize_t i = 0, j
    cdef char *low
    cdef size_t length
    while i < kept.n:
        low, length = kept.at[i], kept.length[i]
        j = i + 1
        while j < kept.n and kept.at[j] + kept.length[j] == low:
            low = kept.at[j]
            length += kept.length[j]
            j += 1
        _munmap(low, length)
        i = j
    kept.n = 0


cdef void _evict_cold(int fd, const unsigned char *vec, size_t pages) noexcept nogil:
    """Give back the pages of fd a read brought in: those vec says were not cached
    before (as mcsafe.pagecache.evict_cold), a run of them per fadvise."""
    cdef size_t i = 0, run
    while i < pages:
        run = 0
        while i + run < pages and not vec[i + run]:
            run += 1
        if run:
            _posix_fadvise(fd, <long>(i * _PAGE), <long>(run * _PAGE), POSIX_FADV_DONTNEED)
        i += run + 1


cdef int _scan_one(int dir_fd, const char *name, int flags, void *sink, size_t sink_len,
                   long long max_size, long long root_dev, unsigned int euid, bint fowner,
                   unsigned char *vec, _small_read *got, _kept *kept) noexcept nogil:
    """One small file read whole through a mapping of its own, as _read_mapped
    reads it; SMALL_ELSEWHERE for anything but a regular file of one link, up to
    max_size bytes, on root_dev (if >= 0), that maps (and, with vec, whose page
    cache we may see: owner or CAP_FOWNER); SMALL_FAULTED where the read faults
    (got says where); SMALL_CLEAN where it reads whole and keeps its size and
    modification time meanwhile. With vec, the pages the read brought into the
    page cache are evicted again whichever way it ended. A mapping that brought
    nothing in and read clean is left to kept (its caller unmaps it); every
    other is unmapped here."""
    cdef _stat st, now
    cdef void *addr
    cdef size_t pages, length
    cdef int verdict = SMALL_ELSEWHERE
    cdef int fd = _openat(dir_fd, name, flags)
    if fd < 0:
        return SMALL_ELSEWHERE
    if _fstat(fd, &st) != 0 or not S_ISREG(st.st_mode) or st.st_nlink != 1 \
            or st.st_size > max_size or (root_dev >= 0 and st.st_dev != <unsigned long long>root_dev) \
            or (vec != NULL and not fowner and st.st_uid != euid):
        _close(fd)
        return SMALL_ELSEWHERE
    got.size = st.st_size
    got.copied = <size_t>st.st_size
    if st.st_size > 0:
        length = <size_t>st.st_size
        # All cached (the common case): the read brings nothing in, nothing to give back.
        # (Not MAP_POPULATE, one fault less per file: on Linux 6.18, populating a FUSE
        # page whose read had failed asked the server again and again, and had not
        # returned after 120 s; MADV_POPULATE_READ retries once and fails.)
        if vec != NULL and _all_cached(fd, 0, length):
            vec = NULL
        addr = _mmap(NULL, length, PROT_READ, MAP_SHARED, fd, 0)
        if addr == MAP_FAILED:
            _close(fd)
            return SMALL_ELSEWHERE
        got.src_at = <uintptr_t>addr
        pages = (length + _PAGE - 1) // _PAGE
        if vec != NULL and _mincore(addr, length, vec) != 0:
            memset(vec, 1, pages)           # (as _read_mapped: then evict nothing)
        got.copied = _through(sink, sink_len, <const char *>addr, length, &got.rec)
        if vec == NULL and got.copied == length:
            kept.at[kept.n] = <char *>addr
            kept.length[kept.n] = pages * _PAGE
            kept.n += 1
        else:
            _munmap(addr, length)
        if vec != NULL:                     # give back what we brought in, fault or not
            _evict_cold(fd, vec, pages)
        if got.copied < length:
            _close(fd)
            return SMALL_FAULTED
    if _fstat(fd, &now) == 0 and now.st_size == st.st_size \
            and now.st_mtim.tv_sec == st.st_mtim.tv_sec \
            and now.st_mtim.tv_nsec == st.st_mtim.tv_nsec:
        verdict = SMALL_CLEAN
    _close(fd)
    return verdict


def _scan_small(int dir_fd, list names, bint follow, sink, Py_ssize_t max_size,
                long long root_dev, residency, unsigned int euid, bint fowner,
                Py_ssize_t budget):
    """Files of a directory read whole, each as _read_mapped reads it (mapped,
    copied through sink by the table-driven copy, unmapped), in one call with the
    GIL released: mcsafe scan's reader of a tree of small files, where per-file
    cost decides. names: opened relative to dir_fd (symbolic links followed only
    if follow). residency: None, or a buffer of a byte per page of max_size: then
    the pages each read brought into the page cache are evicted again (also
    where it faulted, so that the caller finds the page cache as it was).

    Returns a list beside names, as _read_mapped answers: the file's size where
    it was read whole without a fault and its size and modification time did not
    move meanwhile; the CopyResult of the first fault where its read faulted (its
    src offset is the file offset; the caller's careful path judges the file,
    without reading it this way again); None where this path does not decide (not
    a regular file of one link, larger than max_size, on another device than
    root_dev (-1: any), a change, a page cache it may not see, an error): the
    caller's own path reads those. It stops after the file that brings the bytes
    it read or faulted in to budget or more (the caller may be asked to stop
    meanwhile, as between a large file's chunks): the list is then shorter than
    names, and the rest is not touched."""
    cdef Py_buffer d, r
    cdef bint have_r = False
    cdef Py_ssize_t n = len(names), i, done = 0
    cdef long long total = 0
    cdef const char **paths = NULL
    cdef _small_read *reads = NULL
    cdef int *verdicts = NULL
    cdef _kept kept
    cdef int flags = O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC | (0 if follow else O_NOFOLLOW)
    kept.at, kept.length, kept.n = NULL, NULL, 0
    if not _own_ok:
        raise RuntimeError(f"mcsafe cannot recover faults: {_own_status}")
    encoded = [PyUnicode_EncodeFSDefault(name) for name in names]
    have_r = _sink_buffers(sink, residency, max_size, &d, &r)
    try:
        if max_size >= MASK_CHECK and not _ready():
            _make_ready(1)
        paths = <const char **>PyMem_Malloc(n * sizeof(char *) + 1)
        reads = <_small_read *>PyMem_Malloc(n * sizeof(_small_read) + 1)
        verdicts = <int *>PyMem_Malloc(n * sizeof(int) + 1)
        kept.at = <char **>PyMem_Malloc(n * sizeof(char *) + 1)
        kept.length = <size_t *>PyMem_Malloc(n * sizeof(size_t) + 1)
        kept.n = 0
        if paths == NULL or reads == NULL or verdicts == NULL or kept.at == NULL \
                or kept.length == NULL:
            raise MemoryError
        for i in range(n):
            paths[i] = <bytes>encoded[i]
        with nogil:
            while done < n and total < budget:
                verdicts[done] = _scan_one(dir_fd, paths[done], flags, d.buf, <size_t>d.len,
                                           max_size, root_dev, euid, fowner,
                                           <unsigned char *>r.buf if have_r else NULL,
                                           &reads[done], &kept)
                if verdicts[done] != SMALL_ELSEWHERE:
                    total += reads[done].size
                done += 1
            _unmap_kept(&kept)
        out = [None] * done
        for i in range(done):
            if verdicts[i] == SMALL_CLEAN:
                out[i] = reads[i].size
            elif verdicts[i] == SMALL_FAULTED:
                out[i] = CopyResult(<Py_ssize_t>reads[i].copied,
                                    _fault_info(&reads[i].rec, <uintptr_t>d.buf,
                                                reads[i].src_at))
        return out
    finally:
        PyMem_Free(paths)
        PyMem_Free(reads)
        PyMem_Free(verdicts)
        PyMem_Free(kept.at)
        PyMem_Free(kept.length)
        if have_r:
            PyBuffer_Release(&r)
        PyBuffer_Release(&d)


def _copy_path(path, dst, src, Py_ssize_t repeat=1):
    """Test and benchmark hook: copy src into dst with one path of copy_paths()
    only, repeat times (the result is the last one's)."""
    cdef Py_buffer d, s
    cdef mcsafe_fault rec
    cdef size_t left = 0, count
    cdef Py_ssize_t i
    names = copy_paths()
    if path not in names:
        raise ValueError(f"path must be one of {names}, not {path!r}")
    cdef int index = names.index(path)
    if not _own_ok:
        raise RuntimeError(f"mcsafe cannot recover faults: {_own_status}")
    _acquire(dst, src, &d, &s)
    try:
        count = <size_t>(s.len if s.len < d.len else d.len)
        rec.side = 0
        with nogil:
            for i in range(repeat):
                left = mcsafe_copy_path(index, d.buf, s.buf, count, &rec)
        done = count - left
        return CopyResult(done, _fault_info(&rec, <uintptr_t>d.buf, <uintptr_t>s.buf)
                          if left else None)
    finally:
        PyBuffer_Release(&s)
        PyBuffer_Release(&d)


# -- the memory calls MappedFile makes ------------------------------------------
# Python's mmap module refuses to map past the end of a file (a file that can
# grow is mapped past its end) and ctypes costs a few microseconds a call: these
# are what a short-lived MappedFile spends its opening and closing on.

cdef extern from "<sys/mman.h>" nogil:
    void *_mmap "mmap"(void *addr, size_t length, int prot, int flags, int fd, long offset)
    int _munmap "munmap"(void *addr, size_t length)
    int _madvise "madvise"(void *addr, size_t length, int advice)
    int _msync "msync"(void *addr, size_t length, int flags)
    void *MAP_FAILED

cdef extern from "<sys/vfs.h>" nogil:
    struct _statfs "statfs":
        long f_type
    int _fstatfs "fstatfs"(int fd, _statfs *buf)


def _map(size_t length, int prot, int flags, int fd, long offset):
    """mmap(2) at an address the kernel chooses: the address; OSError on failure."""
    cdef void *at
    with nogil:
        at = _mmap(NULL, length, prot, flags, fd, offset)
    if at == MAP_FAILED:
        PyErr_SetFromErrno(OSError)
        return None
    return <uintptr_t>at


def _unmap(uintptr_t address, size_t length):
    """munmap(2); OSError on failure."""
    if _munmap(<void *>address, length) != 0:
        PyErr_SetFromErrno(OSError)


def _advise(uintptr_t address, size_t length, int advice):
    """madvise(2): 0, or the errno it failed with."""
    cdef int rc
    with nogil:
        rc = _madvise(<void *>address, length, advice)
    return c_errno if rc != 0 else 0


def _sync(uintptr_t address, size_t length, int flags):
    """msync(2); OSError on failure."""
    cdef int rc
    with nogil:
        rc = _msync(<void *>address, length, flags)
    if rc != 0:
        PyErr_SetFromErrno(OSError)


def _fs_type(int fd):
    """The statfs(2) f_type of fd's file system, or 0 if fstatfs fails."""
    cdef _statfs st
    if _fstatfs(fd, &st) != 0:
        return 0
    return <unsigned long>st.f_type & 0xFFFFFFFF


cdef extern from "<fcntl.h>" nogil:
    int _c_fallocate "fallocate"(int fd, int mode, long offset, long length)


# Here, not through ctypes: the rescue's mapfile reserves room with it at every save,
# and ctypes would be 2 ms of the command's start. (A short docstring: bytes of the
# extension, which has a size cap.)
def _fallocate(int fd, int mode, long offset, long length, /):
    """fallocate(2) with its mode flags; OSError on failure."""
    cdef int rc
    with nogil:
        rc = _c_fallocate(fd, mode, offset, length)
    if rc != 0:
        PyErr_SetFromErrno(OSError)


def _word_at(uintptr_t address):
    """The 8-byte word at address through the table-driven copy (native byte
    order), or None if reading it faults."""
    cdef mcsafe_fault rec
    cdef uint64_t word
    if mcsafe_copy(&word, <const void *>address, 8, &rec) != 8:
        return None
    return word


def _set_word(uintptr_t address, uint64_t word):
    """Write an 8-byte word at address through the table-driven copy: False if
    writing it faults."""
    cdef mcsafe_fault rec
    return mcsafe_copy(<void *>address, &word, 8, &rec) == 8


cdef class _Memory:
    """[address, address + length) as a writable buffer: the object a mapping's
    memoryview is made from. It owns nothing (the mapping is unmapped by whoever
    made it, once every view of it is released)."""
    cdef readonly uintptr_t address
    cdef readonly Py_ssize_t length

    def __cinit__(self, uintptr_t address, Py_ssize_t length):
        if length < 0:
            raise ValueError(f"negative length {length}")
        self.address, self.length = address, length

    def __getbuffer__(self, Py_buffer *view, int flags):
        PyBuffer_FillInfo(view, self, <void *>self.address, self.length, 0, flags)

    def __releasebuffer__(self, Py_buffer *view):
        pass


def install():
    """Put mcsafe in front of the SIGBUS and SIGSEGV handlers installed now; idempotent.

    Each place mcsafe takes in front of another handler forwards to that handler
    (docs/HANDLER.md); raises RuntimeError once all of a signal's generations are
    taken (48: one per distinct handler mcsafe was put in front of)."""
    if mcsafe_install() != 0:
        import errno
        import os
        err = errno_value()
        if err == errno.ENOSPC:
            raise RuntimeError(f"mcsafe cannot put itself in front of the signal handlers "
                               f"again: all {MCSAFE_GENERATIONS} generations are taken (one "
                               "per distinct handler it was put in front of)")
        raise OSError(err, f"sigaction failed: {os.strerror(err)}")


cdef int errno_value() noexcept:
    return c_errno


def handler_installed():
    """Whether mcsafe is in front of both the SIGBUS and the SIGSEGV handlers (no
    handler was installed over it since it was last installed)."""
    return bool(mcsafe_handler_active())


def _generations_taken():
    """How many generations install() has taken, (SIGSEGV, SIGBUS), of GENERATIONS."""
    return mcsafe_generations_taken(SIGSEGV), mcsafe_generations_taken(SIGBUS)


#: How many places in front of other handlers install() can take, per signal.
GENERATIONS = MCSAFE_GENERATIONS


def claimed_faults():
    """How many faults the handler has claimed in this process."""
    return mcsafe_claimed_count()


def published_table_count():
    """How many tables the handler searches (this module's own, and each register()ed)."""
    return mcsafe_published()


def table_status():
    """'ok', or why this module's own table was refused."""
    return _own_status


def _register_table(uintptr_t address, size_t size, str name):
    """Validate and publish the table at address; raises ValueError with the reason."""
    cdef char err[256]
    if mcsafe_register(<const void *>address, size, name.encode()[:63], err, sizeof(err)) != 0:
        raise ValueError((<bytes>err).decode("utf-8", "replace"))


def _unregister_table(uintptr_t address):
    """Drop one registration of the table at address; False if none was held."""
    return mcsafe_unregister(<const void *>address) == 0


def _register_file_table(bytes table, uintptr_t anchor, str name):
    """Validate and publish a table read from the file of the loaded object at anchor."""
    cdef char err[256]
    if mcsafe_register_file_table(<const char *>table, len(table), anchor, name.encode()[:63],
                                  err, sizeof(err)) != 0:
        raise ValueError((<bytes>err).decode("utf-8", "replace"))


def _loaded_objects():
    """The loaded objects as (name, bias, anchor, program headers, build-id or None)."""
    cdef mcsafe_objects objs
    cdef size_t i
    if mcsafe_loaded_objects(&objs) != 0:
        mcsafe_free_objects(&objs)
        raise MemoryError("cannot list the loaded objects")
    try:
        return [((<bytes>objs.list[i].name).decode("utf-8", "surrogateescape"),
                 objs.list[i].bias, objs.list[i].anchor,
                 objs.list[i].phdrs[:objs.list[i].phdrs_size],
                 objs.list[i].build_id[:objs.list[i].build_id_size]
                 if objs.list[i].build_id_size else None)
                for i in range(objs.n)]
    finally:
        mcsafe_free_objects(&objs)


def poison_log():
    """Asynchronous poison notices (BUS_MCEERR_AO) seen by the handler, oldest first,
    as PoisonNotice(address, time); the log keeps the newest 64."""
    cdef mcsafe_ao_record recs[64]
    cdef unsigned long total
    cdef size_t n = mcsafe_ao_read(recs, 64, &total)
    return [PoisonNotice(recs[i].addr, recs[i].sec + recs[i].nsec / 1e9) for i in range(n)]


def buffer_address(obj):
    """The address of a buffer's first byte (for injecting faults into it)."""
    cdef Py_buffer b
    PyObject_GetBuffer(obj, &b, PyBUF_SIMPLE)
    try:
        return <uintptr_t>b.buf
    finally:
        PyBuffer_Release(&b)


cdef void _register_own():
    global _own_status, _own_ok
    cdef char err[256]
    if mcsafe_register_own(err, sizeof(err)) == 0:
        _own_status, _own_ok = "ok", True
    else:
        _own_status = (<bytes>err).decode("utf-8", "replace")


mcsafe_arch_init()
_register_own()
install()


# -- one-shot reads of a whole file ---------------------------------------------
# arrays.load reads a file once, start to end, and closes it: none of
# MappedFile's machinery for a file that lives on (room to grow, the probe page,
# the size asked around copies) pays for itself there. These open and map
# exactly the file in one call and prove each copy by the file's stamp asked
# after it (mcsafe/mapped/once.py).

cdef extern from "<fcntl.h>" nogil:
    int _open "open"(const char *path, int flags)
    int O_RDONLY, O_CLOEXEC, O_NONBLOCK, O_NOCTTY

cdef extern from "<unistd.h>" nogil:
    int _close "close"(int fd)

cdef extern from "<sys/stat.h>" nogil:
    struct _stat_full "stat":
        unsigned int st_mode
        long long st_size
        _timespec st_mtim
        _timespec st_ctim
    int _fstat_full "fstat"(int fd, _stat_full *buf)
    bint S_ISREG(unsigned int mode)


cdef inline int64_t _ns(_timespec t) noexcept nogil:
    return <int64_t>t.tv_sec * 1000000000 + t.tv_nsec


def _open_once(bytes path, frozenset refuse, /):
    """Open `path` read-only and map exactly its bytes, shared and read-only:
    (fd, size, address, mtime_ns, ctime_ns); the errno if open(2) failed. None
    (nothing left open) for what MappedFile must judge: not a regular file, an
    empty one, a file system in `refuse` (statfs f_type), a mapping the kernel
    refused. (MAP_POPULATE measured no faster than the faults, with
    fault-around, for 64 KiB to 16 MiB.)"""
    cdef int fd
    cdef _stat_full st
    cdef _statfs fs
    cdef void *at
    cdef const char *cpath = path
    with nogil:
        fd = _open(cpath, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY)
    if fd < 0:
        return c_errno
    if _fstat_full(fd, &st) != 0 or not S_ISREG(st.st_mode) or st.st_size <= 0 or \
            (_fstatfs(fd, &fs) == 0 and (<unsigned long>fs.f_type & 0xFFFFFFFF) in refuse):
        _close(fd)
        return None
    with nogil:
        at = _mmap(NULL, <size_t>st.st_size, PROT_READ, MAP_SHARED, fd, 0)
    if at == MAP_FAILED:
        _close(fd)
        return None
    return fd, <Py_ssize_t>st.st_size, <uintptr_t>at, _ns(st.st_mtim), _ns(st.st_ctim)


def _read_once(dst, uintptr_t address, Py_ssize_t size, int fd, Py_ssize_t offset,
               int64_t mtime_ns, int64_t ctime_ns, /):
    """Fill dst from file offset `offset` (>= 0) of a file _open_once mapped (`size`
    bytes at `address`, its times as it gave them) through the table-driven copy:
    the count (short only at that size), -1 if the file changed since it was
    opened (the copy may have run: count none of it), or the CopyResult of a fault.

    The proof that a copy read only the file's bytes is the file unchanged after
    it: its size, mtime and ctime (one fstat) as when it was opened. A cut, and
    any write after it, changes them (timestamps are fine-grained once asked, on
    file systems with multigrain timestamps: ext4, xfs, btrfs, tmpfs)."""
    cdef mcsafe_fault rec
    cdef Py_buffer d
    cdef Py_ssize_t count, done
    cdef const char *sp
    cdef _stat_full st
    if not _own_ok:
        raise RuntimeError(f"mcsafe cannot recover faults: {_own_status}")
    if offset < 0:
        raise ValueError("negative offset")
    PyObject_GetBuffer(dst, &d, PyBUF_WRITABLE)
    try:
        count = size - offset if d.len > size - offset else d.len
        if count <= 0:
            return 0
        sp = <const char *>address + offset
        if count >= MASK_CHECK and mcsafe_faults_blocked():
            _refuse_blocked()
        if count >= GIL_RELEASE:
            with nogil:
                done = <Py_ssize_t>mcsafe_copy(d.buf, sp, <size_t>count, &rec)
        else:
            done = <Py_ssize_t>mcsafe_copy(d.buf, sp, <size_t>count, &rec)
        if done < count:
            return CopyResult(done, _fault_info(&rec, <uintptr_t>d.buf, <uintptr_t>sp))
        if _fstat_full(fd, &st) == 0 and st.st_size == size and \
                _ns(st.st_mtim) == mtime_ns and _ns(st.st_ctim) == ctime_ns:
            return count
        return -1
    finally:
        PyBuffer_Release(&d)


# -- the new array's pages, before the copy --------------------------------------

cdef extern from "<unistd.h>" nogil:
    long _sysconf "sysconf"(int name)
    int _SC_PAGESIZE

# MADV_POPULATE_WRITE (asm-generic, every architecture), which older headers lack
cdef int MADV_POPULATE_WRITE_ = 23
cdef uintptr_t PAGE_MASK = <uintptr_t>_sysconf(_SC_PAGESIZE) - 1


def _prefault(dst, /):
    """Fault in the whole pages of a writable buffer about to be filled whole (a
    new array): MADV_POPULATE_WRITE, one pass in the kernel where the copy would
    take a page fault per page (here a fresh 1 MiB array filled by a copy takes
    0.7x the time this way). Memory the allocator hands out again is mapped
    already, and the advice would only walk it (about 30 ns a page): if the last
    whole page is present (mincore), nothing is done. Kernels without the advice
    (before Linux 5.14) leave the pages to the copy's faults; so does any page
    the advice fails on (the copy then meets it as it would have)."""
    cdef Py_buffer d
    cdef uintptr_t start, end
    cdef unsigned char present = 0
    PyObject_GetBuffer(dst, &d, PyBUF_WRITABLE)
    start = (<uintptr_t>d.buf + PAGE_MASK) & ~PAGE_MASK
    end = (<uintptr_t>d.buf + <uintptr_t>d.len) & ~PAGE_MASK
    if end > start and not (_mincore(<void *>(end - PAGE_MASK - 1), 1, &present) == 0
                            and present & 1):
        with nogil:
            _madvise(<void *>start, end - start, MADV_POPULATE_WRITE_)
    PyBuffer_Release(&d)
