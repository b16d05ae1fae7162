"""Batch execution over every core.

Protocols hand the executor a top-level (picklable) function and a list of batches; the
executor returns results in order. ``workers=1`` runs in-process (tests, tiny inputs); the
default uses one worker process per core. Each batch should carry a few thousand elements so
the pickling overhead stays small next to the arithmetic.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

__all__ = ["Executor", "default_workers", "split"]

T = TypeVar("T")
R = TypeVar("R")


def default_workers() -> int:
    """Cores available to this process (respects CPU affinity and ``PSIQ_WORKERS``)."""
    env = os.environ.get("PSIQ_WORKERS")
    if env:
        return max(1, int(env))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def split(items: Sequence[T], batch_size: int) -> list[Sequence[T]]:
    """Cut ``items`` into consecutive slices of at most ``batch_size``."""
    if batch_size <= 0:
        raise ValueError("batch_size must be positive")
    return [items[i : i + batch_size] for i in range(0, len(items), batch_size)]


class Executor:
    """Ordered map of a function over batches, in worker processes or in-process.

    Use as a context manager or call :meth:`close`. The process pool starts lazily on the
    first parallel call and is reused for the whole session.
    """

    def __init__(self, workers: int | None = None) -> None:
        self.workers = default_workers() if workers is None else max(1, workers)
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _get_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            ctx = multiprocessing.get_context("forkserver" if os.name == "posix" else "spawn")
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=ctx)
        return self._pool

    def map(self, fn: Callable[..., R], batches: Iterable[Any], *, parallel: bool = True) -> list[R]:
        """Return ``[fn(b) for b in batches]``, computed over the workers when worthwhile."""
        batches = list(batches)
        if self.workers == 1 or not parallel or len(batches) <= 1:
            return [fn(b) for b in batches]
        pool = self._get_pool()
        return list(pool.map(fn, batches))

    def submit(self, fn: Callable[..., R], *args: Any) -> "Future[R]":
        """Start ``fn(*args)`` in the background (in-process result when ``workers == 1``)."""
        if self.workers == 1:
            fut: Future[R] = Future()
            try:
                fut.set_result(fn(*args))
            except BaseException as err:  # noqa: BLE001 - handed to the caller via the future
                fut.set_exception(err)
            return fut
        return self._get_pool().submit(fn, *args)

    def imap(self, fn: Callable[..., R], batches: Iterable[Any], *, ahead: int | None = None) -> Iterator[R]:
        """Lazily map over ``batches`` keeping at most ``ahead`` batches in flight (ordered)."""
        if self.workers == 1:
            for b in batches:
                yield fn(b)
            return
        ahead = ahead or 2 * self.workers
        pool = self._get_pool()
        pending: list[Future[R]] = []
        for b in batches:
            pending.append(pool.submit(fn, b))
            if len(pending) >= ahead:
                yield pending.pop(0).result()
        for fut in pending:
            yield fut.result()
