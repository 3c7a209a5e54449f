"""Files that are not what their path says: truncated under us, FIFOs, devices, hard links."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import pytest

from conftest import run_cli

RULE = "copy_word=errno"

_TRUNCATE_THEN_READ = """
import os, sys
from extable.elf import ElfImage
from extable.errors import ExtableError
path, what = sys.argv[1], sys.argv[2]
image = ElfImage(path)
os.truncate(path, 4096)          # another process shrinks the file while we hold it
try:
    if what == "symbols":
        len(image.functions)
    else:
        from extable.compiler import build
        from extable.sites import Rule
        from extable.spec import load
        from extable.writer import write_added_section
        table = build(image, load(None, image.machine), [Rule.parse("copy_word=errno")]).table
        write_added_section(image, table, sys.argv[3])
except ExtableError as exc:
    print(exc)
    sys.exit(2)
print("read a file that had shrunk")
"""


@pytest.mark.parametrize("what", ["symbols", "build"])
def test_a_file_truncated_while_held_is_an_error_not_sigbus(built, tmp_path, what) -> None:
    src = tmp_path / "shrinking.so"
    src.write_bytes(built["plain"].read_bytes())
    out = tmp_path / "out.so"
    proc = subprocess.run([sys.executable, "-c", _TRUNCATE_THEN_READ, str(src), what, str(out)],
                          capture_output=True, text=True)
    assert proc.returncode != -signal.SIGBUS, "died of SIGBUS reading a truncated file"
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert str(src) in proc.stdout and "shrank" in proc.stdout, proc.stdout
    assert sorted(os.listdir(tmp_path)) == ["shrinking.so"]      # no output, no temporary


@pytest.mark.parametrize("command", ["symbols", "build", "dump", "verify", "lookup"])
def test_a_fifo_input_is_refused_at_once(tmp_path, command) -> None:
    fifo = tmp_path / "pipe.so"
    os.mkfifo(fifo)
    extra = {"build": ["-o", str(tmp_path / "o.so"), "--add-section"],
             "lookup": ["0x10"]}.get(command, [])
    try:
        proc = subprocess.run([sys.executable, "-m", "extable", command, str(fifo), *extra],
                              capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail(f"extable {command} blocked opening a FIFO")
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert f"{fifo}: not a regular file" in proc.stderr
    assert sorted(os.listdir(tmp_path)) == ["pipe.so"]


def test_an_output_that_is_not_a_regular_file_is_never_replaced(built, tmp_path) -> None:
    fifo = tmp_path / "out.pipe"
    os.mkfifo(fifo)
    proc = run_cli("build", built["plain"], "-o", fifo, "--add-section", "--rule", RULE)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert f"{fifo}: " in proc.stderr and "not a regular file" in proc.stderr
    assert fifo.is_fifo() and sorted(os.listdir(tmp_path)) == ["out.pipe"]


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod of a character device needs root")
def test_an_output_that_is_a_device_is_never_replaced(built, tmp_path) -> None:
    dev = tmp_path / "null"
    os.mknod(dev, 0o666 | 0o020000, os.makedev(1, 3))     # a second /dev/null
    proc = run_cli("build", built["plain"], "-o", dev, "--add-section", "--rule", RULE)
    assert proc.returncode == 2 and "not a regular file" in proc.stderr, proc.stderr
    assert dev.is_char_device()


@pytest.mark.parametrize("fixture,extra", [("plain", ["--add-section"]), ("x86", [])])
def test_in_place_on_a_hard_link_rewrites_the_shared_inode(built, tmp_path, fixture,
                                                           extra) -> None:
    """As objcopy, strip and patchelf do: every name of the file sees the result."""
    first = tmp_path / "lib.so.1.0"
    first.write_bytes(built[fixture].read_bytes())
    second = tmp_path / "lib.so.1"
    os.link(first, second)
    inode = os.stat(first).st_ino
    run_cli("build", second, "--in-place", "--rule", RULE, *extra, check=True)
    assert os.stat(first).st_ino == os.stat(second).st_ino == inode
    assert os.stat(first).st_nlink == 2
    proc = run_cli("lookup", first, "copy_word")
    assert proc.returncode == 0 and "copy_word" in proc.stdout, proc.stderr
    assert run_cli("verify", second).returncode == 0
    assert sorted(os.listdir(tmp_path)) == ["lib.so.1", "lib.so.1.0"]


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_in_place_keeps_the_owner_and_mode(built, tmp_path) -> None:
    src = tmp_path / "lib.so"
    src.write_bytes(built["plain"].read_bytes())
    os.chown(src, 1234, 4321)
    os.chmod(src, 0o4755)              # set-user-ID survives: chown happens before chmod
    run_cli("build", src, "--in-place", "--add-section", "--rule", RULE, check=True)
    st = os.stat(src)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (1234, 4321, 0o4755)


def test_in_place_on_a_hard_link_refused_input_is_untouched(built, tmp_path) -> None:
    first = tmp_path / "a.so"
    first.write_bytes(built["plain"].read_bytes())
    os.link(first, tmp_path / "b.so")
    before = first.read_bytes()
    proc = run_cli("build", tmp_path / "b.so", "--in-place", "--rule", "nothing*=fixup@",
                   "--add-section")
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1
    assert first.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["a.so", "b.so"]


def test_a_file_without_section_headers_says_so(built, tmp_path) -> None:
    """sstrip and some packers leave e_shnum 0: refused in one line that says why."""
    blob = bytearray(built["plain"].read_bytes())
    struct.pack_into("<Q", blob, 0x28, 0)                  # e_shoff
    struct.pack_into("<HH", blob, 0x3C, 0, 0)              # e_shnum, e_shstrndx
    src = tmp_path / "nosections.so"
    src.write_bytes(bytes(blob))
    for args in (["symbols", src], ["build", src, "-o", tmp_path / "o.so", "--add-section",
                                    "--rule", RULE]):
        proc = run_cli(*args)
        assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
        assert f"{src}: no section headers (e_shnum is 0" in proc.stderr, proc.stderr
    proc = run_cli("build", src, "-o", tmp_path / "o.so", "--add-section")
    assert proc.returncode == 2 and "no section headers to add a section to" in proc.stderr
    assert sorted(os.listdir(tmp_path)) == ["nosections.so"]


@pytest.fixture
def small_tmpfs(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(mnt)], check=True)
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


def test_in_place_on_a_hard_link_with_no_room_leaves_the_file_as_it_was(built, tmp_path,
                                                                        small_tmpfs) -> None:
    """Room for the temporary file but not for growing the linked file: refused, and the
    file keeps its bytes (it was once left half rewritten)."""
    first = small_tmpfs / "a.so"
    first.write_bytes(built["plain"].read_bytes())
    os.link(first, small_tmpfs / "b.so")
    before = first.read_bytes()
    probe = tmp_path / "probe.so"
    run_cli("build", first, "-o", probe, "--add-section", "--rule", RULE, check=True)
    st = os.statvfs(small_tmpfs)
    room = -(-probe.stat().st_size // st.f_bsize) * st.f_bsize       # the temporary's pages
    with open(small_tmpfs / "fill", "wb") as f:
        f.write(b"\0" * (st.f_bavail * st.f_bsize - room))
    proc = run_cli("build", small_tmpfs / "b.so", "--in-place", "--add-section", "--rule", RULE)
    assert proc.returncode == 2 and "No space left on device" in proc.stderr, proc.stderr
    assert len(proc.stderr.splitlines()) == 1
    assert first.read_bytes() == before
    assert sorted(os.listdir(small_tmpfs)) == ["a.so", "b.so", "fill"]


_TERMINATED_WHILE_WRITING = """
import os, signal, sys
import extable.writer
from extable.cli import main
real = extable.writer.check_unchanged

