"""Every byte MappedFile hands to a caller comes through the table-covered copy
from the mapping, never from read(2)/pread(2): the kernel's own copy of a
poisoned page-cache page (filemap_read -> copy_to_user) is a machine check in
kernel mode that nothing recovers, where the same page loaded through the
mapping is a SIGBUS the table recovers (docs/ARCHITECTURE.md, "Machine checks").

Proved in a child process where the read(2) family cannot read data at all (a
seccomp filter, tests/syscall_filter.py): there, every read below must still
return exactly the bytes the reference (the file read by open() in this process,
or the FUSE file's known contents) says, at exactly the count pread(2) gives.
Only the one-byte pread(2) MappedFile asks after a fault (end of file, or bad
page?) is left working; its byte is not handed to anyone."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import syscall_filter
from mcsafe import inject

PAGE = inject.PAGE
HERE = os.path.dirname(os.path.abspath(__file__))

CHILD = """
    import json, os, sys
    import numpy as np
    sys.path.insert(0, {here!r})
    import syscall_filter
    from mcsafe import MappedFile, MemoryFaultError, arrays, fileio

    import mcsafe.formats.npy, mcsafe.mapped.arrays     # no import after the filter
    cases = json.loads(sys.argv[1])
    files = {{c["path"]: MappedFile(c["path"]) for c in cases if c["op"] != "load_path"}}
    # the descriptors opened after the filter (by arrays.load of a path): the lowest free
    spare = [os.open("/dev/null", os.O_RDONLY) for _ in range(8)]
    for fd in spare:
        os.close(fd)
    syscall_filter.forbid_file_reads(tuple(mf._fd for mf in files.values()) + tuple(spare))
    probe = os.open(cases[0]["path"], os.O_RDONLY)       # the filter is on:
    try:
        os.pread(probe, 2, 0)
        sys.exit("pread(2) of 2 bytes still works: no filter")
    except OSError as exc:
        assert exc.errno == syscall_filter.REFUSED, exc

    def run(case, mf):
        op, args = case["op"], case.get("args", [])
        if op == "readinto":
            n, offset = args
            buf = bytearray(n)
            got = mf.readinto(buf, offset)
            return got, bytes(buf[:got])
        if op == "append_then_readinto":
            extra, n, offset = args
            with open(case["path"], "ab") as f:
                f.write(bytes.fromhex(extra))
            buf = bytearray(n)
            got = mf.readinto(buf, offset)
            return got, bytes(buf[:got])
        if op == "stream":
            data = fileio.open(mf).read()
            return len(data), data
        if op == "read_array":
            a = mf.read_array(np.uint8)
            return a.size, a.tobytes()
        if op == "load":
            a = arrays.load(mf)
            return a.nbytes, a.tobytes()
        if op == "load_path":
            a = arrays.load(case["path"])
            return a.nbytes, a.tobytes()
        raise ValueError(op)

    out = []
    for case in cases:
        mf = files.get(case["path"])
        try:
            got, data = run(case, mf)
            out.append([got, data.hex()])
        except (OSError, MemoryFaultError) as exc:
            out.append(["error", f"{{type(exc).__name__}}: {{exc}}"])
    print(json.dumps(out))
