"""Database sources and sinks against CSV: reading keys, writing aligned rows, peak memory.

Starts a throwaway PostgreSQL server (tests/pgserver.py), loads the same generated bank table
into it and into a CSV file, then, interleaved so that a busy machine hits both alike:

* read:  ``psi.io.read_keys(SqlSource(...))`` vs ``psi.records.read_keys(csv)``, N keys;
* write: N aligned rows (a random permutation) into a new PostgreSQL table
  (``SqlSink.write``, COPY in one transaction, source rows re-read) vs ``write_rows`` to a CSV;
* memory (``--rss N``): peak RSS of a fresh process reading N keys of a one-column table from
  PostgreSQL vs from CSV.

    python bench/bench_sql.py --rows 1000000 --repeat 3 [--rss 10000000] [--json bench/results/sql.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from psi import records  # noqa: E402
from psi.io import SqlSink, SqlSource  # noqa: E402
from psi.io import read_keys as io_read_keys  # noqa: E402
from psi.io import write_rows as io_write_rows  # noqa: E402
from psiq_datasets.generate import generate  # noqa: E402
from tests import pgserver  # noqa: E402
from tests.conftest import free_port  # noqa: E402

_RSS_CHILD = """
import resource, sys, time
sys.path.insert(0, {repo!r})
from psi import records
from psi.io import SqlSource, read_keys
t0 = time.perf_counter()
if sys.argv[1] == "csv":
    table = records.read_keys(sys.argv[2], ["id"], dedup="error")
else:
    table = read_keys(SqlSource(sys.argv[2], table="ids"), ["id"], dedup="error")
