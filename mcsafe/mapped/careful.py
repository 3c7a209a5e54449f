"""The careful paths and their verdicts: a call after a fault, a failed probe, a
known bad range, or (for a write) a copy that reaches the file's last page.

Reads are the fast path's call again from where the call stopped, through the
mapping (the size asked before and after each copy where no probe is armed).
Writes ask the size and the file's times around every copy. A fault is judged
by read(2) of its byte: the end of the file only if read(2) says so then; a bad
page if it fails, whatever the file did meanwhile. That one-byte read(2) only
decides (its byte is handed to no one): file data is never served by read(2).
"""

from __future__ import annotations

import errno
import os
import signal
TYPE_CHECKING = False      # (typing: type checkers only)

if TYPE_CHECKING:
    from typing_extensions import Buffer

from .._mcsafe import _file_stamp, _readinto_careful
from .._types import CopyResult, FaultInfo, MemoryFaultError
from ._sys import PAGE, oserror
from .badranges import BadRanges
from .mapping import Window
from .probe import ProbePage

RETRIES = 2                 # copies again of a page that faulted inside the file
CHURN_RETRIES = 4           # copies again of a file that changed during the copy
RETRY, STOP, CUT = range(3)  # verdicts on a fault (Careful.judge)

Stamp = tuple[int, int, int]


