"""Measure each group's hash-to-group and multiplication cost, and the filter sizes.

Usage: ``python bench/bench_groups.py [--n 2000] [--out bench/bench_groups.json]``. Prints a
table and writes the figures as JSON. Single process, one core: the per-element costs that
``psi.crypto.groups`` and ``psi.crypto.filters`` quote in their docstrings.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from psi.crypto import filters
from psi.crypto.groups import GROUP_NAMES, get_group


def per_element(fn, count: int, repeat: int = 3) -> float:
    """Best of ``repeat`` runs, in microseconds per element."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best / count * 1e6


def bench_groups(n: int) -> dict:
    results = {}
    items = [b"customer-%08d" % i for i in range(n)]
    for name in GROUP_NAMES:
        group = get_group(name)
        scalar = group.generate_scalar()
        hashed = group.hash_to_group(b"bench", items)
        results[name] = {
            "hash_to_group_us": round(per_element(lambda: group.hash_to_group(b"bench", items), n), 2),
            "multiply_us": round(per_element(lambda: group.multiply(scalar, hashed), n), 2),
            "validate_us": round(per_element(lambda: [group.check_element(e) for e in hashed], n), 2),
        }
    return results


def bench_filters(n_set: int, n_query: int, fpr_bits: int) -> dict:
    keys = os.urandom(16 * n_set)
    queries = os.urandom(16 * n_query)
    results = {}
    for kind in filters.FILTER_KINDS:
        start = time.perf_counter()
        data = filters.encode_filter(kind, keys, n_query=n_query, fpr_bits=fpr_bits)
        encode = time.perf_counter() - start
        start = time.perf_counter()
        decoded = filters.decode_filter(data, n_query=n_query, fpr_bits=fpr_bits, max_count=n_set)
        decoded.contains(queries)
        lookup = time.perf_counter() - start
        results[kind] = {
            "bytes": len(data),
            "bytes_per_element": round(len(data) / n_set, 3),
            "encode_us_per_element": round(encode / n_set * 1e6, 3),
            "decode_and_lookup_us_per_query": round(lookup / n_query * 1e6, 3),
        }
    results["chosen"] = filters.choose_filter(n_set, n_query, fpr_bits)
    try:
        from pybloom_live import BloomFilter

        sample = [os.urandom(16) for _ in range(20000)]
        bloom = BloomFilter(capacity=len(sample), error_rate=2.0 ** -(fpr_bits + 17))
        add = per_element(lambda: [bloom.add(k) for k in sample], len(sample), repeat=1)
        look = per_element(lambda: [k in bloom for k in sample], len(sample), repeat=1)
        results["pybloom_live"] = {"k": bloom.num_slices, "add_us": round(add, 2), "lookup_us": round(look, 2)}
    except ImportError:  # pragma: no cover
        pass
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="elements per group measurement")
    parser.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    args = parser.parse_args()
    report = {
        "machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "groups": bench_groups(args.n),
        "filters_1e5x1e5_fpr40": bench_filters(10**5, 10**5, 40),
    }
    print(f"{'group':<14}{'hash us':>10}{'mult us':>10}{'check us':>10}")
    for name, row in report["groups"].items():
        print(f"{name:<14}{row['hash_to_group_us']:>10}{row['multiply_us']:>10}{row['validate_us']:>10}")
    print("filters, 10^5 x 10^5 at 2^-40:")
    for kind, row in report["filters_1e5x1e5_fpr40"].items():
        print(f"  {kind:<12} {row}")
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
