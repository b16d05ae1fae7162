"""One-call entry points for scripts: build a blacklist table, look ids up against a service.

    from pir import api
    report = api.setup([("110101199003071234", "fraud"), ...], "blacklist.db")
    results = api.lookup(["110101199003071234"], peer="10.0.0.5:7767", tls=tls)
    results[0].listed, results[0].label

Setup applies the same input rules as PSI (``psi.records``): a repeated id is an error naming
both entries unless ``dedup="first"`` (keep the first entry's label) or ``dedup="keep-all"``
(keep every distinct label, joined with ``"; "``); an id that is empty after normalisation is
an error unless ``skip_empty``. A directory that already holds a table is replaced only with
``replace=True``, atomically (see :mod:`pir.store`). A lookup refuses an empty id before it
connects, so nothing is charged for it.

Hints are cached per table version under ``cache_dir`` (default ``~/.cache/psiq/pir``) and kept
in memory for the life of the process (with the expanded public matrix), so repeated lookups
pay only the online cost.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from psi.driver import RunStats, run_party
from psi.errors import InputError, MalformedMessage, UsageError
from psi.normalize import KeyNormalizationError, Normalization
from psi.parallel import Executor
from psi.protocols.base import Progress
from psi.records import DEDUP_POLICIES, KeyTable, _Collector, read_keys
from psi.transport.base import Channel

from .database import DEFAULT_MAX_HINT_BYTES, DEFAULT_MAX_QUERY_BYTES, Hint, SetupReport, build_table
from .lwe import LWE_DIMENSION
from .protocol import MAX_BATCH, ClientLimits, PirClient
from .store import holds_table, save_table

__all__ = ["Lookup", "HintCache", "setup", "setup_file", "lookup", "lookup_over", "default_cache_dir", "LABEL_JOIN"]

#: How ``dedup="keep-all"`` joins the distinct labels of one id.
LABEL_JOIN = "; "


@dataclass(frozen=True)
class Lookup:
    """Outcome for one id as the caller gave it."""

    id: str
    listed: bool
    label: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "listed": self.listed, "label": self.label}


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "psiq" / "pir"


class HintCache:
    """Hints by table version: in memory, and as ``<version>.hint`` files in ``directory``."""

    _memory: dict[str, Hint] = {}
    _memory_lock = threading.Lock()

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = Path(directory) if directory is not None else default_cache_dir()

    def known(self) -> dict[str, Hint]:
        """Every hint available without a download (memory first, then disk)."""
        found: dict[str, Hint] = {}
        if self.directory.is_dir():
            for path in self.directory.glob("*.hint"):
                version = path.stem
                with self._memory_lock:
                    hint = self._memory.get(version)
                if hint is None:
                    try:
                        hint = Hint.from_bytes(path.read_bytes(), version)
                    except (OSError, MalformedMessage):
                        continue  # damaged cache entry: ignored, will be refetched
                    with self._memory_lock:
                        self._memory[version] = hint
                found[version] = hint
        return found

    def store(self, hint: Hint) -> None:
        with self._memory_lock:
            self._memory.clear()  # keep one version in memory (the expanded matrix is large)
            self._memory[hint.version] = hint
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / f".{hint.version}.tmp"
        tmp.write_bytes(hint.to_bytes())
        os.replace(tmp, self.directory / f"{hint.version}.hint")
        for old in self.directory.glob("*.hint"):
            if old.stem != hint.version:
                old.unlink(missing_ok=True)  # a new version replaces the old one


def _normalise(ids: Sequence[str], normalization: Normalization) -> list[bytes]:
    out = []
    for i, value in enumerate(ids):
        try:
            key = normalization.apply(value)
        except KeyNormalizationError:
            raise InputError(f"id number {i + 1} does not match the key pattern") from None
        if not key:
            raise InputError(f"id number {i + 1} is empty; nothing was sent (no lookup charged)")
        out.append(key.encode("utf-8"))
    return out


def _labels_of(keys: list[bytes], row_numbers: np.ndarray, row_keys: np.ndarray,
               label_of_row: Callable[[int], str]) -> list[bytes]:
    """One label per key: the kept row's, or every distinct label of its rows (keep-all)."""
    labels: list[list[str]] = [[] for _ in keys]
    for row, key in zip(row_numbers.tolist(), row_keys.tolist()):
        text = label_of_row(row)
        if text and text not in labels[key]:
            labels[key].append(text)
    return [LABEL_JOIN.join(parts).encode("utf-8") for parts in labels]