"""


def through_mapping(cases: list[dict]) -> list:
    """Run the cases in a child that cannot read files with the read(2) family:
    [count, bytes] or ["error", message] for each."""
    script = textwrap.dedent(CHILD.format(here=HERE))
    child = subprocess.run([sys.executable, "-c", script, json.dumps(cases)],
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, f"child exited {child.returncode}: {child.stderr[-2000:]}"
    return [[r[0], bytes.fromhex(r[1])] if r[0] != "error" else r
            for r in json.loads(child.stdout)]


def expect(data: bytes, n: int, offset: int) -> list:
    """What pread(2) of n bytes at offset returns from a file holding data."""
    return [len(data[offset:offset + n]), data[offset:offset + n]]


@pytest.fixture(autouse=True)
def _filter_available() -> None:
    why = syscall_filter.unavailable()
    if why:
        pytest.skip(why)


def test_reads_reaching_the_last_page_come_through_the_mapping(tmp_path) -> None:
    """A small file read whole, a file smaller than a page, a log's tail (its last
    byte nonzero and zero), a read that runs past the end: each is what open()
    reads here, though no read(2) could serve it in the child."""
    files = {
        "small": os.urandom(10_000),
        "tiny": os.urandom(100),
        "log": os.urandom((1 << 20) - 1) + b"\1",
        "tar": os.urandom((1 << 20) - 1) + b"\0",
        "zeros": bytes(3 * PAGE + 7),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    reads = [("small", 10_000, 0), ("small", 4 * PAGE, 0), ("small", 100, 9_950),
             ("tiny", PAGE, 0), ("tiny", 50, 25), ("tiny", 0, 50), ("tiny", 10, 100),
             ("tiny", 10, 200),
             ("log", 100, (1 << 20) - 100), ("log", 3 * PAGE, (1 << 20) - PAGE - 500),
             ("tar", 100, (1 << 20) - 100), ("zeros", 2 * PAGE, 2 * PAGE)]
    cases = [{"path": str(tmp_path / name), "op": "readinto", "args": [n, offset]}
             for name, n, offset in reads]
    got = through_mapping(cases)
    for (name, n, offset), result in zip(reads, got):
        with open(tmp_path / name, "rb") as f:        # the reference, as it is now
            f.seek(offset)
            reference = f.read(n)
        assert result == [len(reference), reference], (name, n, offset, result[:1])


def test_a_file_that_grew_and_the_adapters_come_through_the_mapping(tmp_path) -> None:
    data = os.urandom(10_000)
    extra = os.urandom(5_000)
    for name in ("grows", "stream", "array"):
        (tmp_path / name).write_bytes(data)
    array = np.arange(300, dtype=np.float64)
    np.save(tmp_path / "a.npy", array)
    cases = [{"path": str(tmp_path / "grows"), "op": "append_then_readinto",
              "args": [extra.hex(), 20_000, 0]},
             {"path": str(tmp_path / "stream"), "op": "stream"},
             {"path": str(tmp_path / "array"), "op": "read_array"},
             {"path": str(tmp_path / "a.npy"), "op": "load"}]
    got = through_mapping(cases)
    assert got[0] == [15_000, data + extra]
    assert got[1] == [10_000, data]
    assert got[2] == [10_000, data]
    assert got[3] == [array.nbytes, np.load(tmp_path / "a.npy").tobytes()]


def test_a_file_whose_last_page_is_bad_is_read_through_the_mapping(failing_file) -> None:
    """No probe can be armed on an unreadable last page, so every read is asked
    the size: still through the mapping, and the bad page still raises."""
    data = inject.pattern(6 * PAGE)
    f = failing_file(data, inject.page_ranges([5]))
    reads = [(100, 0), (100, 1234), (2 * PAGE, 3 * PAGE), (3 * PAGE, 3 * PAGE)]
    got = through_mapping([{"path": f.path, "op": "readinto", "args": list(r)}
                           for r in reads] +
                          [{"path": f.path, "op": "readinto", "args": [10, 5 * PAGE]}])
    for (n, offset), result in zip(reads, got):
        assert result == expect(data[:5 * PAGE], n, offset), (n, offset)
    assert got[-1][0] == "error" and "Input/output error" in got[-1][1]


@pytest.mark.parametrize("cut", [3 * PAGE, 4 * PAGE + 2000])
def test_a_read_goes_on_through_the_mapping_after_a_cut(failing_file, cut: int) -> None:
    """Another client cuts the file while a page fails under the copy: the read
    goes on from the page before, to wherever the end is now, through the
    mapping (it carried on with pread(2) alone)."""
    data = inject.pattern(16 * PAGE)
    f = failing_file(data, inject.page_ranges([5]))
    offset = 2 * PAGE + 100
    with f.on_failed_read(truncate=cut):
        got = through_mapping([{"path": f.path, "op": "readinto",
                                "args": [6 * PAGE, offset]}])
    assert got == [expect(data[:cut], 6 * PAGE, offset)]


def test_a_block_device_is_read_through_the_mapping(tmp_path, loop_device) -> None:
    """A device has no probe (a shrink neither zeroes nor unmaps its pages): each
    read asks the size before and after its copy, and still copies from the mapping."""
    backing = tmp_path / "disk.img"
    data = os.urandom(16 * PAGE)
    backing.write_bytes(data)
    dev = loop_device(backing)
    reads = [(PAGE, 0), (100, 5 * PAGE + 7), (3 * PAGE, 14 * PAGE), (10, 16 * PAGE)]
    got = through_mapping([{"path": dev, "op": "readinto", "args": list(r)} for r in reads])
    for (n, offset), result in zip(reads, got):
        assert result == expect(data, n, offset), (n, offset)


def test_arrays_load_of_a_path_comes_through_the_mapping(tmp_path, failing_file) -> None:
    """arrays.load(path) reads the file once through a mapping of its own (ReadOnce),
    not a MappedFile: every byte of it still comes through the mapping, and after a
    bad page, the MappedFile it hands the rest to reads through its own."""
    arrays = {"small": np.arange(300, dtype=np.float64),
              "page": np.frombuffer(inject.pattern(PAGE), np.uint8),
              "fortran": np.asfortranarray(np.arange(64 * 1024.0).reshape(256, 256))}
    for name, array in arrays.items():
        np.save(tmp_path / f"{name}.npy", array)
    buf = io.BytesIO()
    np.save(buf, arrays["fortran"])
    f = failing_file(buf.getvalue(), [(10 * PAGE, 10 * PAGE + 1)])
    paths = [str(tmp_path / f"{name}.npy") for name in arrays] + [f.path]
    got = through_mapping([{"path": p, "op": "load_path"} for p in paths])
    for name, result in zip(arrays, got):
        reference = np.load(tmp_path / f"{name}.npy")
        assert result == [reference.nbytes, reference.tobytes()], name
    assert got[-1][0] == "error" and got[-1][1].startswith("MemoryFaultError: ")
    assert f"at file offset {10 * PAGE}" in got[-1][1]
