"""A file that fails as a failing disk does, served by FUSE (mcsafe.inject.failing_file).

The server (_failfs_server.py) runs in a process of its own; this module starts
it, talks to it over a socket pair and takes the mount away again. Nothing here
is imported by ``import mcsafe``.
"""

from __future__ import annotations

import contextlib
import ctypes.util
import errno
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import weakref
from typing import Any, Iterator, Sequence

from .inject import InjectionUnavailable, pattern

SERVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_failfs_server.py")
TIMEOUT = 60.0      # seconds to wait for the server to answer before calling it stuck


def unavailable() -> str | None:
    """Why a failing file cannot be served here, or None if it can (as far as can be
    told without mounting)."""
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse on this machine (the fuse kernel module is not loaded)"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed (Debian package fuse3)"
    if importlib.util.find_spec("mfusepy") is None:
        return "mfusepy is not installed (pip install 'mcsafe[fuse]')"
    if ctypes.util.find_library("fuse3") is None:
        return "libfuse3 is not installed (Debian package fuse3)"
    return None


class FailingFile:
    """One file on a FUSE mount of its own whose bad ranges fail for every reader.

    A page holding a bad byte is bad as a whole, as a disk's sector is: read(2)
    of it fails with EIO (short before it), a mapped read of it dies of SIGBUS
    (BUS_ADRERR) in any process, and a write to it stops short before it (EIO
    at its first byte). Everything else behaves as a file on a local disk:
    reads and writes go through the page cache (mappable: no direct_io), and
    the kernel asks the server the file's size on every stat (attr_timeout=0).
    One difference, FUSE's own: when a stat finds the file's times changed, the
    kernel drops the file's cached pages (auto_inval_data), so after a write
    every page is read from the server again.

    ``resize`` and ``write`` change the file through the mount, as another
    process writing it would; ``on_failed_read`` changes it while a read that
    fails is held in the server, as another client of a network file system
    would. ``contents()`` reads the bytes behind the mount, bad ranges
    included: the truth an oracle compares with.
    """

    def __init__(self, data: bytes | int, bad: Sequence[tuple[int, int]] = (), *,
                 name: str = "data", dir: str | None = None) -> None:
        why = unavailable()
        if why is not None:
            raise InjectionUnavailable(why)
        self._tmp = tempfile.mkdtemp(prefix="mcsafe-failfs-", dir=dir)
        self.mountpoint = os.path.join(self._tmp, "mnt")
        self.backing = os.path.join(self._tmp, "backing")
        self.path = os.path.join(self.mountpoint, name)
        os.mkdir(self.mountpoint)
        with open(self.backing, "wb") as f:
            f.write(pattern(data) if isinstance(data, int) else bytes(data))
        self._lock = threading.Lock()           # one command at a time on the socket
        self._bad: list[tuple[int, int]] = []
        self._fds: list[int] = []             # the writer's descriptor, once open
        mine, theirs = socket.socketpair()
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        errors = tempfile.TemporaryFile()
        try:
            self._proc = subprocess.Popen(
                [sys.executable, SERVER, self.mountpoint, self.backing, name,
                 str(theirs.fileno()), str(os.getpid())],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, stdout=errors,
                stderr=errors, env=env, start_new_session=True)
        except BaseException:
            mine.close()
            errors.close()
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise
        finally:
            theirs.close()
        self._sock, self._reader = mine, mine.makefile("rb")
        self._closer = weakref.finalize(self, _shut_down, os.getpid(), self._proc, self._fds,
                                        self._sock, self._reader, self.mountpoint, self._tmp,
                                        errors)
        try:
            mine.settimeout(TIMEOUT)
            ready = self._reader.readline()
            if not ready:
                errors.seek(0)
                said = errors.read().decode(errors="replace").strip().splitlines()
                raise InjectionUnavailable(f"the FUSE server could not mount {self.mountpoint}: "
                                           + (said[-1] if said else "it said nothing"))
            self.pid: int = json.loads(ready)["pid"]
            self._fds.append(os.open(self.path, os.O_RDWR | os.O_CLOEXEC))
            if bad:
                self.set_bad(bad)
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        state = "closed" if not self._closer.alive else f"bad={self._bad}"
        return f"<FailingFile {self.path!r} {state}>"

    def __enter__(self) -> FailingFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Unmount, stop the server and remove the temporary directory. A reader
        that still has the file open then fails as on a disk pulled out."""
        self._closer()

    @property
    def closed(self) -> bool:
        return not self._closer.alive

    # -- the file, as a writer through the mount sees it ------------------------

    @property
    def size(self) -> int:
        """The file's size now."""
        return os.fstat(self._writer()).st_size

    def resize(self, size: int) -> None:
        """Cut or extend the file (ftruncate through the mount): pages past a cut
        fault for every mapping, as on a local file system."""
        os.ftruncate(self._writer(), size)

    def write(self, data: bytes, offset: int) -> int:
        """pwrite through the mount: the count written, short before a bad page;
        OSError EIO if the first byte's page is bad."""
        return os.pwrite(self._writer(), data, offset)

    def append(self, data: bytes) -> int:
        """Write data at the file's end; the count written."""
        return self.write(data, self.size)

    def contents(self) -> bytes:
        """The file's bytes behind the mount (bad ranges included), without the
        kernel's cache: what a perfect disk would return."""
        with open(self.backing, "rb") as f:
            return f.read()

    def _writer(self) -> int:
        if not self._fds:
            raise ValueError("I/O operation on a closed FailingFile")
        return self._fds[0]

    # -- the bad ranges ------------------------------------------------------------

    @property
    def bad(self) -> list[tuple[int, int]]:
        """The bad byte ranges [start, end), sorted."""
        return list(self._bad)

    def set_bad(self, ranges: Sequence[tuple[int, int]]) -> None:
        """Make these byte ranges (and so the pages holding them) the bad ones, from
        now on: the file's pages in the kernel's cache are dropped (and unmapped
        from every mapping) so the next touch asks the server again."""
        clean = sorted((int(s), int(e)) for s, e in ranges)
        if any(s < 0 or e < s for s, e in clean):
            raise ValueError(f"bad ranges must be [start, end) with 0 <= start <= end: {clean}")
        self._command({"op": "set_bad", "ranges": clean})
        self._bad = [(s, e) for s, e in clean if e > s]

    @contextlib.contextmanager
    def on_failed_read(self, *, append: bytes | None = None,
                       write: tuple[bytes, int] | None = None,
                       truncate: int | None = None) -> Iterator[None]:
        """While the block runs, every read that fails first changes the file in
        the server, before the kernel hears of the failure: appends bytes, writes
        bytes at an offset, or cuts or extends it (one of the three). The change
        is made to the file behind the mount, as another client of a network file
        system would make it: the kernel sees the new size and times at its next
        stat. A reader whose fault is being served holds its GIL in the kernel,
        so no Python of this process could run then: the server does it."""
        given = [c for c in (append is not None and ["append", append.hex()],
                             write is not None and ["write", write[1], write[0].hex()],
                             truncate is not None and ["truncate", truncate]) if c]
        if len(given) != 1:
            raise TypeError("on_failed_read takes exactly one of append, write, truncate")
        self._command({"op": "on_failed_read", "changes": given})
        try:
            yield
        finally:
            if not self.closed:
                self._command({"op": "on_failed_read", "changes": []})

    @contextlib.contextmanager
    def holding_failed_reads(self) -> Iterator[None]:
        """While the block runs, every read that fails waits in the server (after
        on_failed_read's change) until release() or the block's end: a reader held
        at a known point, inside a failing read, for as long as a test needs."""
        self._command({"op": "hold"})
        try:
            yield
        finally:
            if not self.closed:
                self.release()

    def release(self) -> None:
        """Let the reads held by holding_failed_reads() fail, and those after it."""
        self._command({"op": "release"})

    @contextlib.contextmanager
    def holding_writes(self, offset: int) -> Iterator[None]:
        """While the block runs, the first write request (FUSE's, of up to a few
        pages) that reaches past offset waits in the server, and every one after
        it, until the block ends: a writer held at a known point, for as long as
        a test needs (wait_for_held_write() tells when one is)."""
        self._command({"op": "hold_writes", "from": offset})
        try:
            yield
        finally:
            if not self.closed:
                self.release_writes()

    def release_writes(self) -> None:
        """Let the writes held by holding_writes() go on, and those after it."""
        self._command({"op": "hold_writes", "from": None})

    def wait_for_held_write(self, timeout: float) -> None:
        """Return once a write waits inside holding_writes(); TimeoutError if none
        does within timeout seconds."""
        try:
            self._command({"op": "wait_held_write", "timeout": timeout})
        except ValueError:
            raise TimeoutError(f"no write to {self.path} was held in {timeout} s") from None

    @contextlib.contextmanager
    def holding_getattrs(self, limit: float) -> Iterator[None]:
        """While the block runs, every getattr of the file (the kernel's question
        for its size and times: stat(2), and lseek(SEEK_END) with attr_timeout=0)
        waits in the server until the block ends, or `limit` seconds at most: a
        server that hangs, as a stalled NFS or FUSE server does, for as long as a
        test needs (wait_for_held_getattr() tells when one waits). The limit lets
        a caller that cannot end the block (its own thread stuck) go on."""
        self._command({"op": "hold_getattr", "limit": limit})
        try:
            yield
        finally:
            if not self.closed:
                self._command({"op": "release_getattr"})

    def wait_for_held_getattr(self, timeout: float) -> int:
        """Return, once a getattr waits inside holding_getattrs(), how many wait as
        the server answers (0 if those held were let go by the limit meanwhile);
        TimeoutError if none waits within timeout seconds."""
        try:
            return int(self._command({"op": "wait_held_getattr", "timeout": timeout})["waiting"])
        except ValueError:
            raise TimeoutError(f"no getattr of {self.path} was held in {timeout} s") from None

    @contextlib.contextmanager
    def failing_sync(self, err: int = errno.EIO, *, times: int = -1,
                     close: bool = False) -> Iterator[None]:
        """While the block runs, the next `times` fsync(2)/fdatasync(2) of the file
        (every one if times < 0) fail with err, as on a disk that could not write
        back what it was given, and with close, close(2) of a descriptor that
        wrote too (FUSE's flush, as NFS reports a lost write at close)."""
        self._command({"op": "fail_sync", "fsync": err, "times": times,
                       "flush": err if close else 0})
        try:
            yield
        finally:
            if not self.closed:
                self._command({"op": "fail_sync", "fsync": 0, "times": 0, "flush": 0})

    def stats(self) -> dict[str, int]:
        """What the server was asked so far: reads, failed_reads, writes,
        failed_writes, truncates, getattrs of the file (FUSE requests, which the kernel makes per page
        or per readahead window, not per call)."""
        reply = self._command({"op": "stats"})
        return {k: int(v) for k, v in reply.items() if k != "ok"}

    def _command(self, cmd: dict[str, object]) -> dict[str, Any]:
        with self._lock:
            if self.closed:
                raise ValueError("the FailingFile is closed")
            self._sock.sendall(json.dumps(cmd).encode() + b"\n")
            line = self._reader.readline()
        if not line:
            raise OSError(f"the FUSE server serving {self.path} has gone")
        reply: dict[str, Any] = json.loads(line)
        if not reply.get("ok"):
            raise ValueError(f"the FUSE server refused {cmd['op']}: {reply.get('error')}")
        return reply


def _shut_down(owner: int, proc: subprocess.Popen[bytes], fds: list[int],
               sock: socket.socket, reader: object, mountpoint: str, tmp: str,
               errors: object) -> None:
    """Close the control socket (the server then unmounts and exits), make sure the
    mount is gone whatever the server did, and remove the temporary directory. In
    a process forked from the owner only its copies of the descriptors are
    closed: the mount is the owner's, which the server serves until it ends."""
    while fds:
        with contextlib.suppress(OSError):      # ENOTCONN if the server is gone
            os.close(fds.pop())
    for f in (reader, sock, errors):
        with contextlib.suppress(OSError):
            f.close()  # type: ignore[attr-defined]
    if os.getpid() != owner:
        return
    try:
        proc.wait(TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)          # libfuse's handler unmounts
        try:
            proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if os.path.ismount(mountpoint):
        subprocess.run(["fusermount3", "-u", "-z", mountpoint], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False)
    shutil.rmtree(tmp, ignore_errors=True)
