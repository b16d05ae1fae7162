"""Bucket files: one streaming pass splits an input into key buckets on disk.

A party reads its input once (the same reader as :func:`psi.records.read_keys`, so
normalisation, empty-key and regex rules are identical) and appends every counted row's key,
row number and line number to one of ``fine`` spill files, chosen by a keyed hash of the key:
``fine_index = (BLAKE2b-64(bucket_key, key) >> 32) * fine >> 32``. The bucket key is derived
from both parties' nonces (:func:`bucket_key`), so neither side chooses the split.

A session's ``n`` buckets are contiguous ranges of fine buckets (fine bucket ``f`` belongs to
bucket ``f * n // fine``), so ``n`` can be chosen after both set sizes are known without a
second pass over the input. :func:`prepare_fine` then applies the dedup policy per fine bucket
(a key always lands in one fine bucket, so per-bucket dedup equals whole-file dedup) and
writes the unique keys with their rows; :func:`load_bucket` reads one bucket back.

Memory: the spill writer buffers at most ``SPILL_BUFFER`` bytes; preparing and loading touch
one fine bucket / one bucket at a time. Disk: about (key bytes + 20) per row, twice at peak.
"""

from __future__ import annotations

import errno
import hashlib
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import InputError, LocalError
from ..records import _Collector, _read_csv_keys, _read_parquet_keys, detect_format
from ..normalize import Normalization

__all__ = [
    "FINE_MAX",
    "SPILL_BUFFER",
    "DiskFull",
    "bucket_key",
    "fine_hint",
    "fine_indices",
    "bucket_ranges",
    "padded_size",
    "auto_buckets",
    "BYTES_PER_KEY",
    "Partition",
    "partition_input",
    "prepare_fine",
    "load_bucket",
]

FINE_MAX = 1024
SPILL_BUFFER = 32 << 20
#: Working memory per key of the larger side's bucket, per protocol (measured peak RSS per
#: party divided by keys per side: KKRT 4*10^6 -> 1.5 GB, ECDH 10^6 -> 0.49 GB; RSA estimated).
BYTES_PER_KEY = {"kkrt": 400, "ecdh": 520, "rsa": 700}
#: Overflow probability bound per bucket for the padded size (about 2^-40).
_TAIL_LOG = 40 * math.log(2)
_CHUNK = np.dtype("<u8")


class DiskFull(LocalError):
    """Writing a spill, bucket or checkpoint file ran out of disk space (exit 2)."""


def bucket_key(client_nonce: bytes, server_nonce: bytes) -> bytes:
    """The 32-byte key of the bucket hash, from both parties' 32-byte hello nonces."""
    h = hashlib.sha256(b"psiq/scale/bucket-key/v1\x00")
    h.update(client_nonce)
    h.update(server_nonce)
    return h.digest()


