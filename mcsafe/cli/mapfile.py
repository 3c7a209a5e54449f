"""GNU ddrescue mapfiles: what of an input was rescued, as ddrescue itself writes them.

The format (ddrescue's manual, "Mapfile structure"): lines starting with ``#``
are comments; the first other line is the status line, ``current_pos
current_status current_pass``; every later line is a block, ``pos size
status``, the blocks covering the rescue domain in order, without gaps.
Positions and sizes are written in hex (``0x``), and read in hex, octal
(``0`` prefix) or decimal, as ddrescue reads them (sscanf's ``%lli``). Block status: ``?``
non-tried, ``*`` non-trimmed, ``/`` non-scraped, ``-`` bad, ``+`` finished.
The current status adds the phases a rescue was in: ``?`` copying, ``*``
trimming, ``/`` scraping, ``-`` retrying, ``F`` filling, ``G`` generating,
``+`` finished.
"""

from __future__ import annotations

import bisect
import errno
import os
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Iterator

from .._mcsafe import _fallocate as fallocate

BLOCK_STATUSES = "?*/-+"
HEX = "0123456789abcdefABCDEF"
CURRENT_STATUSES = "?*/-FG+"
FINISHED, BAD, NON_TRIED = "+", "-", "?"
#: room kept past the end of a mapfile (fallocate), at least twice its length, for
#: a save on a full file system
RESERVE = 64 << 10
NO_ROOM = (errno.ENOSPC, errno.EDQUOT)
FALLOC_FL_KEEP_SIZE = 1
#: what C's isspace() takes, in the C locale ddrescue reads mapfiles in
C_SPACE = " \t\n\v\f\r"
#: the characters of a line ddrescue reads (the rest of a longer line is dropped)
LINE_MAX = 127
LLONG_MAX, INT_MAX = (1 << 63) - 1, (1 << 31) - 1


class MapfileError(ValueError):
    """A mapfile that ddrescue would not read either: the message says where."""