def before_page_before(offset: int, done: int) -> int:
    """The count of a call at offset that stops before the page before the one
    where it is now."""
    return max(0, min(done, ((offset + done) // PAGE - 1) * PAGE - offset))


class Careful:
    """The careful paths over one Window and its BadRanges."""

    def __init__(self, window: Window, bad: BadRanges) -> None:
        self.window = window
        self.bad = bad
        self.copy = window.copy         # every careful copy of a write goes through here

    # -- reads -----------------------------------------------------------------

    def read(self, buf: Buffer, offset: int, done: int, fault: FaultInfo | None) -> int:
        """readinto() after a fault, a failed probe, past the size last seen or with
        bad ranges known: the fast path's copy again, from where the call stopped,
        with the bad-range list obeyed and kept, growth followed and each fault
        judged; the size asked before and after each copy where there is no probe
        to prove one (and after a cut: the probe was armed for a size now gone)."""
        w = self.window
        out = memoryview(buf).cast("B")
        if out.readonly:        # refused wherever offset lies, as FileIO.readinto refuses it
            raise TypeError("readinto() argument must be read-write bytes-like object, "
                            f"not {type(buf).__name__}")
        want = out.nbytes
        retries, probes = RETRIES, CHURN_RETRIES
        stamp: Stamp | None = None          # the file's, at the first fault
        while True:
            if fault is not None:
                if stamp is None:
                    stamp = self.stamp()
                verdict = self.judge(fault, offset, done, True, retries == 0, stamp)
                if verdict == STOP:
                    return done
                # The file was shorter when the page faulted: the page before it may
                # have been copied past the end then (zeros). Copy it again; after a
                # cut, without the probe, to wherever the end is now (it may lie past
                # the call's offset: the file never ended there).
                done = before_page_before(offset, done)
                if verdict == CUT:
                    probes = 0
                else:
                    retries -= 1
                fault = None
            pos = offset + done
            if done >= want or pos >= w.refresh():
                return done
            if pos >= w.map.length:     # the file outgrew a mapping made again in vain
                if done:
                    return done
                raise oserror(errno.ENOMEM, w.path, "mmap of the file's new length")
            n = want - done
            bad = self.bad.at_or_after(pos)
            if bad is not None and bad[0] <= pos:
                if done:
                    return done
                raise self.known_bad(bad[0], pos, "read")
            if bad is not None and bad[0] < pos + n:
                n = bad[0] - pos
            state = w.state
            if not probes:
                state = (*state[:2], -1, 0, 0, *state[5:])
            try:
                got = _readinto_careful(out[done:done + n], state, pos)
            except (ValueError, TypeError):
                w.check_open()
                if state[0] is w.state[0]:
                    raise           # the caller's buffer: not one to write into
                continue            # the file changed size after the view was fetched
            if isinstance(got, CopyResult):
                done += got.copied
                fault = got.fault
                continue
            if got == -1:           # cut during the copy, perhaps: count none of it
                w.probe_failed(state[4])
                probes -= 1
                continue
            if got == -2:           # shrunk under the view fetched: follow it
                continue
            if got == 0:            # the end of the file
                return done
            done += got

    # -- writes ------------------------------------------------------------------

    def write(self, buf: Buffer, offset: int, done: int, fault: FaultInfo | None) -> int:
        """write() after a fault or a failed probe, or reaching the file's last
        page: the size asked after every copy, growth followed, the bad-range list
        obeyed and kept. Returns the count that is in the file."""
        w = self.window
        want = memoryview(buf).nbytes
        size: int | None = None        # the size, if asked after the last copy
        retries, churn, probes = RETRIES, CHURN_RETRIES, CHURN_RETRIES
        stamp: Stamp | None = None     # the file's, at the first fault
        while True:
            if fault is not None:
                size = None
                if stamp is None:
                    stamp = self.stamp()
                verdict = self.judge(fault, offset, done, False, retries == 0, stamp)
                if verdict == STOP:
                    break
                # The file was shorter when the page faulted: the page before it may
                # have been written past the end then (dropped). Write it again, up
                # to the end wherever it is now (after a cut it may lie past the
                # call's offset: the file never ended there); a file cut under every
                # try counts what lies before the page before the fault.
                done = before_page_before(offset, done)
                if verdict == CUT and retries == 0:
                    break
                fault, retries = None, retries - 1
            pos = offset + done
            size = w.refresh()
            if done >= want or pos >= size:
                break
            if pos >= w.map.length:     # the file outgrew a mapping made again in vain
                if done:
                    break
                raise oserror(errno.ENOMEM, w.path, "mmap of the file's new length")
            n = min(want - done, size - pos)
            bad = self.bad.at_or_after(pos)
            if bad is not None and bad[0] <= pos:
                if done:
                    break
                raise self.known_bad(bad[0], pos, "write")
            if bad is not None and bad[0] < pos + n:
                n = bad[0] - pos
            # The last try of a file that changed during every copy (a log
            # appended to, a file written in place) has a probe of its own.
            proof = self.probe_past(pos + n) if churn == 0 and w.cuts_unmap else None
            try:
                before = self.stamp()
                # cut since the size was asked? (st_size is 0 for a block device)
                n = min(n, (before[0] if w.probed else w.file_size()) - pos)
                res = self.copy(buf, done, pos, n, False) if n > 0 else 0
                proven = proof is not None and proof[0].read() == proof[1]
            finally:
                if proof is not None:
                    proof[0].close()
            if n <= 0:
                size = None
                break
            if isinstance(res, int):
                changed = self.stamp() != before
                if changed and not proven:
                    # Cut and written again during the copy, perhaps: what landed
                    # past a cut was dropped, and the size after cannot tell. Copy
                    # it again, the last time with a probe on the page past the
                    # copy's end, which no cut below that page spares.
                    if churn > 0:
                        churn -= 1
                        continue
                    if proof is not None:
                        # The probe saw a cut, below the copy's end or above it:
                        # again, and if the file is cut under every probe, count
                        # none of it (the file may have been that short).
                        if probes > 0:
                            probes -= 1
                            continue
                        size = None
                        break
                    # The file ends in the copy's last page (no page past it to
                    # probe): count the copy as pwrite(2) would, by the size asked
                    # just before it.
                done += res
                if bad is not None and pos + n == bad[0]:
                    size = None
                    break
                if done >= want and w.probed and not changed:
                    size = before[0]    # the size after the copy: the stamp is unchanged
                    break
            else:
                done += res.copied
                fault = res.fault
        if size is None:
            size = w.refresh()
        return max(0, min(done, size - offset))

    def device_write(self, buf: Buffer, offset: int) -> int:
        """A block device's write: nothing cuts it (so no probe, no stamps), but it
        may shrink: the count is bounded by its size asked before and after."""
        w = self.window
        size = w.refresh()
        want = memoryview(buf).nbytes
        if offset >= size or want == 0:
            return 0
        res = self.copy(buf, 0, offset, min(want, size - offset), False)
        if not isinstance(res, int):
            return self.write(buf, offset, res.copied, res.fault)
        return max(0, min(res, w.file_size() - offset))

    def probe_past(self, end: int) -> tuple[ProbePage, int] | None:
        """A probe (see ProbePage) armed for one copy on the first page at or after
        file offset `end`: (the page, its word), or None if the file does not
        reach past that page's start."""
        page = ProbePage.arm(self.window.fd, -(-end // PAGE) * PAGE)
        return None if page is None else (page, page.word)

    # -- verdicts ----------------------------------------------------------------

    def stamp(self) -> Stamp:
        """What changes when anyone cuts or writes the file. (Asking for ctime also
        makes the kernel's next change of it fine-grained, on multigrain file
        systems, so two changes within a clock tick still differ.)"""
        return _file_stamp(self.window.fd)

    def judge(self, fault: FaultInfo, offset: int, done: int, reading: bool, last: bool,
              stamp: Stamp) -> int:
        """Judge a fault met `done` bytes into a call at file offset `offset`: STOP
        if the call stops there (raising if nothing was done, remembering the page
        if it is bad), RETRY if it should copy again from there, CUT if the file
        now ends at or before the fault (it was cut under the copy): the call
        goes on from the page before it, to wherever the end is now.

        A SIGBUS that says nothing of its cause (BUS_ADRERR) is a page past the end
        of the file or a page the kernel could not read. read(2) of the byte
        tells them apart, now: 0 bytes is the end of the file (a cut), EIO a bad
        page, whatever else the file did meanwhile (a log appended to, a page
        rewritten); bytes mean the page is readable now (the file was cut and
        written again since the fault), so the copy is tried again. A page that
        faults on every try while read(2) reads it is bad in this mapping (poison
        the kernel did not name) and remembered, unless the file changed since
        the first fault (`stamp`): then it was cut under every copy, and the call
        fails there as at a bad byte, but nothing is remembered."""
        what = "read" if reading else "write"
        path = self.window.path
        if fault.side != ("src" if reading else "dst"):
            # The caller's buffer is bad, not the file: EFAULT, nothing remembered.
            raise MemoryFaultError(fault, f"{what}: the caller's buffer ({fault.side})",
                                   path, errno.EFAULT)
        at = offset + done
        info = fault._replace(offset=at)
        err = errno.EIO
        if info.signal == signal.SIGBUS and info.cause == "io":
            readable = self.readable(at)
            if readable is None:
                return CUT              # at or past the end of the file now
            if readable == 0 and not last:
                return RETRY
            if readable == 0 and not reading and self.fs_full():
                # A hole the full file system could not fill: not a bad page.
                info, err = info._replace(cause="no space"), errno.ENOSPC
            elif readable == 0 and self.stamp() != stamp:
                pass                    # cut under every copy: fail this call only
            else:
                # read(2) fails there too (readable is its errno), or the mapping
                # faults on every try while read(2) reads it (poison in our mapping)
                err = readable or errno.EIO
                self.bad.remember(info)
        else:
            self.bad.remember(info)        # poison and protection say so themselves
        if done == 0:
            raise MemoryFaultError(info, what, path, err)
        return STOP

    def readable(self, at: int) -> int | None:
        """Ask read(2) for the byte at file offset `at`: None if it is at or past the
        end of the file, 0 if it reads, else the errno it fails with.

        This read(2) decides; its byte is handed to no one. It is safe where a read
        of data would not be (a poisoned page-cache page copied by the kernel is a
        machine check in kernel mode): it is asked only after a SIGBUS that named
        no poison (BUS_ADRERR). That page was past the end of the file, and
        read(2) returns 0 without touching a page; or the kernel could not read
        it (not up to date), and read(2) reads it from the storage again or
        fails with EIO (docs/ARCHITECTURE.md, "Machine checks"). A page that
        faulted as poison (BUS_MCEERR_AR) is never asked about: it is remembered
        bad as it is."""
        try:
            return 0 if os.pread(self.window.fd, 1, at) else None
        except OSError as exc:
            return exc.errno or errno.EIO

    def fs_full(self) -> bool:
        """Whether the file system has no blocks left: a write fault into a hole
        then means the kernel could not allocate it (ENOSPC, not a bad page)."""
        st = os.fstatvfs(self.window.fd)
        # No blocks at all (a memfd, a tmpfs without a size limit) is "unknown".
        return st.f_blocks > 0 and (st.f_bavail == 0 or st.f_bfree == 0)

    def known_bad(self, start: int, offset: int, what: str) -> MemoryFaultError:
        return self.bad.known_bad(start, offset, self.window.map.address + offset, what,
                                  self.window.path)
