"""Atomic file output: nothing appears at the target path unless the whole file was written."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from .errors import InputError

__all__ = ["AtomicFile", "atomic_write_bytes"]


class AtomicFile:
    """Context manager yielding a binary handle on a temp file beside ``target``.

    On a clean exit the data is flushed, fsynced, given ``mode`` and renamed over ``target``;
    on any exception the temp file is deleted and ``target`` is left as it was.
    """

    def __init__(self, target: str | os.PathLike[str], *, mode: int = 0o600, buffering: int = 1 << 20) -> None:
        self.target = Path(target)
        self.mode = mode
        self.buffering = buffering
        self.tmp: str | None = None
        self.handle: Any = None

    def __enter__(self) -> Any:
        directory = self.target.parent if str(self.target.parent) else Path(".")
        if not directory.is_dir():
            raise InputError(f"{self.target}: the output directory does not exist")
        fd, self.tmp = tempfile.mkstemp(prefix=f".{self.target.name}.", suffix=".tmp", dir=directory)
        os.fchmod(fd, self.mode)
        self.handle = os.fdopen(fd, "wb", buffering=self.buffering)
        return self.handle

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            try:
                self.handle.flush()
                os.fsync(self.handle.fileno())
                self.handle.close()
                os.replace(self.tmp, self.target)  # type: ignore[arg-type]
                return
            except BaseException:
                self._discard()
                raise
        self._discard()

    def _discard(self) -> None:
        try:
            self.handle.close()
        except Exception:  # noqa: BLE001 - already failing; the temp file is what matters
            pass
        if self.tmp is not None:
            try:
                os.unlink(self.tmp)
            except FileNotFoundError:
                pass


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` atomically with permissions ``mode`` (creating its folder)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with AtomicFile(path, mode=mode) as handle:
        handle.write(data)
