"""The bucketed session's output step alone (psi/scale/output.py): time and peak RSS.

    python bench/bench_scale_output.py --input bench/data/scale-100000000-a.csv --buckets 79

Writes per-bucket checkpoints as a session would (half of the input's rows matched, spread over
``--buckets`` buckets with random order tags; the other half as an outer join's unmatched rows)
in a first process, then runs :func:`psi.scale.output.write_bucketed_output` in a fresh process
and prints wall, CPU seconds and peak RSS: the fresh process's ``VmHWM`` (``ru_maxrss`` is
carried across ``execve`` on Linux, so it would report the generating parent's size: 10^8
shuffled row numbers are 800 MB).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def generate(rows: int, buckets: int, done: Path) -> None:
    rng = np.random.default_rng(1)
    perm = rng.permutation(rows)
    matched, unmatched = perm[: rows // 2], perm[rows // 2:]
    done.mkdir(parents=True, exist_ok=True)
    for b, (m, u) in enumerate(zip(np.array_split(matched, buckets), np.array_split(unmatched, buckets))):
        np.savez(done / f"b{b:04d}.npz", rows=m, tags=rng.integers(0, 2**64, len(m), dtype=np.uint64), unmatched=np.sort(u))


def write(src: Path, rows: int, buckets: int, work: Path, out: Path) -> dict:
    sys.path.insert(0, str(ROOT))
    from psi.api import _own_peak_kb
    from psi.scale.output import Segment, write_bucketed_output

    parts = ({"matched": q["rows"], "tags": q["tags"], "direct": q["unmatched"]}
             for q in (np.load(work / "done" / f"b{b:04d}.npz") for b in range(buckets)))
    t0, c0 = time.perf_counter(), time.process_time()
    n = write_bucketed_output(src, out, fmt="csv", tmp=work / "out", rows_read=rows, buckets=parts,
                              segments=[Segment("own")])
    return {"rows_written": n, "wall": round(time.perf_counter() - t0, 1), "cpu": round(time.process_time() - c0, 1),
            "peak_rss_mb": round(_own_peak_kb() / 1024, 1),
            "ru_maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "load_average": os.getloadavg()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--input", type=Path, required=True)
    p.add_argument("--buckets", type=int, default=79)
    p.add_argument("--work", type=Path, default=None)
    p.add_argument("--step", choices=["all", "write"], default="all")
    p.add_argument("--rows", type=int, default=None)
    args = p.parse_args()
    if args.step == "write":
        print(json.dumps(write(args.input, args.rows, args.buckets, args.work, args.work / "out.csv")))
        return
    rows = sum(1 for _ in open(args.input, "rb")) - 1
    with tempfile.TemporaryDirectory(dir=args.work) as d:
        work = Path(d)
        generate(rows, args.buckets, work / "done")
        subprocess.run([sys.executable, __file__, "--input", str(args.input), "--buckets", str(args.buckets),
                        "--work", str(work), "--step", "write", "--rows", str(rows)], check=True)


if __name__ == "__main__":
    main()
