"""Standard vs ``--suite gm`` (national algorithms) cost, one process per party pair.

    python bench/bench_suite.py psi --protocol kkrt --n 100000 --rounds 1
    python bench/bench_suite.py psi --protocol ecdh --n 10000
    python bench/bench_suite.py pir --entries 10000 --lookups 1 --rounds 5
    python bench/bench_suite.py prims

Both parties run in this process over an in-memory channel, each with its own executor
(``--workers`` each); the suites are interleaved round by round. Prints one JSON line per run:
wall seconds, CPU seconds (this process and its workers), load average. Time it under
``flock /work/wt/bench.lock`` on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import threading
import time
from pathlib import Path


def _cpu() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def psi_run(protocol: str, suite: str, n: int, workers: int, group: str | None) -> dict:
    from psi import api
    from psi.parallel import Executor
    from psi.protocols.base import Role
    from psi.transport.memory import memory_pair

    client_keys = [b"%012d" % i for i in range(n)]
    server_keys = [b"%012d" % i for i in range(n // 2, n + n // 2)]
    extra = {"group": group} if group else {}
    options = api.PsiOptions(protocol=protocol, suite=suite, workers=workers, timeout=3600, **extra)
    out: dict = {}
    with Executor(workers) as ec, Executor(workers) as es:
        ec.warm()
        es.warm()
        a, b = memory_pair()

        def side(name: str, role: Role, channel, keys, executor) -> None:
            table = _table(keys)
            out[name] = api.run_session(role, channel, table, options=options, executor=executor)

        start, cpu = time.perf_counter(), _cpu()
        threads = [threading.Thread(target=side, args=("server", Role.SERVER, b, server_keys, es)),
                   threading.Thread(target=side, args=("client", Role.CLIENT, a, client_keys, ec))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
    cpu = _cpu() - cpu  # after the pools closed: their workers' CPU time is counted
    assert out["client"].intersection_size == n // 2, out["client"].intersection_size
    return {"protocol": protocol, "suite": suite, "group": options.group if protocol == "ecdh" else None, "n": n,
            "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "load": os.getloadavg()[0]}


def _table(keys):
    import csv
    from psi.records import read_keys

    path = Path(tempfile.mkdtemp()) / "keys.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id"])
        w.writerows([k.decode()] for k in keys)
    return read_keys(path, ["id"])


def pir_run(suite: str, entries: int, lookups: int, rounds: int, workers: int) -> list[dict]:
    from pir import api as pir_api
    from pir.protocol import PirServerSession
    from pir.store import load_table
    from psi.driver import run_party
    from psi.transport.memory import memory_pair

    root = Path(tempfile.mkdtemp())
    start = time.perf_counter()
    pir_api.setup([(f"id{i}", f"label{i}") for i in range(entries)], root / "db", workers=workers, suite=suite)
    setup_s = time.perf_counter() - start
    table = load_table(root / "db")
    results = []
    cache = pir_api.HintCache(root / "cache")
    for r in range(rounds):
        a, b = memory_pair()
        server = PirServerSession(table, settings=table.settings)
        thread = threading.Thread(target=run_party, args=(server, b), kwargs={"timeout": 600}, daemon=True)
        thread.start()
        ids = [f"id{(r * 7919 + i) % (2 * entries)}" for i in range(lookups)]
        t, cpu = time.perf_counter(), _cpu()
        found, _stats, _client = pir_api.lookup_over(a, ids, cache=cache, suite=suite, timeout=600)
        wall, cpu = time.perf_counter() - t, _cpu() - cpu
        thread.join()
        assert all(f.listed == (int(i[2:]) < entries) for f, i in zip(found, ids))
        results.append({"pir": suite, "entries": entries, "lookups": lookups, "round": r, "hint_cached": r > 0,
                        "wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "setup_s": round(setup_s, 1),
                        "load": os.getloadavg()[0]})
    return results


def prims_run() -> list[dict]:
    """The primitives alone: ECB/CTR MB/s, per-item keyed digests, per-element SM2/x25519 work."""
    from psi.crypto.suite import GM, STANDARD

    data = bytes(1 << 22)
    items = [b"%018d" % i for i in range(20_000)]
    rows = []
    for suite in (STANDARD, GM):
        row: dict = {"prims": suite.name}
        for mode in ("ecb", "ctr"):
            enc = getattr(suite, mode)(bytes(16))
            t = time.perf_counter()
            for _ in range(4):
                enc.update(data)
            row[f"{mode}_ms_per_MB"] = round((time.perf_counter() - t) / 16 * 1000, 2)
        t = time.perf_counter()
        suite.keyed_digests(items, bytes(32), 24)
        row["keyed_digest_us"] = round((time.perf_counter() - t) / len(items) * 1e6, 2)
        import numpy as np

        from psi.ot.base_ot import BaseOtReceiver, BaseOtSender

        t = time.perf_counter()
        sender = BaseOtSender(512, bytes(32), suite)
        reply, _keys = BaseOtReceiver(np.arange(512, dtype=np.uint8) & 1, bytes(32), suite).reply(sender.first_message())
        sender.finish(reply)
        row["base_ot_512_s"] = round(time.perf_counter() - t, 2)
        row["load"] = os.getloadavg()[0]
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["psi", "pir", "prims"])
    parser.add_argument("--protocol", default="kkrt")
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--lookups", type=int, default=1)
    parser.add_argument("--with-sm2-standard", action="store_true", help="ECDH: also standard with --group sm2")
    args = parser.parse_args()
    for _ in range(args.rounds):
        if args.what == "prims":
            for row in prims_run():
                print(json.dumps(row), flush=True)
        elif args.what == "psi":
            runs = [("standard", None), ("gm", None)]
            if args.with_sm2_standard:
                runs.insert(1, ("standard", "sm2"))
            for suite, group in runs:
                print(json.dumps(psi_run(args.protocol, suite, args.n, args.workers, group)), flush=True)
        else:
            for suite in ("standard", "gm"):
                for row in pir_run(suite, args.entries, args.lookups, 3, args.workers):
                    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
