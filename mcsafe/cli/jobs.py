"""Running the scan of a walk's targets: in this process, or in N worker processes.

Workers are forked before anything else starts a thread. The walk stays in
this process; targets go to the workers by path, in small batches (at most two
outstanding per worker, so that memory stays bounded and the last big files
spread over the workers), and reports and progress come back as they are made.
Each batch's reports come back in one message when it is done, progress within
big files on the way. A stop (see stop.py) is passed on to the workers, each of
which ends the file it is reading as interrupted and scans no more. A worker that dies is replaced
by nothing: the files it had are reported as errors and the others go on.
"""

from __future__ import annotations

import os
import signal

from .scanfile import FileReport, Scanner
from .stop import StopFlag, caught_signals
from .walk import Files, Note, Target

TYPE_CHECKING = False
if TYPE_CHECKING:       # typing: loaded by none of a scan's own modules
    from typing import Any, Callable, Iterable

    from .walk import Item

    Emit = Callable[[FileReport], object]

BATCH = 32                   # targets per message to a worker, at most
BATCH_BYTES = 64 << 20       # and bytes of files (a batch's reports come when it is done)
OUTSTANDING = 2              # batches a worker may hold
PROGRESS_EVERY = 16 << 20    # bytes a worker reports progress after, within a file


def note_report(note: Note) -> FileReport:
    return FileReport(note.path, note.status, note.kind, message=note.message)


def scan_here(items: Iterable[Item], scanner: Scanner, emit: Emit, stop: StopFlag,
              clean: Callable[[str, list[str], list[int]], object]) -> None:
    """Scan every target in this process, in the walk's order; a batch of files
    tells clean(prefix, names, sizes) of those that read clean (see
    Scanner.scan_files)."""
    for item in items:
        if stop():
            return
        if isinstance(item, Note):
            emit(note_report(item))
            continue
        if isinstance(item, Files):
            scanner.scan_files(item, emit, clean)
            continue
        report = scanner.scan(item)
        if report is not None:
            emit(report)


def scan_in_workers(items: Iterable[Item], jobs: int, emit: Emit, progress: Callable[[int], object],
                    stop: StopFlag, restore_cache: bool,
                    started: Callable[[], object] = lambda: None) -> None:
    """Scan every target in `jobs` worker processes; emit reports as they come.
    started() is called once the workers are forked (threads may start then)."""
    import multiprocessing
    import multiprocessing.connection

    ctx = multiprocessing.get_context("fork")
    workers: list[_Worker] = []
    for _ in range(jobs):
        workers.append(_Worker(ctx, restore_cache, [w.conn for w in workers]))
    started()
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    stop.install(wake_w)
    seen: set[tuple[int, int]] = set()      # multiply-linked files reported, across workers
    it = iter(items)
    walked = False
    told = False
    try:
        while True:
            if stop() and not told:
                told = True
                for w in workers:
                    w.interrupt(stop.signum)
            while not walked and not stop():
                idle = [w for w in workers if w.alive and len(w.batches) < OUTSTANDING]
                if not idle:
                    break
                batch = _next_batch(it, emit)
                if batch is None:
                    walked = True
                    break
                if batch:
                    min(idle, key=lambda w: len(w.batches)).send(batch)
            busy = [w for w in workers if w.alive and w.batches]
            if not busy:
                break
            ready = multiprocessing.connection.wait([w.conn for w in busy] + [wake_r])
            if wake_r in ready:
                _drain(wake_r)
            for w in busy:
                if w.conn in ready:
                    for report in w.receive(progress):
                        if report.link is not None:
                            if report.link in seen:
                                continue
                            seen.add(report.link)
                        emit(report)
    finally:
        signal.set_wakeup_fd(-1)
        os.close(wake_r)
        os.close(wake_w)
        for w in workers:
            w.close()