print(table.unique_keys, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, time.perf_counter() - t0)
"""


def _load(server: pgserver.PgServer, csv_path: Path, table: str, columns: str) -> None:
    import psycopg

    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {table}")
        conn.execute(f"CREATE TABLE {table} ({columns})")
        with conn.cursor().copy(f"COPY {table} FROM STDIN WITH (FORMAT csv, HEADER true)") as copy:
            with open(csv_path, "rb") as handle:
                while block := handle.read(1 << 20):
                    copy.write(block)
        conn.execute(f"ANALYZE {table}")


def _cpu() -> float:
    usage = os.times()
    return usage.user + usage.system


def _server_cpu(server: pgserver.PgServer) -> float:
    """CPU seconds of the PostgreSQL server so far: the postmaster with its reaped children
    (finished backends) plus its live children, from /proc."""
    with open(server.directory / "data" / "postmaster.pid") as handle:
        postmaster = handle.readline().strip()
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if pid == postmaster:
            total += sum(map(int, fields[11:15]))  # utime stime cutime cstime
        elif fields[1] == postmaster:
            total += sum(map(int, fields[11:13]))
    return total / tick


def _timed(server: pgserver.PgServer, fn: Any) -> tuple[Any, tuple[float, float, float]]:
    """fn()'s result and (wall, client CPU, server CPU) seconds."""
    t0, c0, s0 = time.perf_counter(), _cpu(), _server_cpu(server)
    result = fn()
    return result, (time.perf_counter() - t0, _cpu() - c0, _server_cpu(server) - s0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rss", type=int, default=0, help="rows for the peak-RSS comparison (0: skip)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    os.environ["PSIQ_DB_PASSWORD"] = pgserver.PASSWORD
    work = Path(tempfile.mkdtemp(prefix="psiq-bench-sql-"))
    server = pgserver.start(free_port())
    results: dict[str, object] = {"rows": args.rows, "load_average": os.getloadavg()[0], "cpus": os.cpu_count()}
    try:
        generate(work, rows=args.rows, overlap=0.5, seed=7, blacklist_rows=10)
        csv_path = work / "bank_a.csv"
        header = csv_path.open(encoding="utf-8").readline().strip().split(",")
        _load(server, csv_path, "bank_a", ", ".join(f"{c} TEXT" + (" PRIMARY KEY" if c == "customer_no" else "")
                                                    for c in header))
        source = SqlSource(server.url(), table="bank_a")
        runs: dict[str, list[tuple[float, float, float]]] = {"read_csv": [], "read_pg": [], "write_csv": [], "write_pg": []}
        order = np.random.default_rng(1).permutation(args.rows).astype(np.int64)
        for _ in range(args.repeat):
            csv_table, took = _timed(server, lambda: records.read_keys(csv_path, ["id_number"]))
            runs["read_csv"].append(took)
            pg_table, took = _timed(server, lambda: io_read_keys(source, ["id_number"]))
            runs["read_pg"].append(took)
            assert sorted(csv_table.keys) == sorted(pg_table.keys)
            _, took = _timed(server, lambda: records.write_rows(csv_path, order, work / "out.csv",
                                                                expect_rows=csv_table.rows_read))
            runs["write_csv"].append(took)
            _, took = _timed(server, lambda: io_write_rows(pg_table, order, SqlSink(server.url(), "aligned",
                                                                                    if_exists="replace")))
            runs["write_pg"].append(took)
        for name, values in runs.items():  # the median run by wall time, with its CPU figures
            wall, cpu, server_cpu = sorted(values)[len(values) // 2]
            results.update({f"{name}_s": wall, f"{name}_cpu_s": cpu, f"{name}_server_cpu_s": server_cpu,
                            f"{name}_all_s": [round(v[0], 3) for v in values]})
        results["read_ratio"] = results["read_pg_s"] / results["read_csv_s"]  # type: ignore[operator]
        results["write_ratio"] = results["write_pg_s"] / results["write_csv_s"]  # type: ignore[operator]
        for what, unit in (("read", "keys"), ("write", "rows")):
            print(f"{what} {args.rows:,} {unit}: CSV {results[f'{what}_csv_s']:.2f} s (CPU {results[f'{what}_csv_cpu_s']:.2f}), "
                  f"PostgreSQL {results[f'{what}_pg_s']:.2f} s (CPU {results[f'{what}_pg_cpu_s']:.2f}, server CPU "
                  f"{results[f'{what}_pg_server_cpu_s']:.2f}) -> {results[f'{what}_ratio']:.2f}x; "
                  f"all walls CSV {results[f'{what}_csv_all_s']} PG {results[f'{what}_pg_all_s']}")
        if args.rss:
            import psycopg

            ids_csv = work / "ids.csv"
            with psycopg.connect(server.dsn(), autocommit=True) as conn:
                conn.execute("DROP TABLE IF EXISTS ids")
                conn.execute("CREATE TABLE ids AS SELECT lpad(g::text, 18, '0') AS id FROM generate_series(1, %s) g",
                             (args.rss,))
                with open(ids_csv, "wb") as handle, conn.cursor().copy(
                        "COPY ids TO STDOUT WITH (FORMAT csv, HEADER true)") as copy:
                    for block in copy:
                        handle.write(block)
            child = _RSS_CHILD.format(repo=str(REPO))
            for kind, target in (("csv", str(ids_csv)), ("pg", server.url())):
                out = subprocess.run([sys.executable, "-c", child, kind, target], capture_output=True, text=True,
                                     check=True, env=dict(os.environ)).stdout.split()
                results[f"rss_{kind}_mb"] = float(out[1])
                results[f"rss_{kind}_s"] = float(out[2])
            print(f"peak RSS reading {args.rss:,} keys: CSV {results['rss_csv_mb']:.0f} MB "
                  f"({results['rss_csv_s']:.1f} s), PostgreSQL {results['rss_pg_mb']:.0f} MB ({results['rss_pg_s']:.1f} s)")
    finally:
        server.stop()
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    results["load_average_end"] = os.getloadavg()[0]
    print(f"(load average {results['load_average']:.1f} at start, {results['load_average_end']:.1f} at the end, "
          f"on {results['cpus']} cores)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
