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
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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
        read_csv, read_pg, write_csv, write_pg = [], [], [], []
        order = np.random.default_rng(1).permutation(args.rows).astype(np.int64)
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            csv_table = records.read_keys(csv_path, ["id_number"])
            read_csv.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            pg_table = io_read_keys(source, ["id_number"])
            read_pg.append(time.perf_counter() - t0)
            assert sorted(csv_table.keys) == sorted(pg_table.keys)
            t0 = time.perf_counter()
            records.write_rows(csv_path, order, work / "out.csv", expect_rows=csv_table.rows_read)
            write_csv.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            io_write_rows(pg_table, order, SqlSink(server.url(), "aligned", if_exists="replace"))
            write_pg.append(time.perf_counter() - t0)
        results.update({
            "read_csv_s": statistics.median(read_csv), "read_pg_s": statistics.median(read_pg),
            "write_csv_s": statistics.median(write_csv), "write_pg_s": statistics.median(write_pg),
        })
        results["read_ratio"] = results["read_pg_s"] / results["read_csv_s"]  # type: ignore[operator]
        results["write_ratio"] = results["write_pg_s"] / results["write_csv_s"]  # type: ignore[operator]
        print(f"read {args.rows:,} keys:  CSV {results['read_csv_s']:.2f} s, PostgreSQL {results['read_pg_s']:.2f} s "
              f"({results['read_ratio']:.2f}x)")
        print(f"write {args.rows:,} rows: CSV {results['write_csv_s']:.2f} s, PostgreSQL {results['write_pg_s']:.2f} s "
              f"({results['write_ratio']:.2f}x)")
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
    print(f"(load average at start {results['load_average']:.1f} on {results['cpus']} cores)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
