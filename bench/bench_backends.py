"""Per-multiplication cost of each compute backend for x25519 (psi.crypto.backends).

Usage: ``python bench/bench_backends.py [--n 8192] [--repeat 5] [--out bench/results/backends.json]``.
One process, one core. Every usable backend multiplies the same ``n`` hash-to-group outputs by one
scalar, the backends taking turns (``repeat`` rounds, interleaved, so other load on the machine
hits them alike); the best round is reported in µs per multiplication, and the results are
checked to be byte-identical. Also reports the CPU's AVX-512 flags and why a backend is not usable.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from psi.crypto import backends  # noqa: E402
from psi.crypto.backends import ippmb  # noqa: E402
from psi.crypto.backends.portable import PortableBackend  # noqa: E402
from psi.crypto.groups import get_group  # noqa: E402


def cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return sorted({f for f in line.split() if f.startswith(("avx512", "avxifma", "avx_ifma"))})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=8192)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    group = get_group("x25519")
    points = group.hash_to_group(b"psiq-bench-backends", [b"%012d" % i for i in range(args.n)])
    scalar = group.generate_scalar()
    usable: dict[str, backends.Backend] = {"portable": PortableBackend()}
    reasons = backends.available()
    if reasons["mb"] is None:
        usable["mb"] = ippmb.load()
    best = {name: float("inf") for name in usable}
    outputs = {}
    for _ in range(args.repeat):
        for name, backend in usable.items():
            start = time.perf_counter()
            outputs[name] = backend.x25519_many(scalar, points)
            best[name] = min(best[name], time.perf_counter() - start)
    if len({tuple(o) for o in outputs.values()}) != 1:
        print("error: backends disagree", file=sys.stderr)
        return 1
    report = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "avx512_flags": cpu_flags(), "load_average": os.getloadavg()},
        "n": args.n, "repeat": args.repeat,
        "x25519_us_per_mul": {name: round(t / args.n * 1e6, 3) for name, t in best.items()},
        "unusable": {name: why for name, why in reasons.items() if why is not None},
        "describe": {name: b.describe() for name, b in usable.items()},
    }
    for name, us in report["x25519_us_per_mul"].items():
        print(f"{name:<10} {us:8.2f} us per x25519 multiplication ({report['describe'][name]['x25519']})")
    for name, why in report["unusable"].items():
        print(f"{name:<10} not usable: {why}")
    print(f"CPU AVX-512 flags: {' '.join(report['machine']['avx512_flags']) or 'none'}; load {report['machine']['load_average']}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
