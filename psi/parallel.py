"""Batch execution over every core.

Protocols hand the executor a top-level (picklable) function and a list of batches; the
executor returns results in order. ``workers=1`` runs in-process (tests, tiny inputs); the
default uses one worker process per core. Each batch should carry a few thousand elements so
the pickling overhead stays small next to the arithmetic.

For pipelined protocols: :meth:`Executor.scatter` cuts one batch into one piece per worker
and returns futures, so a party can queue the next batch's pieces before it waits on the
current ones (and keep every core busy); :meth:`Executor.warm` starts the workers early with
the modules they need imported: by forking at once when that is safe (main thread, no other
thread yet: the CLI's case), otherwise in the background through a fork server.

Worker lifecycle (every start method): a worker never keeps a TCP socket of its parent (it
closes every inherited AF_INET/AF_INET6 socket first thing, so a listening port or a peer
connection dies with the parent), dies with its parent whatever ends the parent, even
``kill -9`` (``PR_SET_PDEATHSIG`` on Linux, plus a watchdog thread that sees the parent pipe
close or the parent pid change), ignores Ctrl-C (the parent handles it and shuts the pool
down) and takes the default action for SIGTERM/SIGHUP.
"""

from __future__ import annotations

import multiprocessing
import os
import select
import signal
import socket
import stat
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

__all__ = ["Executor", "default_workers", "split", "split_even", "wait_first"]

T = TypeVar("T")
R = TypeVar("R")


def _add_forkserver_preload(modules: Sequence[str]) -> None:
    """Ask the (not yet started) fork server to import ``modules`` before forking workers."""
    from multiprocessing import forkserver

    server = forkserver._forkserver  # type: ignore[attr-defined]
    if getattr(server, "_forkserver_pid", None) is not None:
        return  # already running: its preload list is fixed
    current = list(getattr(server, "_preload_modules", ["__main__"]))
    forkserver.set_forkserver_preload(current + [m for m in modules if m not in current])


def _start_method() -> str:
    """``fork`` when it is safe right now, else ``forkserver`` (``spawn`` off POSIX).

    Forking is only safe from the main thread while no other thread exists (a forked child
    inherits locks held by other threads). ``PSIQ_START_METHOD`` overrides the choice.
    """
    forced = os.environ.get("PSIQ_START_METHOD")
    if forced:
        return forced
    if os.name != "posix":
        return "spawn"
    if threading.current_thread() is threading.main_thread() and threading.active_count() == 1:
        return "fork"
    return "forkserver"


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


