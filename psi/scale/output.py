"""The bucketed session's output, streamed from the per-bucket checkpoints in bounded memory.

:func:`psi.records.write_rows` takes the whole row order and keeps two byte offsets per input
row: at 10^8 rows that is 1.6 GB plus the order. :func:`write_bucketed_output` writes the same
bytes (header, BOM, line endings, empty rows, a missing final newline: everything as
``write_rows`` would for the same order) while holding only about ``ROW_RANGE`` input rows'
worth of entries, one tag chunk and one scan block at a time:

1. *distribute*: each bucket's checkpoint (matched rows with their order tags, and the rows
   written in file order: the own unmatched rows of an outer join, or a receiver's matched
   rows) is sorted by row and appended to one file per range of ``ROW_RANGE`` input rows;
2. *scan*: one pass over the input (the CSV/TSV scan of :mod:`psi.records`, with byte
   offsets); for the rows of each block, the matched entries' lines go to one of ``K`` tag
   chunk files (chunk = top bits of the order tag), the file-order rows' lines to ``direct``;
3. *write*: per tag chunk in order, sort its entries by (tag, bucket, position in the bucket)
   -- exactly the stable sort by tag of the concatenated buckets that the order means -- and
   write their lines; then the tails (``direct`` and runs of empty rows) as the join asks.

Disk: about the output's bytes plus 32 bytes per matched row, in the work dir. Parquet inputs
keep ``write_rows`` (the caller builds the order in memory; see docs/SCALE.md).
"""

from __future__ import annotations

import errno
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Sequence

import numpy as np

from ..atomic import AtomicFile
from ..errors import InputError, UsageError
from ..records import _Block, _CsvScan
from .buckets import _write, write_error

__all__ = ["ROW_RANGE", "TAG_CHUNK", "Segment", "write_bucketed_output"]

#: Input rows per range file (the scan holds one range's entries at a time).
ROW_RANGE = 1 << 22
#: Target matched entries per tag chunk (the write holds one chunk at a time).
TAG_CHUNK = 1 << 21
_FLUSH = 32 << 20  # bytes buffered for the tag chunk files before appending
_WRITE_BATCH = 1 << 16  # lines joined per write call
_ENTRY = np.dtype([("row", "<i8"), ("tag", "<u8"), ("bucket", "<i8"), ("seq", "<i8")])
_DOING = "preparing the output"
_META = np.dtype([("tag", "<u8"), ("bucket", "<i8"), ("seq", "<i8"), ("length", "<u8")])


@dataclass(frozen=True)
class Segment:
    """A piece of the output after the matched rows: this side's ``direct`` rows (``own``) or
    ``count`` empty rows."""

    kind: str  # "own" or "empty"
    count: int = 0


def _append(path: Path, parts: Sequence[bytes | np.ndarray]) -> None:
    need = sum(len(p) if isinstance(p, bytes) else p.nbytes for p in parts)
    _write(path, parts, "ab", lambda: need, _DOING)


def _read_array(path: Path, dtype: Any) -> np.ndarray:
    if not path.exists():
        return np.zeros(0, dtype=dtype)
    return np.fromfile(path, dtype=dtype)


