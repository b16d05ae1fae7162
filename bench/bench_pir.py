"""Benchmark keyword PIR blacklist lookup: setup, hint, one query, 1,000 batched queries.

    .venv/bin/python bench/bench_pir.py            # 10^4 and 10^5 entries
    .venv/bin/python bench/bench_pir.py --large    # also 10^6
    .venv/bin/python bench/bench_pir.py --sizes 20000 --json out.json

Labels are 32 random bytes. Client and server run in one process joined by the in-memory
channel (real frame encoding, byte counts as on TCP, no network latency). "one query" is warm
(hint and expanded public matrix cached, as for every query after the first of a version);
"cold" adds the hint download and the matrix expansion.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pir.database import build_table  # noqa: E402
from pir.protocol import PirClient, PirServerSession  # noqa: E402
from psi.driver import run_pair  # noqa: E402
from psi.parallel import Executor  # noqa: E402

REFERENCE = [
    {"system": "RealSecure (seed report)", "entries": "tens of thousands", "query_ms": 720, "query_bytes": 420_000_000},
    {"system": "APSI labeled PSI (SecretFlow, 32+16 cores)", "entries": 1_000_000, "query_ms": 494, "query_bytes": None},
    {"system": "APSI 0.12, this machine, 1 thread", "entries": 1_000_000, "query_ms": 4600, "query_bytes": 3_000_000},
]


class TimedServer(PirServerSession):
    """Accumulates the wall time the server spends handling messages."""

    busy = 0.0

    def _handle(self, message):  # type: ignore[override]
        start = time.perf_counter()
        try:
            super()._handle(message)
        finally:
            TimedServer.busy += time.perf_counter() - start


def run_size(n: int, queries: int, batch: int) -> dict:
    entries = [(f"{100000000000000000 + i * 7919}".encode(), os.urandom(32)) for i in range(n)]
    with Executor() as executor:
        table, report = build_table(entries, label_width=32, executor=executor)
    row = {"entries": n, **report.as_dict()}

    # cold: no hint yet
    client = PirClient([entries[1][0]])
    start = time.perf_counter()
    run_pair(client, PirServerSession(table))
    row["cold_query_ms"] = round((time.perf_counter() - start) * 1e3, 2)
    hints = {client.fetched_hint.version: client.fetched_hint}
    client.fetched_hint.a_matrix()

    latencies, server_times, up, down = [], [], 0, 0
    for i in range(queries):
        ident = entries[(i * 31) % n][0] if i % 2 else f"unlisted-{i}".encode()
        TimedServer.busy = 0.0
        client = PirClient([ident], hints=hints)
        start = time.perf_counter()
        stats_client, _ = run_pair(client, TimedServer(table))
        latencies.append(time.perf_counter() - start)
        server_times.append(TimedServer.busy)
        up, down = stats_client.bytes_sent, stats_client.bytes_received
        result = client.result()[0]
        assert result.listed == bool(i % 2)
    row["query_ms_median"] = round(statistics.median(latencies) * 1e3, 2)
    row["query_ms_p90"] = round(sorted(latencies)[int(0.9 * len(latencies))] * 1e3, 2)
    row["server_ms_median"] = round(statistics.median(server_times) * 1e3, 2)
    row["query_bytes_up"], row["query_bytes_down"] = up, down

    ids = [entries[(i * 13) % n][0] for i in range(batch)]
    client = PirClient(ids, hints=hints)
    TimedServer.busy = 0.0
    start = time.perf_counter()
    stats_client, _ = run_pair(client, TimedServer(table))
    elapsed = time.perf_counter() - start
    assert all(r.listed for r in client.result())
    row["batch"] = batch
    row["batch_seconds"] = round(elapsed, 3)
    row["batch_server_seconds"] = round(TimedServer.busy, 3)
    row["batch_queries_per_second"] = round(batch / elapsed, 1)
    row["batch_bytes_up"], row["batch_bytes_down"] = stats_client.bytes_sent, stats_client.bytes_received
    return row


def _kb(x: float | None) -> str:
    return "-" if x is None else f"{x / 1024:,.1f} KiB"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", action="store_true", help="also 10^6 entries (minutes, ~2 GB RAM)")
    parser.add_argument("--sizes", type=int, nargs="*", default=None)
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--json", type=Path, default=Path("bench/results_pir.json"))
    args = parser.parse_args(argv)
    sizes = args.sizes or ([10_000, 100_000] + ([1_000_000] if args.large else []))
    rows = []
    for n in sizes:
        print(f"[{n} entries] ...", file=sys.stderr, flush=True)
        rows.append(run_size(n, args.queries, args.batch))
    print(f"\n{'entries':>9} {'setup s':>8} {'shape':>12} {'hint':>12} {'query ms':>9} {'srv ms':>7} "
          f"{'cold ms':>8} {'up':>11} {'down':>10} {'1000q s':>8} {'q/s':>7}")
    for r in rows:
        print(f"{r['entries']:>9} {r['seconds']['total']:>8.2f} {r['rows']:>5}x{r['columns']:<6} {_kb(r['hint_bytes']):>12} "
              f"{r['query_ms_median']:>9.2f} {r['server_ms_median']:>7.2f} {r['cold_query_ms']:>8.1f} "
              f"{_kb(r['query_bytes_up']):>11} {_kb(r['query_bytes_down']):>10} {r['batch_seconds']:>8.2f} "
              f"{r['batch_queries_per_second']:>7.0f}")
    print("\nreference:")
    for ref in REFERENCE:
        print(f"  {ref['system']:<45} {str(ref['entries']):>18}  {ref['query_ms']:>6} ms  {_kb(ref['query_bytes'])}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"results": rows, "reference": REFERENCE, "cpus": os.cpu_count()}, indent=2) + "\n")
    print(f"\nwritten {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