def split_even(items: Sequence[T], parts: int) -> list[Sequence[T]]:
    """Cut ``items`` into at most ``parts`` consecutive slices of near-equal length (none empty)."""
    if parts <= 0:
        raise ValueError("parts must be positive")
    n = len(items)
    parts = min(parts, n)
    if parts == 0:
        return []
    bounds = [n * i // parts for i in range(parts + 1)]
    return [items[bounds[i] : bounds[i + 1]] for i in range(parts)]


def wait_first(futures: Iterable["Future[Any]"]) -> None:
    """Block until the first of ``futures`` is done (returns at once if there is none)."""
    for fut in futures:
        fut.exception()  # waits; an exception surfaces later through fut.result()
        return


def _import_modules(modules: tuple[str, ...]) -> None:
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:  # pragma: no cover - a warm-up hint only
            pass


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when its parent ends (Linux; no-op elsewhere)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - not Linux: the watchdog still works
        pass


def _close_inherited_sockets() -> None:
    """Close every TCP socket this process inherited from its parent (fork start method)."""
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:  # pragma: no cover - no /proc: nothing to enumerate
        return
    for fd in fds:
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            probe = socket.socket(fileno=fd)
            try:
                family = probe.family
            finally:
                probe.detach()
        except OSError:
            continue
        if family in (socket.AF_INET, socket.AF_INET6):
            try:
                os.close(fd)
            except OSError:
                pass


def _watchdog(parent_pid: int, alive_fd: int) -> None:
    """Exit at once when the parent is gone: its pipe end closes, or this process is re-parented."""
    while True:
        if alive_fd >= 0:
            try:
                ready, _, _ = select.select([alive_fd], [], [], 1.0)
            except (OSError, ValueError):
                ready = []
            if ready:  # only EOF can arrive: the parent never writes
                os._exit(1)
        else:
            time.sleep(1.0)
        if os.getppid() != parent_pid:
            os._exit(1)


def _worker_init(alive_r: int, alive_w: int, forked: bool) -> None:
    """Initializer of every pool worker (see the module docstring for the promises)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
    _die_with_parent()
    parent = os.getppid()
    if forked:
        _close_inherited_sockets()
        try:
            os.close(alive_w)  # only the parent may hold the write end, so its death is EOF here
        except OSError:
            pass
    else:
        alive_r = -1  # the pipe is not inherited without fork: watch the parent pid only
    if parent == 1:  # the parent died before we got here
        os._exit(1)
    threading.Thread(target=_watchdog, args=(parent, alive_r), name="psiq-parent-watchdog", daemon=True).start()


class Executor:
    """Ordered map of a function over batches, in worker processes or in-process.

    Use as a context manager or call :meth:`close`. The process pool starts lazily on the
    first parallel call and is reused for the whole session.
    """

    def __init__(self, workers: int | None = None) -> None:
        self.workers = default_workers() if workers is None else max(1, workers)
        self._pool: ProcessPoolExecutor | None = None
        self._alive: tuple[int, int] | None = None
        self._warm: list[Future[None]] = []
        self._warm_thread: threading.Thread | None = None
        self.start_method: str | None = None

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        # Ctrl-C, SIGTERM or SIGHUP (KeyboardInterrupt): stop the workers now instead of letting
        # them finish their batches, whose results nobody will read.
        interrupted = isinstance(exc_type, type) and issubclass(exc_type, KeyboardInterrupt)
        self.close(terminate=interrupted)

    def close(self, *, terminate: bool = False) -> None:
        """Shut the pool down; ``terminate`` kills busy workers instead of waiting for them."""
        if self._warm_thread is not None:
            self._warm_thread.join()
            self._warm_thread = None
        if self._pool is not None:
            if terminate:
                for process in list(getattr(self._pool, "_processes", {}).values()):
                    try:
                        process.terminate()
                    except (OSError, ValueError, AttributeError):
                        pass
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._alive is not None:
            for fd in self._alive:
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._alive = None
        self._warm = []

    def _get_pool(self, preload: Sequence[str] = ()) -> ProcessPoolExecutor:
        if self._pool is None:
            method = _start_method()
            ctx = multiprocessing.get_context(method)
            if method == "forkserver" and preload:
                _add_forkserver_preload(preload)
            self.start_method = method
            self._alive = os.pipe()  # workers watch the read end; only this process writes/holds it
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=ctx, initializer=_worker_init,
                                             initargs=(*self._alive, method == "fork"))
        return self._pool

    def warm(self, *modules: str) -> None:
        """Start every worker now, in the background, with ``modules`` imported.

        Call it early (e.g. before a handshake) so that process start-up and imports overlap
        other work instead of delaying the first batch. With the forkserver start method the
        modules are imported once in the fork server (if it is not running yet) and inherited
        by every worker. Does nothing with ``workers == 1``; calling it again is harmless.
        """
        if self.workers == 1 or self._warm_thread is not None or self._pool is not None:
            return
        if _start_method() == "fork":
            # Fork every worker now, before any thread exists (ProcessPoolExecutor launches all
            # of them on the first submit with fork); the children inherit what is imported.
            _import_modules(tuple(modules))
            pool = self._get_pool(modules)
            self._warm = [pool.submit(_import_modules, ()) for _ in range(self.workers)]
            return
        pool = self._get_pool(modules)

        def start() -> None:
            # ProcessPoolExecutor spawns workers on demand, one per submit while none is idle;
            # the first spawn also waits for the fork server to start and import ``modules``.
            try:
                self._warm = [pool.submit(_import_modules, tuple(modules)) for _ in range(self.workers)]
            except Exception:  # noqa: BLE001 - pool closed meanwhile; real work reports errors
                pass

        self._warm_thread = threading.Thread(target=start, name="psiq-executor-warm", daemon=True)
        self._warm_thread.start()

    def scatter(self, fn: Callable[[Any], R], items: Sequence[Any], *, parts: int | None = None) -> "list[Future[R]]":
        """Submit ``fn`` on about one slice of ``items`` per worker; futures in slice order.

        With ``workers == 1`` the single slice is computed in-process. ``fn(slice)`` results
        concatenate (in order) to the answer for the whole of ``items``.
        """
        if not len(items):
            return []
        pieces = split_even(items, parts or self.workers) if self.workers > 1 else [items]
        return [self.submit(fn, piece) for piece in pieces]

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
