"""The FUSE server behind mcsafe.inject.failing_file: one file whose bad ranges fail.

Run as a script (never imported by mcsafe): it needs only the standard library
and mfusepy, and runs in a process of its own, because a reader whose page
fault waits for this server while holding its interpreter's GIL would
deadlock a server thread in the same interpreter.

    python _failfs_server.py MOUNTPOINT BACKING NAME CONTROL_FD OWNER_PID

serves BACKING (a regular file elsewhere) as MOUNTPOINT/NAME. A read or write
request that touches a page holding a bad byte fails with EIO, as a failing
disk's sector does: the kernel then fails read(2) with EIO and a mapped read of
the page with SIGBUS, in every process. Everything else is passed to BACKING.

CONTROL_FD is one end of a socket pair, one JSON object a line each way:

    {"op": "set_bad", "ranges": [[start, end], ...]}  -> {"ok": true}
    {"op": "on_failed_read", "changes": [["append", HEX] | ["write", OFFSET, HEX]
                                         | ["truncate", SIZE]]}  -> {"ok": true}
    {"op": "stats"}   -> {"ok": true, "reads": .., "failed_reads": .., ...}
    {"op": "hold"}    -> {"ok": true}   the next failing reads wait (after their
                                        changes) until {"op": "release"}
    {"op": "hold_writes", "from": N}  -> {"ok": true}  the next writes past offset N
                      wait until {"op": "release_writes"} (from None: none wait)
    {"op": "wait_held_write", "timeout": S}  -> {"ok": true} once a write waits
                      ({"ok": false} if none does within S seconds)
    {"op": "hold_getattr", "limit": S}  -> {"ok": true}  the next getattrs of the file
                      wait until {"op": "release_getattr"}, or S seconds at most
    {"op": "wait_held_getattr", "timeout": S}  -> {"ok": true, "waiting": N} once a
                      getattr waits, N of them waiting as the reply is made
                      ({"ok": false} if none does within S seconds)
    {"op": "fail_sync", "fsync": N, "times": T, "flush": M}  -> {"ok": true}
                      the next T fsyncs (T < 0: every one) fail with errno N, and
                      every flush (close(2) of a descriptor) with M (0: none fail)

The server says {"ready": true} once mounted, and unmounts and exits when the
control socket closes (the client closed it, exited or was killed), when
OWNER_PID (the process that asked for the file, this one's parent) ends, on
SIGTERM, SIGINT or SIGHUP (libfuse's handlers), and when the mount is taken
away (fusermount3 -u). ``auto_unmount`` leaves a fusermount3 watchdog that
unmounts even if this process is killed outright.

The owner is watched by a pidfd as well as by the socket: a child forked from
the owner holds a copy of the socket, so after kill -9 of the owner the socket
may never see EOF; a pidfd becomes readable when the owner's whole process
ends (PR_SET_PDEATHSIG would fire when the thread that started us ends).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import json
import os
import select
import socket
import stat
import subprocess
import sys
import threading
from typing import Any

# Debian's fuse3 gives libfuse3.so.3; mfusepy would take libfuse 2 first.
if "FUSE_LIBRARY_PATH" not in os.environ:
    os.environ["FUSE_LIBRARY_PATH"] = ctypes.util.find_library("fuse3") or "libfuse3.so.3"

import mfusepy  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")


class FailingFS(mfusepy.Operations):
    """A root directory holding one file, NAME, backed by BACKING."""

    use_ns = True
    # Every attribute is private: mfusepy takes any attribute named like a FUSE
    # operation (lock, read, ...) for that operation.

    def __init__(self, backing: str, name: str, control: socket.socket, mountpoint: str,
                 owner: int) -> None:
        self._backing = backing
        self._name = "/" + name
        self._control = control
        self._mountpoint = mountpoint
        self._owner = owner
        self._fd = os.open(backing, os.O_RDWR | os.O_CLOEXEC)
        self._bad: list[tuple[int, int]] = []
        self._counts = {"reads": 0, "failed_reads": 0, "writes": 0, "failed_writes": 0,
                       "truncates": 0, "getattrs": 0}
        self._lock = threading.Lock()
        self._on_failed_read: list[list[Any]] = []
        self._held = threading.Event()
        self._held.set()
        self._write_hold: tuple[int, threading.Event] | None = None
        self._write_held = threading.Event()    # a writer waits in write()
        self._getattr_hold: tuple[threading.Event, float] | None = None
        self._getattr_held = threading.Event()  # a getattr waits in getattr()
        self._getattrs_waiting = 0
        self._fsync_errno = self._fsync_times = self._flush_errno = 0
        self._fuse = ctypes.c_void_p()

    # -- the bad ranges ----------------------------------------------------

    def _first_bad(self, offset: int, size: int) -> int | None:
        """The start of the first page of [offset, offset + size) that holds a bad
        byte (bad ranges fail whole pages, as a disk fails whole sectors)."""
        for s, e in self._bad:
            first = max(s // PAGE * PAGE, offset // PAGE * PAGE)
            if first < offset + size and first < e:
                return max(first, offset)
        return None

    def _apply(self, change: list[Any]) -> None:
        """Change the backing file behind the kernel's back, as another client of a
        network file system would; the kernel sees the new size and times at its
        next getattr (attr_timeout=0)."""
        op, *args = change
        if op == "write":
            os.pwrite(self._fd, bytes.fromhex(args[1]), args[0])
        elif op == "append":
            os.pwrite(self._fd, bytes.fromhex(args[0]), os.fstat(self._fd).st_size)
        elif op == "truncate":
            os.ftruncate(self._fd, args[0])

    # -- FUSE operations -----------------------------------------------------

    def init(self, path: str) -> None:
        libfuse = mfusepy._libfuse
        self._fuse = ctypes.c_void_p(libfuse.fuse_get_context().contents.fuse)
        threading.Thread(target=self._serve_control, daemon=True).start()
        threading.Thread(target=self._watch_owner, daemon=True).start()

    def getattr(self, path: str, fh: int | None = None) -> dict[str, int]:
        if path == "/":
            return {"st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2}
        if path != self._name:
            raise mfusepy.FuseOSError(errno.ENOENT)
        with self._lock:
            self._counts["getattrs"] += 1
            hold = self._getattr_hold
            if hold is not None:
                self._getattrs_waiting += 1
                self._getattr_held.set()
        if hold is not None:
            hold[0].wait(hold[1])   # a stat held in the server (hold_getattr)
            with self._lock:
                self._getattrs_waiting -= 1
        st = os.fstat(self._fd)
        return {"st_mode": stat.S_IFREG | 0o644, "st_nlink": 1, "st_size": st.st_size,
                "st_blocks": st.st_blocks, "st_blksize": PAGE,
                "st_atime": st.st_atime_ns, "st_mtime": st.st_mtime_ns,
                "st_ctime": st.st_ctime_ns, "st_uid": os.getuid(), "st_gid": os.getgid()}

    def readdir(self, path: str, fh: int) -> list[str]:
        if path != "/":
            raise mfusepy.FuseOSError(errno.ENOTDIR)
        return [".", "..", self._name[1:]]

    def open(self, path: str, flags: int) -> int:
        if path != self._name:
            raise mfusepy.FuseOSError(errno.ENOENT)
        return 0

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        # A short reply would tell the kernel the file ends there: a request that
        # touches a bad page fails whole (the kernel then reads page by page).
        with self._lock:
            fails = self._first_bad(offset, size) is not None
            self._counts["reads"] += 1
            self._counts["failed_reads"] += fails
            if fails:
                for change in self._on_failed_read:
                    self._apply(change)
            held = self._held
        if fails:
            held.wait()         # a reader held inside its failing read (hold)
            raise mfusepy.FuseOSError(errno.EIO)
        return os.pread(self._fd, size, offset)

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        # As a disk does: the bytes before the first bad page, EIO if there are none.
        with self._lock:
            bad = self._first_bad(offset, len(data))
            self._counts["writes"] += 1
            self._counts["failed_writes"] += bad is not None
            hold = self._write_hold
            if hold is not None and offset + len(data) > hold[0]:
                self._write_held.set()
            else:
                hold = None
        if hold is not None:
            hold[1].wait()      # a writer held inside its write (hold_writes)
        if bad is not None:
            if bad <= offset:
                raise mfusepy.FuseOSError(errno.EIO)
            data = data[:bad - offset]
        return os.pwrite(self._fd, data, offset)

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        with self._lock:
            self._counts["truncates"] += 1
        os.ftruncate(self._fd, length)
        return 0

    def flush(self, path: str, fh: int) -> int:
        if self._flush_errno:
            raise mfusepy.FuseOSError(self._flush_errno)
        return 0

    def release(self, path: str, fh: int) -> int:
        return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        with self._lock:            # as a disk that lost a write: fsync(2) fails
            err = self._fsync_errno if self._fsync_times else 0
            self._fsync_times -= self._fsync_times > 0
        if err:
            raise mfusepy.FuseOSError(err)
        (os.fdatasync if datasync else os.fsync)(self._fd)
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        st = os.fstatvfs(self._fd)
        return {k: getattr(st, k) for k in ("f_bsize", "f_frsize", "f_blocks", "f_bfree",
                                            "f_bavail", "f_files", "f_ffree", "f_namemax")}

    # -- the control socket --------------------------------------------------

    def _serve_control(self) -> None:
        reader = self._control.makefile("rb")
        try:
            self._reply({"ready": True, "pid": os.getpid()})
            for line in reader:
                self._reply(self._command(json.loads(line)))
        except (OSError, ValueError):
            pass
        finally:
            self._end()     # the client is gone or said goodbye

    def _watch_owner(self) -> None:
        try:
            pidfd = os.pidfd_open(self._owner)
        except ProcessLookupError:
            self._end()
        except OSError:     # no pidfd (Linux < 5.3): the control socket alone tells
            return
        if os.getppid() == self._owner:     # else the pid may be another's already
            select.select([pidfd], [], [])
        self._end()

    def _end(self) -> None:
        """Take the mount away and end this process, which ends the connection for
        any reader that still has the file open (its next uncached page fails, as
        a disk pulled out)."""
        subprocess.run(["fusermount3", "-u", "-z", self._mountpoint],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        remove_made(self._backing, self._mountpoint)
        os._exit(0)

    def _reply(self, obj: dict[str, object]) -> None:
        self._control.sendall(json.dumps(obj).encode() + b"\n")

    def _command(self, cmd: dict[str, Any]) -> dict[str, object]:
        op = cmd.get("op")
        if op == "set_bad":
            ranges = sorted((int(s), int(e)) for s, e in cmd["ranges"])
            with self._lock:
                self._bad = [(s, e) for s, e in ranges if e > s]
            # Pages already cached were read while good: drop them (and unmap them
            # from every mapping), so that the new ranges fail from now on.
            mfusepy._libfuse.fuse_invalidate_path(self._fuse, self._name.encode())
            return {"ok": True}
        if op == "on_failed_read":
            with self._lock:
                self._on_failed_read = list(cmd["changes"])
            return {"ok": True}
        if op == "hold":
            with self._lock:
                self._held = threading.Event()
            return {"ok": True}
        if op == "release":
            self._held.set()
            return {"ok": True}
        if op == "hold_writes":
            with self._lock:
                if self._write_hold is not None:
                    self._write_hold[1].set()
                self._write_hold = None if cmd["from"] is None else \
                    (int(cmd["from"]), threading.Event())
                self._write_held = threading.Event()
            return {"ok": True}
        if op == "wait_held_write":
            if self._write_held.wait(float(cmd["timeout"])):
                return {"ok": True}
            return {"ok": False, "error": "no write was held"}
        if op == "hold_getattr":
            with self._lock:
                self._getattr_hold = (threading.Event(), float(cmd["limit"]))
                self._getattr_held = threading.Event()
            return {"ok": True}
        if op == "release_getattr":
            with self._lock:
                hold, self._getattr_hold = self._getattr_hold, None
            if hold is not None:
                hold[0].set()
            return {"ok": True}
        if op == "wait_held_getattr":
            if self._getattr_held.wait(float(cmd["timeout"])):
                with self._lock:
                    return {"ok": True, "waiting": self._getattrs_waiting}
            return {"ok": False, "error": "no getattr was held"}
        if op == "fail_sync":
            with self._lock:
                self._fsync_errno, self._fsync_times, self._flush_errno = \
                    int(cmd["fsync"]), int(cmd["times"]), int(cmd["flush"])
            return {"ok": True}
        if op == "stats":
            with self._lock:
                return {"ok": True, **self._counts}
        return {"ok": False, "error": f"unknown op {op!r}"}


def remove_made(backing: str, mountpoint: str) -> None:
    """Remove the backing file, the mount point and the directory holding them,
    in case the client is gone (it removes them itself otherwise)."""
    for remove, what in ((os.unlink, backing), (os.rmdir, mountpoint),
                         (os.rmdir, os.path.dirname(mountpoint))):
        with contextlib.suppress(OSError):
            remove(what)


def main(argv: list[str]) -> int:
    mountpoint, backing, name, control_fd, owner = argv[1:6]
    mountpoint = os.path.abspath(mountpoint)     # libfuse changes to / before serving
    os.set_inheritable(int(control_fd), False)   # not into fusermount3
    control = socket.socket(fileno=int(control_fd))
    fs = FailingFS(backing, name, control, mountpoint, int(owner))
    mfusepy._libfuse.fuse_invalidate_path.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    try:
        mfusepy.FUSE(fs, mountpoint, foreground=True, fsname="mcsafe-failfs",
                     subtype="mcsafe-failfs", auto_unmount=True, kernel_cache=True,
                     attr_timeout=0, entry_timeout=0, negative_timeout=0, max_threads=8)
    except RuntimeError as exc:     # fuse_main's status: 8 after a signal ended the loop
        return int(exc.args[0]) if exc.args and isinstance(exc.args[0], int) else 1
    finally:
        remove_made(backing, mountpoint)    # unmounted now

    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
