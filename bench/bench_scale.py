"""Bucketed vs unbucketed PSI sessions: wall time and peak RSS per party (docs/SCALE.md).

    python bench/bench_scale.py --size 1000000 --protocol kkrt --repeat 1
    python bench/bench_scale.py --size 10000000 --modes plain,auto

For each size, bench/data/scale-N-{a,b}.csv (cached) hold N rows each (an 18-digit id and a
feature column), half of them in common. Each mode runs ``psiq psi serve`` and ``psiq psi
connect`` as two processes over loopback TLS with ``--reveal both --output``; modes alternate
(plain, auto, plain, auto, ...) so load from other processes hits both alike. Recorded per run:
wall time (server start to both exited), each party's ``seconds``, ``peak_rss_mb`` (the party
or its largest worker) and the bucket count. Both outputs are checked to be row-aligned and of
the right size. Prints one JSON object per run and a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench" / "data"


def dataset(n: int) -> tuple[Path, Path]:
    DATA.mkdir(parents=True, exist_ok=True)
    a, b = DATA / f"scale-{n}-a.csv", DATA / f"scale-{n}-b.csv"
    if a.exists() and b.exists():
        return a, b
    if n > LARGE:
        _large_dataset(n, a, b)
        return a, b
    rng = np.random.default_rng(n)
    ids = rng.choice(10**17, size=2 * n - n // 2, replace=False) + 10**17
    common, only_a, only_b = ids[: n // 2], ids[n // 2 : n], ids[n : 2 * n - n // 2]
    for path, own in ((a, np.concatenate([common, only_a])), (b, np.concatenate([common, only_b]))):
        rng.shuffle(own)
        feature = rng.integers(0, 10**6, len(own))
        with open(path, "w") as f:
            f.write("id,feature\n")
            for start in range(0, len(own), 1 << 20):
                chunk = zip(own[start:start + (1 << 20)].tolist(), feature[start:start + (1 << 20)].tolist())
                f.write("".join(f"{i},{v}\n" for i, v in chunk))
    return a, b


#: Above this size the ids are drawn with replacement and deduplicated (rng.choice without
#: replacement is slow and memory-hungry at 10^8) and lines are formatted with numpy
#: (features zero-padded to 6 digits): same shape of data, other values than the small sizes.
LARGE = 5_000_000


def _large_dataset(n: int, a: Path, b: Path) -> None:
    rng = np.random.default_rng(n)
    want = 2 * n - n // 2
    ids = np.sort(rng.integers(10**17, 10**18, size=want + want // 50, dtype=np.int64))
    ids = ids[np.concatenate([[True], ids[1:] != ids[:-1]])]  # (np.unique is slow in numpy 2.4)
    assert len(ids) >= want, "too many collisions"
    ids = ids[:want]  # sorted: the shuffles below randomise the order
    rng.shuffle(ids)
    common, only_a, only_b = ids[: n // 2], ids[n // 2 : n], ids[n : want]
    powers = 10 ** np.arange(17, -1, -1, dtype=np.int64)
    fpowers = 10 ** np.arange(5, -1, -1, dtype=np.int64)
    for path, own in ((a, np.concatenate([common, only_a])), (b, np.concatenate([common, only_b]))):
        del_path = path.with_suffix(".tmp")
        rng.shuffle(own)
        with open(del_path, "wb") as f:
            f.write(b"id,feature\n")
            for start in range(0, len(own), 1 << 21):
                chunk = own[start:start + (1 << 21)]
                line = np.empty((len(chunk), 26), dtype=np.uint8)
                line[:, :18] = (chunk[:, None] // powers) % 10 + 48
                line[:, 18] = ord(",")
                feature = rng.integers(0, 10**6, len(chunk))
                line[:, 19:25] = (feature[:, None] // fpowers) % 10 + 48
                line[:, 25] = ord("\n")
                f.write(line.tobytes())
        os.replace(del_path, path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(mode: str, protocol: str, a: Path, b: Path, pki: Path, tmp: Path, memory_limit: str,
        ray_address: str | None = None) -> dict:
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    tls = lambda me, peer: ["--tls-cert", str(pki / f"{me}.pem"), "--tls-key", str(pki / f"{me}.key"),  # noqa: E731
                            "--tls-ca", str(pki / "ca.pem"), "--peer-name", peer]
    common = ["--protocol", protocol, "--reveal", "both", "--on", "id", "--json", "--quiet",
              "--max-peer-size", str(10**9), "--timeout", "3600"]
    label = mode
    mode, _, executor = mode.partition("@")  # e.g. 1@ray: one bucket, batch work as Ray tasks
    extra = {"plain": []}.get(mode)
    if extra is None:
        buckets, _, limit = mode.partition(":")  # e.g. auto, auto:512MiB, 8
        extra = ["--buckets", buckets, "--memory-limit", limit or memory_limit]
    if executor:
        extra += ["--executor", executor, *(["--ray-address", ray_address] if executor == "ray" and ray_address else [])]
    timed = ["/usr/bin/time", "-v", "-o"] if os.path.exists("/usr/bin/time") else None
    wrap = lambda side: [*timed, str(tmp / f"time-{side}.txt")] if timed else []  # noqa: E731
    loads: list[float] = []
    sampling = threading.Event()

    def sample() -> None:  # the 1-minute load average every 10 s during the run
        while not sampling.wait(10):
            loads.append(os.getloadavg()[0])

    threading.Thread(target=sample, daemon=True).start()
    t0 = time.perf_counter()
    server = subprocess.Popen([*wrap("server"), sys.executable, "-m", "cli", "psi", "serve", "--listen", f"127.0.0.1:{port}",
                               "--input", str(b), "--output", str(tmp / "s.csv"), *common, *extra,
                               *(["--work-dir", str(tmp / "ws")] if mode != "plain" else []),
                               *tls("bank-b", "bank-a")], env=env, stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    client = subprocess.Popen([*wrap("client"), sys.executable, "-m", "cli", "psi", "connect", "--peer", f"127.0.0.1:{port}",
                               "--input", str(a), "--output", str(tmp / "c.csv"), *common, *extra,
                               *(["--work-dir", str(tmp / "wc")] if mode != "plain" else []),
                               *tls("bank-a", "bank-b")], env=env, stdout=subprocess.PIPE, text=True)
    out_c, _ = client.communicate()
    out_s, _ = server.communicate()
    wall = time.perf_counter() - t0
    sampling.set()
    if client.returncode or server.returncode:
        raise SystemExit(f"{mode}: exit {client.returncode}/{server.returncode}")
    c, s = json.loads(out_c), json.loads(out_s)
    rows_c = sum(1 for _ in open(tmp / "c.csv")) - 1
    rows_s = sum(1 for _ in open(tmp / "s.csv")) - 1
    with open(tmp / "c.csv") as fc, open(tmp / "s.csv") as fs:
        aligned = all(x.split(",")[0] == y.split(",")[0] for x, y in zip(fc, fs))
    assert aligned and rows_c == rows_s == c["intersection_size"], "outputs not aligned"
    return {"mode": label, "protocol": protocol, "size": c["set_size"], "wall": round(wall, 2),
            "client_seconds": c["seconds"], "server_seconds": s["seconds"],
            "rss_client_mb": c["peak_rss_mb"], "rss_server_mb": s["peak_rss_mb"],
            "buckets": (c.get("scale") or {}).get("buckets"), "executor": (c.get("scale") or {}).get("executor"), "phases_client": c["phases"],
            "intersection": c["intersection_size"], "time_v_maxrss_mb": {side: _maxrss(tmp / f"time-{side}.txt")
                                                                          for side in ("client", "server")},
            "cpu_seconds": {side: _cpu(tmp / f"time-{side}.txt") for side in ("client", "server")},
            "load_1min": {"min": min(loads, default=None), "max": max(loads, default=None),
                          "mean": round(sum(loads) / len(loads), 2) if loads else None}}


def _time_field(path: Path, label: str) -> float | None:
    try:
        for line in path.read_text().splitlines():
            if line.strip().startswith(label):
                return float(line.rsplit(":", 1)[1])
    except (OSError, ValueError):
        pass
    return None


def _maxrss(path: Path) -> float | None:
    """GNU time's "Maximum resident set size" (the process, or its largest child), in MiB."""
    kb = _time_field(path, "Maximum resident set size")
    return None if kb is None else round(kb / 1024, 1)


