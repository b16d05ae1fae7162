"""Benchmarks for the OT layer and KKRT PSI.

    python bench/bench_ot.py            # base OT, 2^20 OTs, KKRT 2^16 and 2^20 per side
    python bench/bench_ot.py --large    # adds 2^24 OTs
    python bench/bench_ot.py --json     # one JSON document instead of a table

OT figures run both parties in this process on one core (``run_pair``), so the rate counts the
work of both sides. KKRT runs each party in its own forked process joined by a socket pair
(plain TCP framing, no TLS): the figures are wall time, per-phase time, bytes each way and each
party's peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from psi.driver import run_pair, run_party  # noqa: E402
from psi.ot import OtReceiver, OtSender  # noqa: E402
from psi.ot.base_ot import BaseOtReceiver, BaseOtSender  # noqa: E402
from psi.parallel import Executor  # noqa: E402
from psi.protocols import kkrt  # noqa: E402
from psi.protocols.base import Reveal  # noqa: E402


def bench_base(count: int) -> dict:
    choices = np.random.default_rng(0).integers(0, 2, count)
    start = time.perf_counter()
    sender = BaseOtSender(count, b"bench")
    reply, _ = BaseOtReceiver(choices, b"bench").reply(sender.first_message())
    sender.finish(reply)
    return {"base_ots": count, "seconds": round(time.perf_counter() - start, 4)}


def bench_ot(count: int, kind: str) -> dict:
    rng = np.random.default_rng(1)
    choices = rng.integers(0, 2, count)
    extra = {}
    if kind == "chosen":
        extra = {"messages0": rng.integers(0, 256, (count, 16), dtype=np.uint8),
                 "messages1": rng.integers(0, 256, (count, 16), dtype=np.uint8)}
    receiver = OtReceiver(choices, kind=kind)
    sender = OtSender(count, kind=kind, **extra)
    start = time.perf_counter()
    r_stats, s_stats = run_pair(receiver, sender)
    seconds = time.perf_counter() - start
    wire = r_stats.bytes_sent + s_stats.bytes_sent
    return {"ots": count, "kind": kind, "seconds": round(seconds, 3),
            "ots_per_second": round(count / seconds), "bytes_per_ot": round(wire / count, 2)}


def _kkrt_party(role: str, sock: socket.socket, n: int, conn) -> None:
    from psi.transport.tcp import TcpChannel

    offset = 0 if role == "client" else n // 2
    items = [(i + offset).to_bytes(8, "big") for i in range(n)]
    config = kkrt.Config(reveal=Reveal.BOTH)
    cls = kkrt.Client if role == "client" else kkrt.Server
    party = cls(items, config, peer_size=n, executor=Executor(1))
    channel = TcpChannel(sock)
    start = time.perf_counter()
    stats = run_party(party, channel)
    seconds = time.perf_counter() - start
    channel.close()
    conn.send({"seconds": round(seconds, 3), "phases": {k: round(v, 3) for k, v in stats.phases.items()},
               "bytes_sent": stats.bytes_sent, "matches": len(party.result().indices),
               "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)})


def bench_kkrt(n: int) -> dict:
    ctx = multiprocessing.get_context("fork")
    a, b = socket.socketpair()
    results = {}
    procs = []
    pipes = {}
    for role, sock in (("client", a), ("server", b)):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_kkrt_party, args=(role, sock, n, child))
        proc.start()
        procs.append(proc)
        pipes[role] = parent
    for role, pipe in pipes.items():
        results[role] = pipe.recv()
    for proc in procs:
        proc.join()
    assert results["client"]["matches"] == results["server"]["matches"] == n // 2
    return {"keys_per_side": n, "wall_seconds": max(r["seconds"] for r in results.values()),
            "client_to_server_mb": round(results["client"]["bytes_sent"] / 1e6, 2),
            "server_to_client_mb": round(results["server"]["bytes_sent"] / 1e6, 2), **results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", action="store_true", help="also run 2^24 OTs")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    report: dict = {"cpu": os.cpu_count(), "base_ot": [bench_base(128), bench_base(512), bench_base(1024)]}
    sizes = [1 << 20] + ([1 << 24] if args.large else [])
    report["ot"] = [bench_ot(n, kind) for n in sizes for kind in ("random", "chosen")]
    report["kkrt"] = [bench_kkrt(1 << 16), bench_kkrt(1 << 20)]
    if args.json:
        print(json.dumps(report, indent=2))
        return
    for row in report["base_ot"]:
        print(f"base OT  {row['base_ots']:>5}            {row['seconds']:.3f} s (both sides)")
    for row in report["ot"]:
        print(f"IKNP {row['kind']:>7} 2^{row['ots'].bit_length() - 1}  {row['seconds']:.3f} s  "
              f"{row['ots_per_second'] / 1e6:.2f} M OT/s (both sides, one core)  {row['bytes_per_ot']} B/OT")
    for row in report["kkrt"]:
        c, s = row["client"], row["server"]
        print(f"KKRT 2^{row['keys_per_side'].bit_length() - 1} x 2^{row['keys_per_side'].bit_length() - 1}: "
              f"{row['wall_seconds']:.2f} s wall; client→server {row['client_to_server_mb']} MB, "
              f"server→client {row['server_to_client_mb']} MB; peak RSS client {c['peak_rss_mib']} MiB, "
              f"server {s['peak_rss_mib']} MiB")
        print(f"    client phases {c['phases']}")
        print(f"    server phases {s['phases']}")


if __name__ == "__main__":
    main()
