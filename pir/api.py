"""One-call entry points for scripts: build a blacklist table, look ids up against a service.

    from pir import api
    report = api.setup([("110101199003071234", "fraud"), ...], "blacklist.db")
    results = api.lookup(["110101199003071234"], peer="10.0.0.5:7767", tls=tls)
    results[0].listed, results[0].label

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

from psi.driver import RunStats, run_party
from psi.errors import InputError, MalformedMessage
from psi.normalize import KeyNormalizationError, Normalization
from psi.parallel import Executor
from psi.protocols.base import Progress
from psi.transport.base import Channel

from .database import DEFAULT_MAX_HINT_BYTES, DEFAULT_MAX_QUERY_BYTES, Hint, SetupReport, build_table
from .protocol import PirClient

__all__ = ["Lookup", "HintCache", "setup", "lookup", "lookup_over", "default_cache_dir"]


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
            out.append(normalization.apply(value).encode("utf-8"))
        except KeyNormalizationError:
            raise InputError(f"id number {i + 1} does not match the key pattern") from None
    return out


def setup(
    entries: Iterable[tuple[str, str]],
    out_dir: str | os.PathLike[str],
    *,
    label_width: int | None = None,
    normalization: Normalization | None = None,
    workers: int | None = None,
    max_query_bytes: int = DEFAULT_MAX_QUERY_BYTES,
    max_hint_bytes: int = DEFAULT_MAX_HINT_BYTES,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> SetupReport:
    """Build a new table version from (id, label) pairs into ``out_dir`` (fresh keys every time)."""
    normalization = normalization or Normalization()

    def pairs() -> Iterable[tuple[bytes, bytes]]:
        for n, (ident, label) in enumerate(entries):
            try:
                key = normalization.apply(ident)
            except KeyNormalizationError:
                raise InputError(f"entry {n + 1}: id does not match the key pattern") from None
            if not key:
                continue
            yield key.encode("utf-8"), (label or "").encode("utf-8")

    with Executor(workers) as executor:
        table, report = build_table(
            pairs(),
            label_width=label_width,
            max_query_bytes=max_query_bytes,
            max_hint_bytes=max_hint_bytes,
            executor=executor,
            on_progress=on_progress,
            settings={"normalization": normalization.to_params()},
        )
    table.save(Path(out_dir))
    return report


def lookup_over(
    channel: Channel,
    ids: Sequence[str],
    *,
    cache: HintCache | None = None,
    normalization: Normalization | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    timeout: float | None = 120.0,
) -> tuple[list[Lookup], RunStats, PirClient]:
    """Run one lookup session over an open channel."""
    normalization = normalization or Normalization()
    cache = cache or HintCache()
    client = PirClient(_normalise(ids, normalization), hints=cache.known(),
                       settings={"normalization": normalization.to_params()})
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
) -> list[Lookup]:
    """Ask the service at ``peer`` about ``ids``; ``tls`` is a ``psi.transport.tcp.TlsConfig``."""
    from psi.transport.tcp import connect

    cache = HintCache(Path(cache_dir) if cache_dir is not None else None)
    with connect(peer, tls) as channel:
        results, _stats, _client = lookup_over(channel, ids, cache=cache, normalization=normalization,
                                               on_progress=on_progress, timeout=timeout)
    return results