class Mapfile:
    """The blocks of a rescue domain [0, size): starts, and each block's status.

    (A plain class, not a dataclass: dataclasses imports inspect, a fifth of the
    start of ``mcsafe rescue``.)"""

    def __init__(self, size: int, starts: list[int] | None = None,
                 statuses: list[str] | None = None, current_pos: int = 0,
                 current_status: str = NON_TRIED, current_pass: int = 1) -> None:
        self.size = size
        self.starts = starts if starts is not None else []
        self.statuses = statuses if statuses is not None else []
        self.current_pos = current_pos
        self.current_status = current_status
        self.current_pass = current_pass
        if not self.starts and self.size > 0:
            self.starts, self.statuses = [0], [NON_TRIED]

    def _fields(self) -> tuple[object, ...]:
        return (self.size, self.starts, self.statuses, self.current_pos,
                self.current_status, self.current_pass)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapfile) and self._fields() == other._fields()

    def __repr__(self) -> str:
        return (f"Mapfile(size={self.size}, starts={self.starts}, statuses={self.statuses}, "
                f"current_pos={self.current_pos}, current_status={self.current_status!r}, "
                f"current_pass={self.current_pass})")

    def copy(self) -> Mapfile:
        return Mapfile(self.size, list(self.starts), list(self.statuses), self.current_pos,
                       self.current_status, self.current_pass)

    # -- the blocks --------------------------------------------------------------------

    def blocks(self) -> Iterator[tuple[int, int, str]]:
        """(pos, size, status) of every block, in order."""
        ends = self.starts[1:] + [self.size]
        for start, end, status in zip(self.starts, ends, self.statuses):
            yield start, end - start, status

    def ranges(self, statuses: str) -> list[tuple[int, int]]:
        """[start, end) of the blocks whose status is one of statuses."""
        return [(p, p + n) for p, n, s in self.blocks() if s in statuses]

    def total(self, statuses: str) -> int:
        return sum(e - s for s, e in self.ranges(statuses))

    def set(self, start: int, end: int, status: str) -> None:
        """Give [start, end) (clipped to the domain) the status, merging neighbours."""
        assert status in BLOCK_STATUSES
        start, end = max(0, start), min(end, self.size)
        if start >= end:
            return
        self._split(start)
        self._split(end)
        i = bisect.bisect_left(self.starts, start)
        j = bisect.bisect_left(self.starts, end)
        del self.starts[i + 1:j], self.statuses[i + 1:j]
        self.statuses[i] = status
        if i + 1 < len(self.starts) and self.statuses[i + 1] == status:
            del self.starts[i + 1], self.statuses[i + 1]
        if i > 0 and self.statuses[i - 1] == status:
            del self.starts[i], self.statuses[i]

    def _split(self, at: int) -> None:
        """Make a block start at `at` (inside the domain), if none does."""
        i = bisect.bisect_right(self.starts, at) - 1
        if 0 < at < self.size and self.starts[i] != at:
            self.starts.insert(i + 1, at)
            self.statuses.insert(i + 1, self.statuses[i])

    def resize(self, size: int) -> None:
        """Grow the domain to size (the new part non-tried); never shrinks."""
        if size <= self.size:
            return
        if self.statuses and self.statuses[-1] == NON_TRIED:
            self.size = size
            return
        self.starts.append(self.size)
        self.statuses.append(NON_TRIED)
        self.size = size

    @property
    def finished_end(self) -> int:
        """The end of the last finished block (0 if none): no byte past it was read."""
        for p, n, s in reversed(list(self.blocks())):
            if s == FINISHED:
                return p + n
        return 0

    # -- text ---------------------------------------------------------------------------

    def format(self, command: str, started: float, finished: bool) -> str:
        """The mapfile's text, as ddrescue 1.27 writes it; started: when the rescue
        started (seconds since the epoch), written as local time, as the current
        time is."""
        lines = ["# Mapfile. Created by mcsafe rescue (GNU ddrescue's mapfile format)",
                 f"# Command line: {command.replace(chr(10), '?')}",  # a file name's
                 # newline would end the comment: the rest a line ddrescue refuses
                 f"# Start time:   {_local_time(started)}",
                 f"# Current time: {_local_time(time.time())}"]
        if finished:
            lines.append("# Finished")
        lines += ["# current_pos  current_status  current_pass",
                  f"0x{self.current_pos:08X}     {self.current_status}               "
                  f"{self.current_pass}",
                  "#      pos        size  status"]
        lines += [f"0x{p:08X}  0x{n:08X}  {s}" for p, n, s in self.blocks()]
        return "\n".join(lines) + "\n"

    @classmethod
    def parse(cls, text: str, name: str = "mapfile") -> Mapfile | None:
        """Read a mapfile as GNU ddrescue does; MapfileError naming the line if it is
        not one, None if it holds nothing but comments and blank lines (ddrescue
        then starts afresh).

        Lines are read as ddrescue reads them: split at "\\n" only, C whitespace
        (" \\t\\n\\v\\f\\r") skipped before each, at most 127 characters of
        it kept. Each line is then read with sscanf: the status line as
        ``"%lli %c %d"`` (the pass may be left out), a block as ``"%lli %lli
        %c"``; what follows the fields is ignored. A block of size 0 is allowed
        at position 0 only. Blocks must be contiguous, but the first may start
        past 0 (ddrescue's ``--input-position`` runs write such mapfiles): the
        bytes before it are outside the mapfile's domain, and are read as
        non-tried, as ddrescue does when it resumes from one."""
        status_line: tuple[int, str, int] | None = None
        starts: list[int] = []
        statuses: list[str] = []
        begin = end = -1
        for number, raw, line in _lines(text):
            where = f"{name}, line {number}"
            if status_line is None:
                pos, rest = _scan_int(line)
                status, rest = _scan_char(rest)
                passes, _ = _scan_int(rest, decimal=True)
                if pos is None or pos < 0 or status is None or status not in CURRENT_STATUSES or \
                        (passes is not None and passes < 1):
                    raise MapfileError(f"{where}: not a status line "
                                       f"('current_pos current_status current_pass'): {raw!r}")
                status_line = (pos, status, 1 if passes is None else passes)
                continue
            pos, rest = _scan_int(line)
            size, rest = _scan_int(rest)
            status, _ = _scan_char(rest)
            if pos is None or size is None or status is None or status not in BLOCK_STATUSES:
                raise MapfileError(f"{where}: not a block ('pos size status', status one of "
                                   f"{BLOCK_STATUSES}): {raw!r}")
            if pos < 0 or size < 0 or (size == 0 and pos != 0):
                raise MapfileError(f"{where}: a block at {pos:#x} of size {size}")
            size = min(size, LLONG_MAX - pos)   # as ddrescue's Block: it ends by LLONG_MAX
            if end >= 0 and pos != end:
                raise MapfileError(f"{where}: the block at {pos:#x} does not start where "
                                   f"the one before ends ({end:#x})")
            if end < 0:
                begin = pos
            end = pos + size
            if size == 0 or (statuses and statuses[-1] == status):
                continue                    # ddrescue's block of an empty input; or one
            starts.append(pos)              # block of two of one status
            statuses.append(status)
        if status_line is None:
            return None
        if not statuses:    # no block holds a byte (one at LLONG_MAX): the domain is empty
            begin = end = 0
        if begin > 0:                       # outside the domain: not tried
            if statuses[0] == NON_TRIED:
                starts[0] = 0
            else:
                starts.insert(0, 0)
                statuses.insert(0, NON_TRIED)
        m = cls(max(end, 0), starts, statuses)
        m.current_pos, m.current_status, m.current_pass = status_line
        return m

    @classmethod
    def load(cls, path: str) -> Mapfile | None:
        with open(path, encoding="latin-1", newline="") as f:   # a character per byte
            return cls.parse(f.read(), path)

    def save(self, path: str, command: str, started: float, finished: bool,
             sync: bool) -> None:
        """Replace path with this mapfile at once (a temporary file renamed over it),
        synced to disk first when sync.

        Each mapfile written keeps room reserved past its end (fallocate), so that
        when its file system is full the next one can still be written over it in
        place (as ddrescue always writes its mapfile); OSError if even that fails."""
        text = self.format(command, started, finished).encode("ascii", "replace")
        room = max(RESERVE, 2 * len(text))
        folder = os.path.dirname(os.path.abspath(path))
        try:
            fd, tmp = temporary(folder, f".{os.path.basename(path)}.")
        except OSError as exc:
            if exc.errno not in NO_ROOM or not os.path.exists(path):
                raise
            return _overwrite(path, text, room, sync, exc)
        try:
            try:
                _reserve(fd, room)
                _write(fd, text)
                if sync:
                    os.fsync(fd)
                os.fchmod(fd, 0o644 & ~umask())
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except OSError as exc:
            _remove(tmp)
            if exc.errno not in NO_ROOM or not os.path.exists(path):
                raise
            return _overwrite(path, text, room, sync, exc)
        except BaseException:
            _remove(tmp)
            raise
        if sync:
            sync_dir(folder)


