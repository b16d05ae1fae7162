"""The output writer never damages an existing result: a write that fails midway leaves the
target byte-identical and no temporary file behind.

The failure is injected into the file handle the writer actually writes to (a full disk after
a few KiB), into fsync and into the final rename, so a writer that opened the target directly
("straight to the target when it already exists") fails these tests.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from psi import atomic, records
from psi.atomic import AtomicFile, atomic_write_bytes
from psi.errors import InputError
from psi.records import write_rows

PREVIOUS = b"id,name\r\n9,previous result \xe2\x9c\x93\r\n"


class _FullDisk:
    """A handle proxy whose writes fail with ENOSPC once ``budget`` bytes have gone through."""

    def __init__(self, handle: Any, budget: int) -> None:
        self._handle, self._budget = handle, budget

    def write(self, data: bytes) -> int:
        if len(data) > self._budget:
            self._handle.write(bytes(data[: self._budget]))
            self._budget = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._budget -= len(data)
        return self._handle.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "bank.csv"
    path.write_bytes(b"id,name\n" + b"".join(b"%d,customer number %d\n" % (i, i) for i in range(5000)))
    return path


def _target(tmp_path: Path) -> Path:
    out = tmp_path / "result.csv"
    out.write_bytes(PREVIOUS)
    return out


def _assert_untouched(tmp_path: Path, out: Path) -> None:
    assert out.read_bytes() == PREVIOUS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bank.csv", "result.csv"]  # no temp file left


@pytest.mark.parametrize("budget", [0, 10, 4096, 60_000])
def test_disk_full_midway_leaves_the_existing_target_byte_identical(source, tmp_path, monkeypatch, budget):
    out = _target(tmp_path)
    real = records._write_csv

    def writer(src: Path, fmt: str, order: Any, handle: Any, expect_rows: Any) -> None:
        real(src, fmt, order, _FullDisk(handle, budget), expect_rows)

    monkeypatch.setattr(records, "_write_csv", writer)
    with pytest.raises(InputError, match="cannot write the output"):
        write_rows(source, list(range(5000)), out)
    _assert_untouched(tmp_path, out)
    monkeypatch.setattr(records, "_write_csv", real)  # and a later write still replaces it whole
    assert write_rows(source, [3, 1], out) == 2
    assert out.read_bytes() == b"id,name\n3,customer number 3\n1,customer number 1\n"


@pytest.mark.parametrize("stage", ["fsync", "replace"])
def test_failure_at_fsync_or_rename_leaves_the_existing_target(source, tmp_path, monkeypatch, stage):
    out = _target(tmp_path)

    def fail(*args: Any, **kw: Any) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(atomic.os, stage, fail)
    with pytest.raises(InputError, match="cannot write the output"):
        write_rows(source, list(range(100)), out)
    monkeypatch.undo()
    _assert_untouched(tmp_path, out)


def test_an_error_inside_the_writer_leaves_the_existing_target(source, tmp_path, monkeypatch):
    out = _target(tmp_path)
    real = records._write_csv

    def writer(src: Path, fmt: str, order: Any, handle: Any, expect_rows: Any) -> None:
        real(src, fmt, order[:10], handle, None)  # some rows really written...
        raise KeyboardInterrupt  # ...then the operator presses Ctrl-C

    monkeypatch.setattr(records, "_write_csv", writer)
    with pytest.raises(KeyboardInterrupt):
        write_rows(source, list(range(100)), out)
    _assert_untouched(tmp_path, out)


def test_atomic_file_directly(tmp_path):
    out = tmp_path / "result.csv"
    out.write_bytes(PREVIOUS)
    (tmp_path / "bank.csv").write_bytes(b"")
    with pytest.raises(RuntimeError):
        with AtomicFile(out) as handle:
            handle.write(b"x" * (3 << 20))  # more than the buffer: bytes reach the temp file
            raise RuntimeError("failed midway")
    _assert_untouched(tmp_path, out)
    with AtomicFile(out, mode=0o640) as handle:
        handle.write(b"new")
    assert out.read_bytes() == b"new" and (out.stat().st_mode & 0o777) == 0o640
    atomic_write_bytes(out, b"newer")
    assert out.read_bytes() == b"newer"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bank.csv", "result.csv"]


def test_parquet_writer_failure_leaves_the_existing_target(tmp_path, monkeypatch):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    src = tmp_path / "bank.parquet"
    pq.write_table(pa.table({"id": [str(i) for i in range(3000)], "v": list(range(3000))}), src, row_group_size=500)
    out = tmp_path / "result.parquet"
    out.write_bytes(PREVIOUS)
    real = records._write_parquet

    def writer(src: Path, fmt: str, order: Any, handle: Any, expect_rows: Any) -> None:
        real(src, fmt, order, _FullDisk(handle, 2000), expect_rows)

    monkeypatch.setattr(records, "_write_parquet", writer)
    with pytest.raises((InputError, OSError)):
        write_rows(src, list(range(3000)), out)
    assert out.read_bytes() == PREVIOUS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bank.parquet", "result.parquet"]
