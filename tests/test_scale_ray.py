"""``--executor ray`` on a real two-node Ray cluster on this machine (one CPU per node).

Skipped where Ray is not installed (it is the optional extra ``psiq[ray]``).
"""

from __future__ import annotations

import random
import threading
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray")

from ray.cluster_utils import Cluster  # noqa: E402

from psi import api  # noqa: E402
from psi.parallel import Executor  # noqa: E402
from psi.protocols.base import Role  # noqa: E402
from psi.scale.ray_executor import RayExecutor  # noqa: E402
from psi.scale.session import BucketedSession, ScaleOptions  # noqa: E402
from psi.transport.memory import memory_pair  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    c.add_node(num_cpus=1)
    c.wait_for_nodes()
    ray.init(address=c.address, include_dashboard=False, log_to_driver=False)
    yield c
    ray.shutdown()
    c.shutdown()


def _inputs(tmp: Path) -> tuple[Path, Path]:
    rng = random.Random(5)
    common = [f"c{i}" for i in range(3000)]
    a, b = common + [f"a{i}" for i in range(1000)], common + [f"b{i}" for i in range(2000)]
    rng.shuffle(a)
    rng.shuffle(b)
    (tmp / "a.csv").write_text("id,x\n" + "".join(f"{k},{i}\n" for i, k in enumerate(a)))
    (tmp / "b.csv").write_text("id,y\n" + "".join(f"{k},{i}\n" for i, k in enumerate(b)))
    return tmp / "a.csv", tmp / "b.csv"


def _run(a: Path, b: Path, tmp: Path, tag: str, client_executor: Executor, server_executor: Executor) -> Any:
    opts = api.PsiOptions(protocol="ecdh", reveal="both", join="full")
    cc, cs = memory_pair()
    box: dict[str, Any] = {}

    def server() -> None:
        box["s"] = BucketedSession(Role.SERVER, b, on=["id"], options=opts, scale=ScaleOptions(tmp / f"ws{tag}", 2),
                                   output=tmp / f"s{tag}.csv", executor=server_executor).run(cs)

    t = threading.Thread(target=server)
    t.start()
    summary = BucketedSession(Role.CLIENT, a, on=["id"], options=opts, scale=ScaleOptions(tmp / f"wc{tag}", 2),
                              output=tmp / f"c{tag}.csv", executor=client_executor).run(cc)
    t.join()
    return summary, box["s"]


def test_ray_tasks_run_on_both_nodes_and_outputs_equal_the_local_run(cluster, tmp_path):
    a, b = _inputs(tmp_path)
    with Executor(1) as local_c, Executor(1) as local_s:
        _run(a, b, tmp_path, "local", local_c, local_s)
    with RayExecutor() as client_ex, RayExecutor() as server_ex:  # as the CLI uses it (closing included)
        client, server = _run(a, b, tmp_path, "ray", client_ex, server_ex)
    report = client.scale["executor"]
    assert report["kind"] == "ray" and report["nodes_alive"] == 2
    used = set(client_ex.tasks_per_node) | set(server_ex.tasks_per_node)
    assert len(used) == 2, f"tasks ran on {len(used)} node(s): {client_ex.tasks_per_node}, {server_ex.tasks_per_node}"
    assert report["worker_processes"] == len(client_ex.worker_processes) >= report["nodes_used"] >= 1
    assert {node for node, _ in client_ex.worker_processes} == set(client_ex.tasks_per_node)
    assert (tmp_path / "cray.csv").read_bytes() == (tmp_path / "clocal.csv").read_bytes()
    assert (tmp_path / "sray.csv").read_bytes() == (tmp_path / "slocal.csv").read_bytes()


def test_unreachable_cluster_exits_3(tmp_path):
    import subprocess
    import sys

    from tests.conftest import free_port, psiq_cmd, subprocess_env

    (tmp_path / "a.csv").write_text("id\n1\n2\n")
    proc = subprocess.run([*psiq_cmd(), "psi", "connect", "--peer", "127.0.0.1:1", "--input", str(tmp_path / "a.csv"),
                           "--on", "id", "--insecure", "--buckets", "2", "--work-dir", str(tmp_path / "w"),
                           "--executor", "ray", "--ray-address", f"127.0.0.1:{free_port()}"],
                          env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    assert "cannot reach the Ray cluster" in proc.stderr
    assert sys.executable


def test_a_worker_killed_mid_task_is_retried_and_the_session_completes(cluster, tmp_path):
    """The first Ray task of the session SIGKILLs its own worker process (once: an O_EXCL
    marker file); Ray retries the task on a fresh worker (max_retries) and both outputs still
    equal the local run's bytes."""
    import os
    import signal

    from psi.scale.ray_executor import TASK_RETRIES, _call

    a, b = _inputs(tmp_path)
    with Executor(1) as local_c, Executor(1) as local_s:
        _run(a, b, tmp_path, "local", local_c, local_s)
    marker = str(tmp_path / "killed-once")

    def dying_call(fn: Any, args: tuple[Any, ...]) -> Any:
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return _call(fn, args)  # later tasks and the retry run normally
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)  # the worker dies in the middle of the task

    client_ex, server_ex = RayExecutor(), RayExecutor()
    client_ex._pool.task = ray.remote(max_retries=TASK_RETRIES, retry_exceptions=False)(dying_call)
    _run(a, b, tmp_path, "ray", client_ex, server_ex)
    killed = int(Path(marker).read_text())
    assert killed != os.getpid()  # a worker process died, not the driver
    assert sum(client_ex.tasks_per_node.values()) >= 1
    assert (tmp_path / "cray.csv").read_bytes() == (tmp_path / "clocal.csv").read_bytes()
    assert (tmp_path / "sray.csv").read_bytes() == (tmp_path / "slocal.csv").read_bytes()


def test_warm_starts_a_worker_on_each_node_with_the_protocol_imported(cluster):
    """``make_executor`` warms the cluster for the session's protocol: one task per CPU, spread
    over the nodes, each importing the protocol module; they do not count as the session's tasks."""
    from types import SimpleNamespace

    from psi.scale.runner import make_executor

    options = SimpleNamespace(protocol="kkrt", workers=None)
    with make_executor(options, ScaleOptions("unused", 2, executor="ray")) as ex:
        assert isinstance(ex, RayExecutor)
        warmed = ex.warmed()
        assert len(warmed) == ex.workers == 2
        assert {node for node, _, _ in warmed} == {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        assert all(mods == ["psi.protocols.kkrt"] for _, _, mods in warmed)
        assert not ex.tasks_per_node and ex.report()["worker_processes"] == 0
    with make_executor(SimpleNamespace(protocol="ecdh", workers=None), ScaleOptions("unused", 2)) as local:
        assert not isinstance(local, RayExecutor)