def check_then_terminated(*args):
    real(*args)                          # the temporary output is complete at this point
    os.kill(os.getpid(), signal.SIGTERM)

extable.writer.check_unchanged = check_then_terminated
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_during_build_removes_the_temporary_and_dies_of_sigterm(built,
                                                                        tmp_path) -> None:
    out = tmp_path / "out.so"
    proc = subprocess.run([sys.executable, "-c", _TERMINATED_WHILE_WRITING, "build",
                           str(built["plain"]), "-o", str(out), "--add-section", "--rule", RULE],
                          capture_output=True, text=True)
    assert proc.returncode == -signal.SIGTERM, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert os.listdir(tmp_path) == []                # neither out.so nor .extable-*


@pytest.mark.parametrize("replaced_by", ["another file", "nothing"])
def test_in_place_refuses_when_the_path_was_replaced_meanwhile(built, tmp_path,
                                                               replaced_by) -> None:
    """A package manager installs a new version while extable works on the old one: the
    new file must not be overwritten with a table built from the old one."""
    from extable.compiler import build
    from extable.elf import ElfImage
    from extable.errors import ExtableError
    from extable.sites import Rule
    from extable.spec import load
    from extable.writer import write_added_section

    lib = tmp_path / "lib.so"
    lib.write_bytes(built["plain"].read_bytes())
    newer = b"the newer version"
    with ElfImage(lib) as image:
        table = build(image, load(None, image.machine), [Rule.parse(RULE)]).table
        if replaced_by == "nothing":
            lib.unlink()
        else:
            (tmp_path / "new").write_bytes(newer)
            os.replace(tmp_path / "new", lib)
        with pytest.raises(ExtableError, match="replaced or removed while extable read it"):
            write_added_section(image, table, str(lib), in_place=True)
    if replaced_by == "nothing":
        assert os.listdir(tmp_path) == []
    else:
        assert lib.read_bytes() == newer and os.listdir(tmp_path) == ["lib.so"]


