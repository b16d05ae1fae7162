"""Table directories on disk: one subdirectory per version and an atomically swapped link.

Layout of a table directory ``DB``::

    DB/current -> v-<version[:16]>      relative symlink, swapped with os.replace (atomic)
    DB/v-<version[:16]>/                oprf.key (0600), matrix.npy, hint.bin, params.json
    DB/audit.jsonl                      the service's default audit log

Promises:

* A reader (the service reloading between sessions) sees the previous complete version or the
  new complete version, never a mix: a version is written in full into a temporary
  ``.building-*`` directory, renamed to its final name, and only then does ``current`` move.
* A failed setup leaves the previous version live and removes its temporary directory.
* :func:`save_table` refuses a directory that already holds a table unless ``replace`` is set.
* After a swap the version that was live before is kept (rollback: point ``current`` back)
  and any older one is removed.

Tables written by earlier builds (files directly in ``DB``) still load, and are removed when a
new version replaces them with ``replace``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from pathlib import Path

from psi.errors import InputError, UsageError

from .database import Table

__all__ = ["CURRENT", "holds_table", "table_stamp", "load_table", "save_table"]

CURRENT = "current"
_FLAT_FILES = ("params.json", "oprf.key", "matrix.npy", "hint.bin")


def _live_dir(db_dir: Path) -> Path | None:
    link = db_dir / CURRENT
    if link.is_symlink() or link.is_dir():
        return link
    if (db_dir / "params.json").exists():
        return db_dir  # the flat layout of earlier builds
    return None


def holds_table(db_dir: str | os.PathLike[str]) -> bool:
    """True when ``db_dir`` holds a table version (either layout)."""
    return _live_dir(Path(db_dir)) is not None


def table_stamp(db_dir: str | os.PathLike[str]) -> object:
    """Changes whenever the live version of ``db_dir`` changes (None when there is none)."""
    live = _live_dir(Path(db_dir))
    if live is None:
        return None
    try:
        return (os.path.realpath(live), (live / "params.json").stat().st_mtime_ns)
    except OSError:
        return None


def load_table(db_dir: str | os.PathLike[str]) -> Table:
    """Load the live version of ``db_dir`` (raises :class:`InputError` when there is none)."""
    db_dir = Path(db_dir)
    live = _live_dir(db_dir)
    if live is None:
        raise InputError(f"{db_dir} is not a PIR table directory (no table version in it; run 'psiq pir setup')")
    return Table.load(Path(os.path.realpath(live)))


def save_table(table: Table, db_dir: str | os.PathLike[str], *, replace: bool = False) -> Path:
    """Write ``table`` as a new version of ``db_dir`` and make it live; return its directory."""
    db_dir = Path(db_dir)
    if holds_table(db_dir) and not replace:
        raise UsageError(
            f"{db_dir} already holds a PIR table; pass --replace (replace=True) to replace it "
            "(the current version stays live until the new one is complete)"
        )
    if db_dir.exists() and not db_dir.is_dir():
        raise UsageError(f"{db_dir} exists and is not a directory")
    db_dir.mkdir(parents=True, exist_ok=True)
    link = db_dir / CURRENT
    before = os.readlink(link) if link.is_symlink() else None
    flat = _live_dir(db_dir) == db_dir
    building = Path(tempfile.mkdtemp(prefix=".building-", dir=db_dir))
    final = db_dir / f"v-{table.version[:16]}"
    try:
        table.save(building)
        os.rename(building, final)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    staged = db_dir / f".current-{secrets.token_hex(6)}"
    try:
        os.symlink(final.name, staged)
        os.replace(staged, link)  # the switch: atomic on POSIX
    except BaseException:
        staged.unlink(missing_ok=True)
        shutil.rmtree(final, ignore_errors=True)
        raise
    keep = {final.name, before}
    for old in db_dir.glob("v-*"):
        if old.name not in keep and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    if flat:
        for name in _FLAT_FILES:
            (db_dir / name).unlink(missing_ok=True)
    return final
