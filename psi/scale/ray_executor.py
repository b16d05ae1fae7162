"""``--executor ray``: the protocols' batch work as Ray tasks on a cluster.

:class:`RayExecutor` is a :class:`psi.parallel.Executor` whose pool is a Ray cluster: every
``submit``/``scatter``/``map``/``imap`` call of a protocol (group operations, RSA signatures,
KKRT OPRF pieces) becomes one Ray task (arguments go through Ray's object store), while the
connection to the peer stays with the driver process that runs the session. Ray retries a task
whose worker died (``max_retries``), so the session continues. ``workers`` is the cluster's CPU
count, so the protocols split their batches into that many pieces.

Ray is an optional dependency (``pip install 'psiq[ray]'``); without it ``--executor ray``
stops with exit 2, and a cluster that cannot be reached with exit 3.
"""

from __future__ import annotations

import os
import socket
import threading
from collections import Counter
from concurrent.futures import Future
from typing import Any, Callable, Iterable

from ..errors import TransportError, UsageError
from ..parallel import Executor

__all__ = ["RayExecutor"]

TASK_RETRIES = 3


def _call(fn: Callable[..., Any], args: tuple[Any, ...]) -> tuple[str, int, Any]:
    import ray

    return ray.get_runtime_context().get_node_id(), os.getpid(), fn(*args)


def _warm_worker(modules: tuple[str, ...]) -> tuple[str, int, list[str]]:
    """Import ``modules`` in this worker; its node, pid and which of them it now holds."""
    import sys

    import ray

    from ..parallel import _import_modules

    _import_modules(modules)
    return ray.get_runtime_context().get_node_id(), os.getpid(), [m for m in modules if m in sys.modules]


def _probe(address: str, timeout: float = 10.0) -> None:
    """Exit 3 unless something listens at a ``HOST:PORT`` cluster address (``auto``/``ray://`` pass)."""
    if address in ("auto", "local") or "://" in address:
        return
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout):
            pass
    except (OSError, ValueError) as err:
        raise TransportError(f"cannot reach the Ray cluster at {address}: {err}") from None


class _RayPool:
    """The subset of ``ProcessPoolExecutor`` that :class:`Executor` uses, on Ray tasks."""

    def __init__(self, ray: Any, counts: Counter, processes: set) -> None:
        self.ray = ray
        self.task = ray.remote(max_retries=TASK_RETRIES, retry_exceptions=False)(_call)
        self.counts = counts
        self.processes = processes
        self.lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], *args: Any) -> "Future[Any]":
        ref = self.task.remote(fn, args)
        out: Future[Any] = Future()

        def done(inner: "Future[Any]") -> None:
            try:
                node, pid, value = inner.result()
            except BaseException as err:  # noqa: BLE001 - handed to the caller
                out.set_exception(getattr(err, "cause", None) or err)
                return
            with self.lock:
                self.counts[node] += 1
                self.processes.add((node, pid))
            out.set_result(value)

        ref.future().add_done_callback(done)
        return out

    def map(self, fn: Callable[..., Any], batches: Iterable[Any]) -> Iterable[Any]:
        futures = [self.submit(fn, b) for b in batches]
        return (f.result() for f in futures)

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        pass


class RayExecutor(Executor):
    """An :class:`Executor` running batch work as Ray tasks (see the module docstring)."""

    def __init__(self, address: str | None = None, workers: int | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise UsageError("--executor ray needs Ray: pip install 'psiq[ray]'") from None
        self._ray = ray
        self._owns = not ray.is_initialized()
        if self._owns and address:
            _probe(address)  # ray.init waits minutes for an unreachable cluster; fail fast instead
        if self._owns and not address:
            # a Ray started here: its workers at the local pool's priority (Ray's default is
            # nice 15, which starves them on a machine with other work; docs/SCALE.md)
            os.environ.setdefault("RAY_worker_niceness", "0")
        if self._owns:
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
            except Exception as err:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ...
                raise TransportError(f"cannot reach the Ray cluster at {address or 'auto'}: {err}") from None
        cpus = int(ray.cluster_resources().get("CPU", 1))
        super().__init__(workers or max(cpus, 2))  # >= 2: always ship work out, even to one CPU
        self.tasks_per_node: Counter = Counter()
        self.worker_processes: set[tuple[str, int]] = set()  # (node, pid) of every worker that ran a task
        self._pool = _RayPool(ray, self.tasks_per_node, self.worker_processes)  # type: ignore[assignment]
        self.start_method = "ray"
        self._warming: list[Any] = []

    def warm(self, *modules: str) -> None:
        """Start a worker on every CPU of the cluster, in the background, with ``modules`` imported.

        Ray starts a job's workers on its first tasks (1-2 s each: a process and its imports), so
        without this the first batches of a session wait for them. The warm-up tasks are spread
        over the nodes and are not counted in :meth:`report`; :meth:`warmed` waits for them."""
        if self._warming or self._pool is None:
            return
        task = self._ray.remote(max_retries=TASK_RETRIES, retry_exceptions=False,
                                scheduling_strategy="SPREAD")(_warm_worker)
        self._warming = [task.remote(tuple(modules)) for _ in range(self.workers)]

    def warmed(self) -> list[tuple[str, int, list[str]]]:
        """Wait for :meth:`warm`'s tasks: (node, pid, modules imported) of each."""
        return list(self._ray.get(self._warming)) if self._warming else []

    def _get_pool(self, preload: Any = ()) -> Any:
        return self._pool

    def report(self) -> dict[str, Any]:
        """``--json``: the executor, the nodes that ran tasks, tasks per node and how many worker
        processes ran them (far more processes than CPUs means Ray kept replacing idle workers:
        several jobs share the cluster under a small ``num_workers_soft_limit``; docs/SCALE.md)."""
        nodes = {n["NodeID"]: n.get("NodeManagerAddress") for n in self._ray.nodes() if n.get("Alive")}
        return {"kind": "ray", "cluster_cpus": self.workers, "nodes_alive": len(nodes),
                "nodes_used": len(self.tasks_per_node), "tasks_per_node": dict(self.tasks_per_node),
                "worker_processes": len(self.worker_processes)}

    def close(self, *, terminate: bool = False) -> None:
        """Forget the pool; shut Ray down if this executor started it (``terminate``: Ray's
        tasks are the cluster's, nothing to kill here)."""
        self._pool = None
        if self._owns and self._ray.is_initialized():
            self._ray.shutdown()