def _cpu(path: Path) -> float | None:
    user, system = _time_field(path, "User time"), _time_field(path, "System time")
    return None if user is None or system is None else round(user + system, 1)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=10**6)
    p.add_argument("--protocol", default="kkrt")
    p.add_argument("--modes", default="plain,auto")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--memory-limit", default="2GiB")
    p.add_argument("--ray-nodes", type=int, default=0,
                   help="start a ray.cluster_utils.Cluster of this many 1-CPU nodes for modes like 1@ray")
    p.add_argument("--ray-niceness", type=int, default=0, help="RAY_worker_niceness for the cluster (Ray's default: 15)")
    p.add_argument("--ray-idle-workers", type=int, default=2,
                   help="RAY_num_workers_soft_limit per node: idle workers Ray keeps (2: one per party; "
                        "-1: Ray's default, the node's CPU count, which makes the two parties' jobs "
                        "replace each other's workers on every switch)")
    args = p.parse_args()
    ray_address = None
    if args.ray_nodes:
        from ray.cluster_utils import Cluster

        # Ray starts workers at nice 15 by default; on this shared machine that starves them
        os.environ.setdefault("RAY_worker_niceness", str(args.ray_niceness))
        # both parties' drivers are jobs on this one cluster and Ray's workers are per job: with
        # Ray's default (idle workers up to the node's CPUs, here 1) every switch between the
        # parties' tasks on a node kills the other job's idle worker and starts a fresh process
        # (1-3 s of start-up and imports each); keep one idle worker per party per node
        os.environ.setdefault("RAY_num_workers_soft_limit", str(args.ray_idle_workers))
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
        for _ in range(args.ray_nodes - 1):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray_address = cluster.address
    sys.path.insert(0, str(ROOT))
    from psi.transport.tls import create_test_pki

    a, b = dataset(args.size)
    results = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        create_test_pki(tmp / "pki", ["bank-a", "bank-b"])
        for _ in range(args.repeat):
            for mode in args.modes.split(","):
                r = run(mode, args.protocol, a, b, tmp / "pki", tmp, args.memory_limit, ray_address)
                print(json.dumps(r), flush=True)
                results.append(r)
    print(json.dumps({"load_average": os.getloadavg(), "cores": os.cpu_count()}))
    if args.ray_nodes:
        cluster.shutdown()


if __name__ == "__main__":
    main()
