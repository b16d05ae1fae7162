"""RSA's private operation, each implementation psiq can use, interleaved in one run.

    python bench/bench_rsa_private.py                 # 2048-bit, 400 values, 5 rounds
    python bench/bench_rsa_private.py --bits 3072 --count 200 --rounds 3 --json out.json

Per round every implementation signs the same random values once, in turn (so load on a shared
machine hits them alike); reported: best and median µs per value, wall and CPU time.

* ``gmpy2``        gmpy2 CRT with ``powmod_sec`` (:func:`psi.crypto.backends.portable.rsa_private_gmpy2`)
* ``openssl``      libcrypto ``RSA_private_decrypt`` no padding (:mod:`psi.crypto.backends.openssl_rsa`)
* ``sign_batch``   what a PSI server runs: the process's backend plus the s^e == m check
* ``mb``           ``mbx_rsa_private_crt_mb8`` where Intel's multi-buffer library applies

Results must be equal; the script stops with exit code 1 if they are not.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from psi.crypto import backends  # noqa: E402
from psi.crypto.backends import openssl_rsa  # noqa: E402
from psi.crypto.backends.portable import rsa_private_gmpy2  # noqa: E402
from psi.crypto.rsa_keys import RsaKey, sign_batch  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bits", type=int, default=2048)
    ap.add_argument("--count", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    key = RsaKey.generate(args.bits)
    params, k = key.crt_params(), key.public.size
    values = [secrets.randbelow(params[0] - 2) + 2 for _ in range(args.count)]
    blob = b"".join(v.to_bytes(k, "big") for v in values)
    impls = {"gmpy2": lambda: rsa_private_gmpy2(params, blob)}
    notes = {}
    try:
        ossl = openssl_rsa.load()
        impls["openssl"] = lambda: ossl.private_many(params, blob)
        notes["openssl"] = ossl.describe()
    except backends.BackendUnavailable as err:
        notes["openssl"] = f"unavailable: {err}"
    try:
        from psi.crypto.backends import ippmb

        mb = ippmb.load()
        impls["mb"] = lambda: mb.rsa_private_many(params, blob)
    except backends.BackendUnavailable as err:
        notes["mb"] = f"unavailable: {err}"
    impls["sign_batch"] = lambda: b"".join(v.to_bytes(k, "big") for v in sign_batch(params, values))
    notes["sign_batch"] = str(backends.describe()["rsa_private"]) + " + s^e check"

    reference = impls["gmpy2"]()
    wall: dict[str, list[float]] = {name: [] for name in impls}
    cpu: dict[str, list[float]] = {name: [] for name in impls}
    for _ in range(args.rounds):
        for name, fn in impls.items():
            t0, c0 = time.perf_counter(), time.process_time()
            out = fn()
            wall[name].append((time.perf_counter() - t0) / args.count * 1e6)
            cpu[name].append((time.process_time() - c0) / args.count * 1e6)
            if out != reference:
                print(f"{name}: results differ from gmpy2", file=sys.stderr)
                return 1
    result = {
        "bits": args.bits,
        "count": args.count,
        "rounds": args.rounds,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "implementations": {
            name: {
                "best_us": round(min(wall[name]), 1),
                "median_us": round(statistics.median(wall[name]), 1),
                "best_cpu_us": round(min(cpu[name]), 1),
                "median_cpu_us": round(statistics.median(cpu[name]), 1),
                "what": notes.get(name, ""),
            }
            for name in impls
        },
        "unavailable": {k: v for k, v in notes.items() if v.startswith("unavailable")},
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