def _local_time(seconds: float) -> str:
    """seconds since the epoch as a local date and time, as ddrescue writes them.
    (time.strftime, not datetime: datetime is 1 ms of a rescue's start.)"""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


def _overwrite(path: str, text: bytes, room: int, sync: bool, no_room: OSError) -> None:
    """Write text over the mapfile at path, in the room reserved past its end when
    it was written (a crash meanwhile may leave it torn, as ddrescue's); no_room
    raised, the mapfile untouched, if text is longer than that room: a write that
    ran out of space half way would leave neither the old mapfile nor the new."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        if len(text) > os.fstat(fd).st_blocks * 512:    # what the file system holds for it
            raise no_room
        _write(fd, text)
        if os.fstat(fd).st_size > len(text):
            os.ftruncate(fd, len(text))     # frees the room past the end: take it again
            try:
                _reserve(fd, room)
            except OSError:
                pass
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: str) -> None:
    """Remove a temporary file that failed, keeping the error that made it fail."""
    try:
        os.unlink(path)
    except OSError:
        pass


def _write(fd: int, text: bytes) -> None:
    view = memoryview(text)
    offset = 0
    while offset < len(text):
        offset += os.pwrite(fd, view[offset:], offset)


def _reserve(fd: int, room: int) -> None:
    """Allocate [0, room) of fd's file without changing its size, where the file
    system can (OSError ENOSPC if it has no room)."""
    try:
        fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, room)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise


def _lines(text: str) -> Iterator[tuple[int, str, str]]:
    """(number, line, what sscanf sees of it) for each line of text ddrescue reads
    (its my_fgets): lines end at "\\n" only; C whitespace before a line is skipped
    (blank lines with it), a line whose first character then is "#" is a comment,
    only its first LINE_MAX characters are kept, and sscanf stops at a NUL."""
    for number, raw in enumerate(text.split("\n"), 1):
        kept = raw.lstrip(C_SPACE)[:LINE_MAX]
        if kept and kept[0] != "#":
            yield number, raw, kept.split("\0", 1)[0]


def _scan_int(text: str, decimal: bool = False) -> tuple[int | None, str]:
    """glibc's sscanf "%lli" (or "%d" if decimal) at the start of text: the number
    (None if there is none) and the text after it. A bare "0x" reads as 0; a number
    past the type's range is clipped to it as strtoll does, and "%d" keeps the low
    32 bits of what strtol gave, as glibc stores it in an int. Written by hand:
    Python's int() takes what C does not (underscores, "0o", a "0" before decimal
    digits, Unicode digits and spaces)."""
    text = text.lstrip(C_SPACE)
    i = 1 if text[:1] in ("+", "-") else 0
    if decimal:
        base, digits = 10, "0123456789"
    elif text[i:i + 2] in ("0x", "0X"):
        base, digits, i = 16, HEX, i + 2
    elif text[i:i + 1] == "0":
        base, digits = 8, "01234567"
    else:
        base, digits = 10, "0123456789"
    j = i
    while j < len(text) and text[j] in digits:
        j += 1
    if j == i and base != 16:
        return None, text
    value = int(text[i:j], base) if j > i else 0        # "0x" alone: glibc reads 0
    value = max(-LLONG_MAX - 1, min(-value if text[:1] == "-" else value, LLONG_MAX))
    if decimal:
        value = (value + (1 << 31)) % (1 << 32) - (1 << 31)
    return value, text[j:]


def _scan_char(text: str) -> tuple[str | None, str]:
    """C's sscanf " %c": the first character that is not a C space, and the rest."""
    text = text.lstrip(C_SPACE)
    return (text[0], text[1:]) if text else (None, "")


def umask() -> int:
    """This process's umask (os.umask sets it: set it back at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temporary(folder: str, prefix: str, suffix: str = "") -> tuple[int, str]:
    """A new file in folder, named prefix, a random part and suffix, open for reading
    and writing, mode 0600: (its descriptor, its path), as tempfile.mkstemp. (By
    hand: tempfile imports random, and random hashlib, 3 ms of a rescue's start.)
    The random part is 8 characters, as tempfile's: a longer one would refuse names
    (ENAMETOOLONG) that a rescue took before."""
    for _ in range(100):
        path = os.path.join(folder, f"{prefix}{os.urandom(4).hex()}{suffix}")
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW |
                           os.O_CLOEXEC, 0o600), path
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no unused temporary file name", folder)


def sync_dir(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