class _Writer:
    """The three steps of the module docstring over one work directory ``tmp``."""

    def __init__(self, tmp: Path, rows_read: int) -> None:
        self.tmp = tmp
        self.ranges = max(1, -(-rows_read // ROW_RANGE))
        self.matched = 0
        self.direct = 0
        self.bits = 0
        self._buffers: dict[int, list[tuple[np.ndarray, bytes]]] = {}
        self._buffered = 0
        # the scan's state: the CSV scan, the input's descriptor, the loaded range's entries
        self._scan: Any = None
        self._fd = -1
        self._range = -1
        self._m = np.zeros(0, dtype=_ENTRY)
        self._d = np.zeros(0, dtype="<i8")
        self._seen_matched = self._seen_direct = 0

    # -- 1. distribute ----------------------------------------------------------------------
    def _by_range(self, rows: np.ndarray) -> list[tuple[int, int, int]]:
        cuts = np.searchsorted(rows, np.arange(self.ranges + 1, dtype=np.int64) * ROW_RANGE)
        return [(r, int(cuts[r]), int(cuts[r + 1])) for r in range(self.ranges) if cuts[r + 1] > cuts[r]]

    def add_bucket(self, bucket: int, matched: np.ndarray | None, tags: np.ndarray | None,
                   direct: np.ndarray | None) -> None:
        """One bucket's matched rows (with tags, in the bucket's order) and file-order rows."""
        if matched is not None and len(matched):
            entries = np.empty(len(matched), dtype=_ENTRY)
            entries["row"], entries["tag"], entries["bucket"] = matched, tags, bucket
            entries["seq"] = np.arange(len(matched), dtype=np.int64)
            entries = entries[np.argsort(matched, kind="stable")]
            for r, a, z in self._by_range(entries["row"]):
                _append(self.tmp / f"m{r:05d}", [entries[a:z]])
            self.matched += len(matched)
        if direct is not None and len(direct):
            direct = np.sort(np.asarray(direct, dtype="<i8"))
            for r, a, z in self._by_range(direct):
                _append(self.tmp / f"d{r:05d}", [direct[a:z]])
            self.direct += len(direct)

    # -- 2. scan ----------------------------------------------------------------------------
    def scan(self, src: Path, fmt: str, direct_out: BinaryIO) -> _CsvScan:
        self.bits = max(0, int(np.ceil(np.log2(max(self.matched, 1) / TAG_CHUNK))))
        scan = self._scan = _CsvScan(src, fmt, offsets=True)
        self._range = -1
        self._seen_matched = self._seen_direct = 0
        pending: list[tuple[int, int, int]] = []
        with open(src, "rb") as source:
            self._fd = source.fileno()
            for item in scan.items():
                if isinstance(item, _Block):
                    if pending:
                        self._flush_pending(pending, direct_out)
                    self._rows(item.row0, item.starts, item.ends, direct_out)  # type: ignore[arg-type]
                    continue
                pending.append((item[0], item[2], item[3]))
                if len(pending) >= 4096:
                    self._flush_pending(pending, direct_out)
            if pending:
                self._flush_pending(pending, direct_out)
        self._flush_chunks()
        if self._seen_matched != self.matched or self._seen_direct != self.direct:
            raise InputError(f"{src.name}: has {scan.row} data rows now but rows beyond them were matched;"
                             " the file changed during the run")
        return scan

    def _flush_pending(self, pending: list[tuple[int, int, int]], direct_out: BinaryIO) -> None:
        rows = np.array(pending, dtype=np.int64)
        self._rows(int(rows[0, 0]), rows[:, 1].copy(), rows[:, 2].copy(), direct_out)
        pending.clear()

    def _load_range(self, r: int) -> None:
        self._range = r
        self._m = _read_array(self.tmp / f"m{r:05d}", _ENTRY)
        self._m = self._m[np.argsort(self._m["row"], kind="stable")]  # buckets were appended one after another
        self._d = np.sort(_read_array(self.tmp / f"d{r:05d}", "<i8"))
        (self.tmp / f"m{r:05d}").unlink(missing_ok=True)
        (self.tmp / f"d{r:05d}").unlink(missing_ok=True)

    def _rows(self, row0: int, starts: np.ndarray, ends: np.ndarray, direct_out: BinaryIO) -> None:
        """Rows ``row0 ..`` with byte ranges ``starts[i]:ends[i]`` of the input."""
        row, stop = row0, row0 + len(starts)
        while row < stop:
            r = row // ROW_RANGE
            if r != self._range:
                self._load_range(r)
            end = min(stop, (r + 1) * ROW_RANGE)
            m, d = self._m, self._d
            ma, mz = np.searchsorted(m["row"], [row, end])
            da, dz = np.searchsorted(d, [row, end])
            if mz > ma:
                sel = m[ma:mz]
                lines = self._lines(sel["row"] - row0, starts, ends)
                self._to_chunks(sel, lines)
                self._seen_matched += len(sel)
            if dz > da:
                lines = self._lines(d[da:dz] - row0, starts, ends)
                direct_out.write(b"".join(lines))
                self._seen_direct += int(dz - da)
            row = end

    def _lines(self, at: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> list[bytes]:
        """The input's bytes of rows ``at`` (indices into ``starts``/``ends``), each ending in a
        newline (only the file's last record can lack one; ``write_rows`` adds it too)."""
        s, e = starts[at], ends[at]
        lo, hi = int(s.min()), int(e.max())
        data = os.pread(self._fd, hi - lo, lo)
        if len(data) != hi - lo:
            raise InputError("the input file became shorter during the run")
        s, e = (s - lo).tolist(), (e - lo).tolist()
        lines = list(map(data.__getitem__, map(slice, s, e)))
        if data[-1:] != b"\n":  # the unterminated last record is the one ending at hi
            for i in [i for i, x in enumerate(e) if x == hi - lo]:
                lines[i] += self._scan.newline
        return lines

    def _to_chunks(self, sel: np.ndarray, lines: list[bytes]) -> None:
        meta = np.empty(len(sel), dtype=_META)
        meta["tag"], meta["bucket"], meta["seq"] = sel["tag"], sel["bucket"], sel["seq"]
        meta["length"] = np.fromiter(map(len, lines), dtype=np.uint64, count=len(lines))
        chunk = (sel["tag"] >> np.uint64(64 - self.bits)).astype(np.int64) if self.bits else np.zeros(len(sel), np.int64)
        order = np.argsort(chunk, kind="stable")
        counts = np.bincount(chunk, minlength=1 << self.bits)
        bounds = np.concatenate([[0], np.cumsum(counts)]).tolist()
        ordered = list(map(lines.__getitem__, order.tolist()))
        meta = meta[order]
        for k in np.flatnonzero(counts).tolist():
            a, z = bounds[k], bounds[k + 1]
            blob = b"".join(ordered[a:z])
            self._buffers.setdefault(k, []).append((meta[a:z], blob))
            self._buffered += len(blob) + 32 * (z - a)
        if self._buffered >= _FLUSH:
            self._flush_chunks()

    def _flush_chunks(self) -> None:
        for k, parts in self._buffers.items():
            meta = np.concatenate([p[0] for p in parts])
            blob = b"".join(p[1] for p in parts)
            _append(self.tmp / f"t{k:05d}", [np.array([len(meta), len(blob)], dtype="<u8"), meta, blob])
        self._buffers.clear()
        self._buffered = 0

    # -- 3. write ---------------------------------------------------------------------------
    def write_matched(self, handle: BinaryIO) -> None:
        for k in range(1 << self.bits):
            path = self.tmp / f"t{k:05d}"
            if not path.exists():
                continue
            data = path.read_bytes()
            metas, offsets, pos = [], [], 0
            while pos < len(data):
                n, nbytes = (int(x) for x in np.frombuffer(data, dtype="<u8", count=2, offset=pos))
                pos += 16
                meta = np.frombuffer(data, dtype=_META, count=n, offset=pos)
                pos += meta.nbytes
                ends = np.cumsum(meta["length"].astype(np.int64)) + pos
                metas.append(meta)
                offsets.append(ends)
                pos += nbytes
            meta = np.concatenate(metas)
            ends = np.concatenate(offsets)
            starts = ends - meta["length"].astype(np.int64)
            order = np.lexsort((meta["seq"], meta["bucket"], meta["tag"]))
            for a in range(0, len(order), _WRITE_BATCH):
                pick = order[a:a + _WRITE_BATCH]
                handle.write(b"".join(map(data.__getitem__, map(slice, starts[pick].tolist(), ends[pick].tolist()))))
            del data
            path.unlink()


def write_bucketed_output(src: str | os.PathLike[str], out: str | os.PathLike[str], *, fmt: str, tmp: Path,
                          rows_read: int, buckets: Sequence[dict[str, np.ndarray | None]],
                          segments: Sequence[Segment] | None) -> int:
    """Write ``out`` (atomically, mode 0600) from a CSV/TSV ``src`` and per-bucket results.

    ``buckets[b]`` (loaded one at a time; a sequence of lazily loading mappings is fine) holds
    ``matched`` and ``tags`` (``--reveal both``: the bucket's matched rows in its order and the
    order tag of each) and ``direct`` (the rows written in file order: the own unmatched rows,
    or a receiver's matched rows). ``segments`` is ``None`` for file order only (``direct``
    is the whole output), else what follows the matched rows. Returns the data rows written.
    ``rows_read`` guards against the input having changed since it was split (InputError).
    """
    src, out = Path(src), Path(out)
    if out.resolve() == src.resolve():
        raise UsageError(f"{out.name}: the output file must differ from the input file")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(mode=0o700, parents=True)
    try:
        writer = _Writer(tmp, rows_read)
        for b, part in enumerate(buckets):
            writer.add_bucket(b, part.get("matched"), part.get("tags"), part.get("direct"))
        try:
            with open(tmp / "direct", "wb") as direct_out:
                scan = writer.scan(src, fmt, direct_out)
        except OSError as err:
            if err.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise  # not the ``direct`` file filling the disk (e.g. a read error of the input)
            raise write_error(tmp / "direct", err, lambda: src.stat().st_size, _DOING) from None
        if scan.row != rows_read:
            raise InputError(f"{src.name}: has {scan.row} data rows now but had {rows_read} when its keys were read;"
                             " the file changed during the run")
        width = len(scan.header)
        newline = scan.newline
        empty = (b"," * (width - 1) if fmt == "csv" else b"\t" * (width - 1)) if width > 1 else b'""'
        if width == 1 and fmt == "tsv":
            empty = b""  # as write_rows: TSV has no quoting
        empty += newline
        header = scan.bom + scan.header_bytes
        if not header.endswith(b"\n"):
            header += newline
        written = 0
        try:
            with AtomicFile(out) as handle:
                handle.write(header)
                if segments is not None:
                    writer.write_matched(handle)
                    written += writer.matched
                for segment in segments if segments is not None else [Segment("own")]:
                    if segment.kind == "own":
                        with open(tmp / "direct", "rb") as direct_in:
                            shutil.copyfileobj(direct_in, handle, 1 << 22)
                        written += writer.direct
                    else:
                        for a in range(0, segment.count, _WRITE_BATCH):
                            handle.write(empty * min(_WRITE_BATCH, segment.count - a))
                        written += segment.count
        except OSError as err:
            raise InputError(f"{out}: cannot write the output ({err.strerror or err})") from None
        return written
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