def _check_policy(dedup: str, out_dir: Path, replace: bool) -> None:
    if dedup not in DEDUP_POLICIES:
        raise UsageError(f"unknown dedup policy {dedup!r} (known: {', '.join(DEDUP_POLICIES)})")
    if holds_table(out_dir) and not replace:  # checked again at the swap; early here to save the work
        raise UsageError(
            f"{out_dir} already holds a PIR table; pass --replace (replace=True) to replace it "
            "(the current version stays live until the new one is complete)"
        )


def _build(keys: list[bytes], labels: list[bytes], out_dir: Path, *, replace: bool, skipped: int, duplicates: int,
           normalization: Normalization, workers: int | None, **kw: Any) -> SetupReport:
    with Executor(workers) as executor:
        table, report = build_table(
            zip(keys, labels), executor=executor, settings={"normalization": normalization.to_params()}, **kw
        )
    save_table(table, out_dir, replace=replace)
    report.duplicates = duplicates
    report.skipped = skipped
    return report


def setup(
    entries: Iterable[tuple[str, str]],
    out_dir: str | os.PathLike[str],
    *,
    label_width: int | None = None,
    normalization: Normalization | None = None,
    dedup: str = "error",
    skip_empty: bool = False,
    replace: bool = False,
    workers: int | None = None,
    max_query_bytes: int = DEFAULT_MAX_QUERY_BYTES,
    max_hint_bytes: int = DEFAULT_MAX_HINT_BYTES,
    on_progress: Callable[[str, int, int], None] | None = None,
    suite: str = "standard",
) -> SetupReport:
    """Build a new table version from (id, label) pairs into ``out_dir`` (fresh keys every time).

    Ids follow the PSI input rules (see the module docstring); errors name the entry (1-based).
    """
    out_dir = Path(out_dir)
    normalization = normalization or Normalization()
    _check_policy(dedup, out_dir, replace)
    collector = _Collector("input", ["id"], normalization, dedup, skip_empty, "entry")
    labels_by_row: list[str] = []
    for row, (ident, label) in enumerate(entries):
        collector.add(row, row + 1, (ident,))
        labels_by_row.append(label or "")
    row_numbers = np.frombuffer(collector.row_numbers, dtype=np.int64)
    row_keys = np.frombuffer(collector.row_keys, dtype=np.int64)
    labels = _labels_of(collector.keys, row_numbers, row_keys, labels_by_row.__getitem__)
    return _build(collector.keys, labels, out_dir, replace=replace, skipped=collector.skipped,
                  duplicates=collector.duplicates, normalization=normalization, workers=workers,
                  label_width=label_width, max_query_bytes=max_query_bytes, max_hint_bytes=max_hint_bytes,
                  on_progress=on_progress, suite=suite)