def _next_batch(it: Any, emit: Emit) -> list[tuple[str, bool, int | None]] | None:
    """Up to BATCH targets or BATCH_BYTES of files from the walk (a bigger file goes
    alone), so that big files spread over the workers; notes are emitted on the
    way. None once the walk is over and nothing was taken."""
    batch: list[tuple[str, bool, int | None]] = []
    nbytes = 0
    for item in it:
        if isinstance(item, Note):
            emit(note_report(item))
            continue
        batch.append((item.path, item.named, item.root_dev))
        try:
            nbytes += os.stat(item.name, dir_fd=item.dir_fd, follow_symlinks=item.named).st_size
        except OSError:
            pass                    # the worker says what became of it
        if len(batch) == BATCH or nbytes >= BATCH_BYTES:
            return batch
    return batch or None


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


class _Worker:
    """One worker process and this side of its pipe; the batches it holds."""

    def __init__(self, ctx: Any, restore_cache: bool, others: list[Any]) -> None:
        self.conn, theirs = ctx.Pipe(duplex=True)
        # The child closes this side of every pipe it inherits (its own and the
        # workers' before it): else a worker would never see its pipe end when
        # the parent dies, holding another's open.
        self.proc = ctx.Process(target=_work, daemon=True,
                                args=(theirs, restore_cache, [*others, self.conn], os.getpid()))
        self.proc.start()
        theirs.close()
        self.batches: list[list[str]] = []     # paths of each batch sent, not yet done
        self.alive = True

    def send(self, batch: list[tuple[str, bool, int | None]]) -> None:
        self.batches.append([path for path, _, _ in batch])
        self.conn.send(batch)

    def interrupt(self, signum: int) -> None:
        if self.alive and self.proc.pid is not None:
            try:
                os.kill(self.proc.pid, signum)
            except ProcessLookupError:
                pass

    def receive(self, progress: Callable[[int], object]) -> list[FileReport]:
        """Handle one message: the reports of a batch done (or, if the worker died,
        error reports for the files it held)."""
        try:
            kind, passed, reports = self.conn.recv()
        except (EOFError, OSError):
            return self._died()
        progress(passed)
        if kind == "done":
            self.batches.pop(0)
            return [FileReport(*fields) for fields in reports]
        return []

    def _died(self) -> list[FileReport]:
        self.alive = False
        self.proc.join()
        code = self.proc.exitcode
        how = (f"killed by {signal.Signals(-code).name}" if code is not None and code < 0
               else f"exit status {code}")
        lost = [FileReport(path, "error", message=f"the worker scanning it died ({how})")
                for batch in self.batches for path in batch]
        self.batches = []
        return lost

    def close(self) -> None:
        if self.alive:
            try:
                self.conn.send(None)
            except OSError:
                pass
        self.conn.close()
        self.proc.join()


def _work(conn: Any, restore_cache: bool, inherited: list[Any], parent: int) -> None:
    """A worker: scan each batch it is sent, sending the batch's reports when it is
    done (one message: per-file messages cost small files more than their scan),
    with the bytes passed since the last message, and progress within big files,
    until None."""
    for other in inherited:
        other.close()
    _die_with(parent)
    stop = StopFlag()
    for sig in caught_signals():    # a stop is the parent's to decide; this one just stops
        signal.signal(sig, lambda signum, frame: setattr(stop, "signum", signum))
    passed = 0

    def progress(n: int) -> None:
        nonlocal passed
        passed += n
        if passed >= PROGRESS_EVERY:
            conn.send(("progress", passed, None))
            passed = 0

    scanner = Scanner(progress, stop, restore_cache)
    while True:
        try:
            batch = conn.recv()
        except (EOFError, OSError):     # the parent is gone (killed, or its stdout closed)
            return
        if batch is None:
            return
        reports = []
        for path, named, root_dev in batch:
            if stop():
                break
            report = scanner.scan(Target(path, path, None, named, root_dev))
            if report is not None:          # (None: a link to a file already reported)
                reports.append(report.fields())     # tuples: the cheapest to pickle
        conn.send(("done", passed, reports))
        passed = 0


def _die_with(parent: int) -> None:
    """Have the kernel kill this worker when its parent dies (PR_SET_PDEATHSIG): a
    parent killed outright (SIGKILL, the OOM killer) leaves no scan behind."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:          # it died before we asked
        os._exit(1)
