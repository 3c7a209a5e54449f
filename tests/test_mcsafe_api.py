"""mcsafe.copy on every kind of buffer, and its argument checks."""

from __future__ import annotations

import array
import mmap

import numpy as np
import pytest

import mcsafe


def test_table_published_and_handler_installed() -> None:
    assert mcsafe.table_status() == "ok"
    assert mcsafe.published_table_count() >= 1
    assert mcsafe.handler_installed()


@pytest.mark.parametrize("n", [0, 1, 7, 8, 31, 32, 33, 63, 64, 65, 255, 256, 1535, 1536, 1537,
                               4096, 65536, 1 << 20, (1 << 20) + 7])
def test_copies_exactly_n_bytes_on_both_paths(n: int) -> None:
    src = np.random.default_rng(n).integers(0, 256, n + 16, dtype=np.uint8).tobytes()
    dst = bytearray(b"\xee" * (n + 16))
    assert mcsafe.copy(dst, src, n) == n
    assert dst[:n] == src[:n] and dst[n:] == b"\xee" * 16


@pytest.mark.parametrize("path", mcsafe._mcsafe.copy_paths())
def test_each_path_copies(path: str) -> None:
    src = bytes(range(256)) * 1031
    dst = bytearray(len(src))
    r = mcsafe._mcsafe._copy_path(path, dst, src)
    assert r == (len(src), None) and dst == src


def test_buffer_types() -> None:
    data = bytes(range(200))
    targets = [bytearray(200), memoryview(bytearray(200)), array.array("B", bytes(200)),
               np.zeros(200, np.uint8), np.zeros(50, np.int32)]
    for dst in targets:
        assert mcsafe.copy(dst, data) == 200
        assert bytes(memoryview(dst).cast("B")) == data
    m = mmap.mmap(-1, 4096)
    assert mcsafe.copy(m, data, dst_offset=100) == 200
    assert m[100:300] == data
    out = bytearray(200)
    assert mcsafe.copy(out, m, 200, src_offset=100) == 200 and out == data
    m.close()


def test_default_n_is_what_both_hold_after_offsets() -> None:
    assert mcsafe.copy(bytearray(10), b"x" * 100) == 10
    assert mcsafe.copy(bytearray(100), b"x" * 10) == 10
    assert mcsafe.copy(bytearray(100), b"x" * 50, dst_offset=60, src_offset=5) == 40


def test_offsets_place_the_bytes() -> None:
    dst = bytearray(b"." * 16)
    assert mcsafe.copy(dst, b"0123456789", 4, dst_offset=3, src_offset=2) == 4
    assert dst == b"...2345........."


def test_read_only_dst_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="writable"):
        mcsafe.copy(b"immutable", b"x")
    with pytest.raises(TypeError, match="writable"):
        mcsafe.copy(memoryview(bytearray(4)).toreadonly(), b"x")
    with pytest.raises(TypeError):
        mcsafe.copy(bytearray(4), "text")


@pytest.mark.parametrize("kwargs,words", [
    ({"n": 11}, "exceeds the 10 bytes of src"),
    ({"n": 9, "dst_offset": 2}, "exceeds the 8 bytes of dst"),
    ({"n": -1}, "n must be >= 0"),
    ({"dst_offset": -1}, "dst_offset=-1"),
    ({"dst_offset": 11}, "dst_offset=11"),
    ({"src_offset": 11}, "src_offset=11"),
])
def test_out_of_range_sizes_and_offsets(kwargs: dict, words: str) -> None:
    dst = bytearray(b"\xaa" * 10)
    with pytest.raises(ValueError, match=words):
        mcsafe.copy(dst, b"s" * 10, **kwargs)
    assert dst == b"\xaa" * 10


def test_non_contiguous_buffer_is_refused() -> None:
    a = np.zeros((4, 4), np.uint8)[:, ::2]
    with pytest.raises(TypeError):
        mcsafe.copy(a, b"x" * 8)


def test_overlapping_buffers_are_refused() -> None:
    buf = bytearray(range(64))
    view = memoryview(buf)
    with pytest.raises(ValueError, match="overlap"):
        mcsafe.copy(view[8:], view[:32], 32)
    assert mcsafe.copy(view[32:], view[:32], 32) == 32     # adjacent is fine
    assert buf[32:] == bytes(range(32))


def test_copy_report_without_fault() -> None:
    r = mcsafe.copy_report(bytearray(5), b"hello")
    assert r == mcsafe.CopyResult(5, None) and r.copied == 5 and r.fault is None


def test_memory_fault_error_is_an_eio_oserror() -> None:
    import errno

    f = mcsafe.FaultInfo(0x1000, 12, "src", 7, 2)
    e = mcsafe.MemoryFaultError(f, "read")
    assert isinstance(e, OSError) and e.errno == errno.EIO
    assert (e.address, e.offset, e.side, e.signal, e.code) == (0x1000, 12, "src", 7, 2)
    assert "offset 12" in str(e)


def test_install_is_idempotent() -> None:
    mcsafe.install()
    mcsafe.install()
    assert mcsafe.handler_installed()