def setup_file(
    path: str | os.PathLike[str],
    on: str,
    out_dir: str | os.PathLike[str],
    *,
    label: str | None = None,
    fmt: str | None = None,
    label_width: int | None = None,
    normalization: Normalization | None = None,
    dedup: str = "error",
    skip_empty: bool = False,
    replace: bool = False,
    workers: int | None = None,
    max_query_bytes: int = DEFAULT_MAX_QUERY_BYTES,
    max_hint_bytes: int = DEFAULT_MAX_HINT_BYTES,
    on_progress: Callable[[str, int, int], None] | None = None,
    suite: str = "standard",
) -> SetupReport:
    """Build a table from a CSV/TSV/Parquet file, read by :func:`psi.records.read_keys`.

    The id column ``on`` gets exactly PSI's rules and messages (file and line named); the
    ``label`` column is read as is (an empty label is allowed).
    """
    out_dir = Path(out_dir)
    normalization = normalization or Normalization()
    _check_policy(dedup, out_dir, replace)
    ids: KeyTable = read_keys(path, [on], normalization=normalization, dedup=dedup, fmt=fmt,  # type: ignore[arg-type]
                              skip_empty=skip_empty)
    if label is not None:
        texts = read_keys(path, [label], normalization=Normalization(trim=False), dedup="keep-all", fmt=fmt,
                          skip_empty=True)  # skip_empty: rows with no label get ""
        by_row = np.full(max(ids.rows_read, 1), -1, dtype=np.int64)
        by_row[texts.row_numbers] = texts.row_keys
        label_texts = [k.decode("utf-8") for k in texts.keys]

        def label_of_row(row: int) -> str:
            index = int(by_row[row])
            return label_texts[index] if index >= 0 else ""
    else:
        def label_of_row(row: int) -> str:
            return ""
    labels = _labels_of(ids.keys, ids.row_numbers, ids.row_keys, label_of_row)
    return _build(ids.keys, labels, out_dir, replace=replace, skipped=ids.skipped_rows,
                  duplicates=ids.duplicate_rows, normalization=normalization, workers=workers,
                  label_width=label_width, max_query_bytes=max_query_bytes, max_hint_bytes=max_hint_bytes,
                  on_progress=on_progress, suite=suite)


def lookup_over(
    channel: Channel,
    ids: Sequence[str],
    *,
    cache: HintCache | None = None,
    normalization: Normalization | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    timeout: float | None = 120.0,
    limits: ClientLimits | None = None,
    suite: str = "standard",
) -> tuple[list[Lookup], RunStats, PirClient]:
    """Run one lookup session over an open channel (ids are checked before anything is sent).

    ``suite`` must be the one the server's table was set up under (else exit 5, naming both)."""
    normalization = normalization or Normalization()
    cache = cache or HintCache()
    limits = limits or ClientLimits()
    client = PirClient(_normalise(ids, normalization), hints=cache.known(),
                       settings={"normalization": normalization.to_params()}, limits=limits, suite=suite)
    if hasattr(channel, "max_body"):  # no frame larger than the biggest hint or answer batch we accept
        largest_answer = 4 + 4 * MAX_BATCH * (limits.max_hint_bytes // (4 * LWE_DIMENSION))
        bound = max(limits.max_hint_bytes, largest_answer) + 64 * 1024
        channel.max_body = min(channel.max_body, bound)  # type: ignore[attr-defined]
    stats = run_party(client, channel, on_progress=on_progress, timeout=timeout)
    if client.fetched_hint is not None:
        cache.store(client.fetched_hint)
    results = [
        Lookup(original, r.listed, r.label.decode("utf-8", errors="replace") if r.label is not None else None)
        for original, r in zip(ids, client.result())
    ]
    return results, stats, client


def lookup(
    ids: Sequence[str],
    *,
    peer: str,
    tls: Any = None,
    cache_dir: str | os.PathLike[str] | None = None,
    normalization: Normalization | None = None,
    timeout: float = 120.0,
    on_progress: Callable[[Progress], None] | None = None,
    limits: ClientLimits | None = None,
    suite: str = "standard",
) -> list[Lookup]:
    """Ask the service at ``peer`` about ``ids``; ``tls`` is a ``psi.transport.tcp.TlsConfig``.

    An empty id (after normalisation) raises :class:`InputError` before connecting.
    """
    from psi.transport.tcp import connect

    normalization = normalization or Normalization()
    _normalise(ids, normalization)  # refuse bad ids before connecting: nothing is charged for them
    cache = HintCache(Path(cache_dir) if cache_dir is not None else None)
    with connect(peer, tls) as channel:
        results, _stats, _client = lookup_over(channel, ids, cache=cache, normalization=normalization,
                                               on_progress=on_progress, timeout=timeout, limits=limits, suite=suite)
    return results