def fine_hint(input_bytes: int, buckets: int | None) -> int:
    """This side's proposal for the number of fine buckets (the session uses the larger one).

    An explicit ``--buckets n`` proposes ``n``; ``auto`` proposes a power of two near one fine
    bucket per MiB of input (4..1024), which only reveals the input size to a factor of two.
    """
    if buckets is not None:
        return buckets
    mib = max(1, -(-input_bytes // (1 << 20)))
    return min(FINE_MAX, max(4, 1 << (mib - 1).bit_length()))


def _multipliers(key: bytes, words: int) -> np.ndarray:
    """``2 * words + 2`` odd 64-bit multipliers derived from the bucket key (SHAKE-256)."""
    raw = hashlib.shake_256(b"psiq/scale/bucket-hash/v1\x00" + key).digest(8 * (2 * words + 2))
    return np.frombuffer(raw, dtype="<u8") | np.uint64(1)


def _mix(h: np.ndarray) -> np.ndarray:
    """A 64-bit finaliser (MurmurHash3 fmix64): every input bit affects every output bit."""
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> np.uint64(33))


def _distinct(lengths: np.ndarray) -> np.ndarray:
    """The distinct key lengths, ascending (np.unique is a hash table in numpy 2.4: 30x slower)."""
    if not len(lengths):
        return lengths
    if int(lengths.max()) < 1 << 16:
        return np.flatnonzero(np.bincount(lengths))
    ordered = np.sort(lengths)
    return ordered[np.concatenate([[True], ordered[1:] != ordered[:-1]])]


def keyed_hash64(lengths: np.ndarray, blob: np.ndarray, key: bytes) -> np.ndarray:
    """A keyed 64-bit hash of every key, vectorised per key length (no Python call per key).

    Keys of one length are viewed as rows of little-endian 64-bit words (zero-padded) and
    hashed NH-style, ``sum_j (w_2j + k_2j) * (w_2j+1 + k_2j+1)`` mod 2^64 with multipliers from
    the bucket key, plus the length, then finalised with fmix64. It is a keyed universal hash,
    not a PRF: it only spreads keys over buckets, and bucket sizes are padded (docs/SECURITY.md).
    """
    n = len(lengths)
    out = np.zeros(n, dtype=np.uint64)
    if not n:
        return out
    ends = np.cumsum(lengths, dtype=np.int64)
    starts = ends - lengths
    with np.errstate(over="ignore"):
        for length in _distinct(lengths).tolist():
            idx = np.flatnonzero(lengths == length)
            words = max(2, -(-(length + 7) // 16) * 2)  # even number of 8-byte words, >= length + 1 byte
            mat = np.zeros((len(idx), 8 * words), dtype=np.uint8)
            if length:
                windows = np.lib.stride_tricks.as_strided(blob, (len(blob) - length + 1, length), (1, 1),
                                                          writeable=False)
                mat[:, :length] = windows[starts[idx]]
            w = mat.view("<u8")
            k = _multipliers(key, words)
            acc = np.full(len(idx), np.uint64(length) * k[-1], dtype=np.uint64)
            for j in range(0, words, 2):
                acc += (w[:, j] + k[j]) * (w[:, j + 1] + k[j + 1])
            out[idx] = _mix(acc ^ k[-2])
    return out


def fine_indices(keys: Sequence[bytes], key: bytes, fine: int, packed: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Fine bucket of every key (int64 in ``0..fine-1``) from :func:`keyed_hash64`."""
    lengths, blob = packed if packed is not None else _pack(list(keys))
    h = keyed_hash64(lengths, blob, key) >> np.uint64(32)
    return ((h * np.uint64(fine)) >> np.uint64(32)).astype(np.int64)


def bucket_ranges(fine: int, buckets: int) -> list[tuple[int, int]]:
    """``[f0, f1)`` fine range of each bucket: fine bucket ``f`` is in bucket ``f * buckets // fine``."""
    owner = np.arange(fine, dtype=np.int64) * buckets // fine
    starts = np.searchsorted(owner, np.arange(buckets + 1))
    return [(int(starts[b]), int(starts[b + 1])) for b in range(buckets)]


def padded_size(total: int, fine: int, f0: int, f1: int, buckets: int) -> int:
    """The public size every bucket of a side with ``total`` unique keys is padded to.

    Each key lands in fine range ``[f0, f1)`` with probability ``p = (f1 - f0) / fine``, so a
    bucket's real size is Binomial(total, p); the padded size is its mean plus a Bernstein
    tail margin that a random split exceeds with probability below 2^-40 per session.
    """
    if total <= 0 or f1 <= f0:
        return 0
    mean = total * (f1 - f0) / fine
    log = _TAIL_LOG + math.log(max(buckets, 1))
    margin = log / 3 + math.sqrt(log * log / 9 + 2 * mean * log)
    return min(total, int(math.ceil(mean + margin)))


def auto_buckets(protocol: str, sizes: Sequence[int], memory_limit: int, fine: int) -> int:
    """Bucket count for ``--buckets auto``: the larger side's padded bucket should need at
    most a quarter of ``memory_limit`` (the rest covers the interpreter, workers, the output
    order and the session's fixed costs). At most ``fine``."""
    per_key = BYTES_PER_KEY.get(protocol, 700)
    largest = max([0, *sizes])
    budget = max(memory_limit // 4, 1 << 20)
    n = 1
    while n < fine:
        worst = max(padded_size(largest, fine, f0, f1, n) for f0, f1 in bucket_ranges(fine, n))
        if worst * per_key <= budget:
            break
        n = min(fine, max(n + 1, int(n * worst * per_key / budget) + 1))
    return n


# -- spilling -------------------------------------------------------------------------------
def _pack(keys: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.fromiter(map(len, keys), dtype=np.uint32, count=len(keys))
    return lengths, np.frombuffer(b"".join(keys), dtype=np.uint8)


def write_error(path: Path, err: OSError, needed: Callable[[], int], doing: str = "writing bucket files") -> LocalError:
    """The error to raise for ``err`` while writing ``path``: :class:`DiskFull` naming the path,
    what was being done and about how much more space is needed, else :class:`InputError`."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return DiskFull(f"{path}: disk full while {doing}; about {needed() / 2**20:,.0f} MiB more are needed"
                        f" ({shutil.disk_usage(path.parent).free / 2**20:,.0f} MiB free)")
    return InputError(f"{path}: cannot write ({err.strerror or err})")


def _write(path: Path, parts: Sequence[bytes | np.ndarray], mode: str, needed: Callable[[], int],
           doing: str = "writing bucket files") -> None:
    try:
        with open(path, mode) as handle:
            for part in parts:
                handle.write(part if isinstance(part, bytes) else part.tobytes())
    except OSError as err:
        raise write_error(path, err, needed, doing) from None


class _Spill:
    """Buffers (key, row, line) records per fine bucket and appends them to ``dir/f{i}.spill``."""

    def __init__(self, directory: Path, key: bytes, fine: int, input_bytes: int) -> None:
        self.directory, self.key, self.fine = directory, key, fine
        self.input_bytes = max(input_bytes, 1)
        self.parts: list[list[tuple[np.ndarray, bytes, np.ndarray, np.ndarray]]] = [[] for _ in range(fine)]
        self.buffered = 0
        self.written = 0
        self.rows = 0
        self.estimate = input_bytes
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)

    def path(self, f: int) -> Path:
        return self.directory / f"f{f:04d}.spill"

    def add(self, keys: list[bytes], rows: np.ndarray, lines: np.ndarray) -> None:
        if not keys:
            return
        lengths, blob = _pack(keys)
        fine = fine_indices(keys, self.key, self.fine, (lengths, blob))
        order = np.argsort(fine, kind="stable")
        ordered = list(map(keys.__getitem__, order.tolist()))
        lengths, rows, lines = lengths[order], rows[order], lines[order]
        counts = np.bincount(fine, minlength=self.fine)
        bounds = np.concatenate([[0], np.cumsum(counts)]).tolist()
        for f in np.flatnonzero(counts).tolist():
            a, b = bounds[f], bounds[f + 1]
            self.parts[f].append((lengths[a:b], b"".join(ordered[a:b]), rows[a:b], lines[a:b]))
        self.buffered += len(blob) + 20 * len(keys)
        self.rows += len(keys)
        if self.buffered >= SPILL_BUFFER:
            self.flush()

    def _needed(self) -> int:
        return max(self.estimate - self.written, self.buffered)

    def flush(self) -> None:
        for f, parts in enumerate(self.parts):
            if not parts:
                continue
            lengths = np.concatenate([p[0] for p in parts])
            chunk = [np.array([len(lengths), sum(len(p[1]) for p in parts)], dtype=_CHUNK), lengths]
            chunk += [p[1] for p in parts] + [np.concatenate([p[2] for p in parts]).astype("<i8")]
            chunk += [np.concatenate([p[3] for p in parts]).astype("<i8")]
            _write(self.path(f), chunk, "ab", self._needed)
            self.parts[f] = []
        self.written += self.buffered
        self.buffered = 0


class _SpillCollector(_Collector):
    """A :class:`psi.records._Collector` that hands every valid key to a :class:`_Spill`
    instead of deduplicating in memory (dedup happens per fine bucket afterwards)."""

    spill: _Spill
    _SINGLES = 4096

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._single_keys: list[bytes] = []
        self._single_rows: list[int] = []
        self._single_lines: list[int] = []

    def _keep(self, row: int, line: int, key: bytes) -> None:
        self._single_keys.append(key)
        self._single_rows.append(row)
        self._single_lines.append(line)
        if len(self._single_keys) >= self._SINGLES:
            self.flush_singles()

    def flush_singles(self) -> None:
        if self._single_keys:
            self.spill.add(self._single_keys, np.asarray(self._single_rows, dtype=np.int64),
                           np.asarray(self._single_lines, dtype=np.int64))
            self._single_keys, self._single_rows, self._single_lines = [], [], []

    def _dedup_batch(self, row0: int, keys: list[bytes], lines: np.ndarray) -> None:
        self.flush_singles()  # keep row order inside every fine bucket
        self.spill.add(keys, np.arange(row0, row0 + len(keys), dtype=np.int64), np.asarray(lines, dtype=np.int64))


@dataclass
class Partition:
    """What the streaming pass learned about one input (saved in the manifest)."""

    fmt: str
    header: list[str]
    columns: list[int]
    rows_read: int
    skipped_rows: int


def partition_input(path: Path, on: list[str], *, normalization: Normalization, dedup: str, fmt: str | None,
                    skip_empty: bool, key: bytes, fine: int, directory: Path,
                    progress: Callable[[int], None] | None = None) -> Partition:
    """Stream ``path`` once into ``fine`` spill files under ``directory`` (see the module doc)."""
    fmt = detect_format(path, fmt)
    size = path.stat().st_size if path.exists() else 1
    spill = _Spill(directory, key, fine, size)
    spill.estimate = estimate_spill_bytes(path, fmt)
    collector_cls = type("_BoundSpillCollector", (_SpillCollector,), {"spill": spill})
    seen = progress

    reader = _read_parquet_keys if fmt == "parquet" else _read_csv_keys
    if fmt == "parquet":
        header, columns, collector, rows = reader(path, on, normalization, dedup, skip_empty, seen, collector_cls)
    else:
        header, columns, collector, rows = reader(path, fmt, on, normalization, dedup, skip_empty, seen, collector_cls)
    collector.flush_singles()
    spill.flush()
    return Partition(fmt, list(header), list(columns), rows, collector.skipped)


def estimate_spill_bytes(path: Path, fmt: str) -> int:
    """Disk the spill files of ``path`` need, about: the input size plus 20 bytes per row
    (row and line numbers, key length), rows estimated from the first MiB (CSV/TSV)."""
    try:
        size = path.stat().st_size
        if fmt == "parquet":
            return 2 * size
        with open(path, "rb") as handle:
            sample = handle.read(1 << 20)
    except OSError:
        return 0
    lines = max(sample.count(b"\n"), 1)
    return size + 20 * int(size * lines / max(len(sample), 1))


# -- per fine bucket dedup ------------------------------------------------------------------
def _read_chunks(path: Path) -> tuple[np.ndarray, bytes, np.ndarray, np.ndarray]:
    if not path.exists():
        return np.zeros(0, np.uint32), b"", np.zeros(0, np.int64), np.zeros(0, np.int64)
    data = path.read_bytes()
    lengths, blobs, rows, lines = [], [], [], []
    pos = 0
    while pos < len(data):
        n, nbytes = (int(x) for x in np.frombuffer(data, dtype=_CHUNK, count=2, offset=pos))
        pos += 16
        lengths.append(np.frombuffer(data, dtype="<u4", count=n, offset=pos))
        pos += 4 * n
        blobs.append(data[pos:pos + nbytes])
        pos += nbytes
        rows.append(np.frombuffer(data, dtype="<i8", count=n, offset=pos))
        pos += 8 * n
        lines.append(np.frombuffer(data, dtype="<i8", count=n, offset=pos))
        pos += 8 * n
    return (np.concatenate(lengths), b"".join(blobs), np.concatenate(rows), np.concatenate(lines))


def _split(lengths: np.ndarray, blob: bytes) -> list[bytes]:
    ends = np.cumsum(lengths, dtype=np.int64).tolist()
    starts = [0, *ends[:-1]]
    return list(map(blob.__getitem__, map(slice, starts, ends)))


def prepare_fine(spill_dir: Path, prep_dir: Path, fine: int, *, dedup: str, name: str, unit: str) -> dict[str, Any]:
    """Dedup every fine bucket and write ``prep_dir/f{i}.keys``; remove the spill files.

    Returns ``{"unique": [...per fine bucket], "duplicate_rows": n}``. ``dedup="error"``
    raises :class:`InputError` naming the lines of a repeated key, as :func:`read_keys` does.
    """
    prep_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    unique: list[int] = []
    duplicates = 0
    for f in range(fine):
        source = spill_dir / f"f{f:04d}.spill"
        lengths, blob, rows, lines = _read_chunks(source)
        hashes = keyed_hash64(lengths, np.frombuffer(blob, dtype=np.uint8), b"psiq/scale/dedup-check")
        ulen, ublob = lengths, blob
        kept_rows, kept_keys = rows, np.arange(len(lengths), dtype=np.int64)
        ordered = np.sort(hashes)
        if bool((ordered[1:] == ordered[:-1]).any()):  # distinct hashes prove distinct keys; else compare keys
            keys = _split(lengths, blob)
            ukeys = list(dict.fromkeys(keys))
            if len(ukeys) != len(keys):
                position = {k: i for i, k in enumerate(ukeys)}
                row_keys = np.fromiter(map(position.__getitem__, keys), dtype=np.int64, count=len(keys))
                duplicates += len(keys) - len(ukeys)
                if dedup == "error":
                    _duplicate_error(row_keys, lines, name, unit)
                kept_keys = row_keys
                if dedup == "first":
                    _values, firsts = np.unique(row_keys, return_index=True)
                    firsts.sort()
                    kept_rows, kept_keys = rows[firsts], row_keys[firsts]
                ulen, ublob = _pack(ukeys)
        count = len(ulen)
        head = np.array([count, len(ublob), len(kept_rows)], dtype=_CHUNK)
        target = prep_dir / f"f{f:04d}.keys"
        _write(target, [head, ulen, ublob, kept_rows.astype("<i8"), kept_keys.astype("<i8")], "wb",
               lambda: len(ublob) + 16 * len(kept_rows))
        source.unlink(missing_ok=True)
        unique.append(count)
    return {"unique": unique, "duplicate_rows": duplicates}


def _duplicate_error(row_keys: np.ndarray, lines: np.ndarray, name: str, unit: str) -> None:
    seen: dict[int, int] = {}
    order = np.argsort(lines, kind="stable")
    for i in order.tolist():
        k = int(row_keys[i])
        if k in seen:
            raise InputError(
                f"{name} {unit} {int(lines[i])}: duplicate key (first seen on {unit} {seen[k]});"
                " use --dedup first or --dedup keep-all to allow duplicates"
            )
        seen[k] = int(lines[i])
    raise AssertionError("no duplicate found")  # pragma: no cover


def load_bucket(prep_dir: Path, f0: int, f1: int) -> tuple[list[bytes], np.ndarray, np.ndarray]:
    """Keys of fine buckets ``f0..f1-1`` (unique, concatenated), and every counted row with
    the index of its key, rows in file order."""
    keys: list[bytes] = []
    rows, row_keys = [], []
    for f in range(f0, f1):
        data = (prep_dir / f"f{f:04d}.keys").read_bytes()
        n, nbytes, nrows = (int(x) for x in np.frombuffer(data, dtype=_CHUNK, count=3))
        pos = 24
        lengths = np.frombuffer(data, dtype="<u4", count=n, offset=pos)
        pos += 4 * n
        base = len(keys)
        keys.extend(_split(lengths, data[pos:pos + nbytes]))
        pos += nbytes
        rows.append(np.frombuffer(data, dtype="<i8", count=nrows, offset=pos))
        pos += 8 * nrows
        row_keys.append(np.frombuffer(data, dtype="<i8", count=nrows, offset=pos) + base)
    if not rows:
        return keys, np.zeros(0, np.int64), np.zeros(0, np.int64)
    all_rows = np.concatenate(rows)
    all_keys = np.concatenate(row_keys)
    order = np.argsort(all_rows, kind="stable")
    return keys, all_rows[order], all_keys[order]