def test_build_from_a_thread_works_without_the_termination_handler(built, tmp_path) -> None:
    """Signal handlers can only be set on the main thread: main() elsewhere still builds."""
    import threading

    from extable.cli import main

    out = tmp_path / "out.so"
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(main(
        ["build", str(built["plain"]), "-o", str(out), "--add-section", "--rule", RULE])))
    t.start()
    t.join()
    assert result == [0] and run_cli("verify", out).returncode == 0


_TERMINATED_WHILE_COPYING = """
import os, signal, sys, threading
import extable.output, extable.spec
from extable.cli import main

started, release = threading.Event(), threading.Event()
real_copy, real_discard, real_load = (extable.output.copy_file, extable.output.Output.discard,
                                      extable.spec.load)

def held_copy(src, dst):           # the copy is under way, and stays so until released
    started.set()
    release.wait()
    return real_copy(src, dst)

def discard(self):                 # what SIGTERM leads to: let the copy end, then clean up
    release.set()
    real_discard(self)

def load(*args):                   # compiling, with the copy in flight: SIGTERM arrives
    started.wait()
    os.kill(os.getpid(), signal.SIGTERM)
    return real_load(*args)

extable.output.copy_file, extable.output.Output.discard = held_copy, discard
extable.spec.load = load
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_while_the_input_is_being_copied_removes_the_temporary(built,
                                                                       tmp_path) -> None:
    """The copy of the input runs in a thread while the table is compiled: a SIGTERM then
    waits for it to end, removes the temporary file, and dies of SIGTERM."""
    out = tmp_path / "out.so"
    proc = subprocess.run([sys.executable, "-c", _TERMINATED_WHILE_COPYING, "build",
                           str(built["plain"]), "-o", str(out), "--add-section", "--rule", RULE],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGTERM, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert os.listdir(tmp_path) == []                # neither out.so nor .extable-*


def test_a_copy_that_fails_is_one_line_and_leaves_nothing(built, tmp_path) -> None:
    """An error in the copying thread (here EIO from the input's file system) is the
    command's error: exit 2, one line naming the file, nothing written."""
    code = ("import errno, sys, extable.output\n"
            "from extable.cli import main\n"
            "def failing(src, dst):\n"
            "    raise OSError(errno.EIO, 'Input/output error')\n"
            "extable.output.copy_file = failing\n"
            "sys.exit(main(sys.argv[1:]))\n")
    out = tmp_path / "out.so"
    proc = subprocess.run([sys.executable, "-c", code, "build", str(built["plain"]), "-o",
                           str(out), "--add-section", "--rule", RULE], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"extable: {out}: cannot write: Input/output error"]
    assert os.listdir(tmp_path) == []
