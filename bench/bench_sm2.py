"""SM2 costs: scalar multiplication of random points (OpenSSL's ladder through ctypes vs psiq's
gmpy2 window code, interleaved in one run) and SM2 sign / verify through EVP.

Usage: ``flock /work/wt/bench.lock python bench/bench_sm2.py [--n 200] [--rounds 3]``.
Prints µs per operation (best of the rounds, wall and process CPU) and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from psi.crypto import libcrypto, sm2


def timed(fn, count: int) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return (time.perf_counter() - wall) / count * 1e6, (time.process_time() - cpu) / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    n = args.n
    xs = [int(sm2.multiply(sm2.generate_scalar(), sm2.G)[0]).to_bytes(32, "big") for _ in range(n)]
    scalar = sm2.generate_scalar().to_bytes(32, "big")
    k = int.from_bytes(scalar, "big")
    key = libcrypto.Sm2PrivateKey.generate()
    public = key.public_key()
    message = os.urandom(200)
    signature = key.sign(message)
    best: dict[str, list[float]] = {}
    for _ in range(args.rounds):  # interleaved: both implementations see the same load
        runs = {
            "openssl_multiply": lambda: libcrypto.multiply_x_batch(scalar, xs),
            "gmpy2_multiply": lambda: [sm2.multiply_x(k, sm2.decode_x(x)) for x in xs],
            "openssl_sign": lambda: [key.sign(message) for _ in range(n)],
            "openssl_verify": lambda: [public.verify(signature, message) for _ in range(n)],
        }
        for name, fn in runs.items():
            wall, cpu = timed(fn, n)
            old = best.get(name)
            if old is None or wall < old[0]:
                best[name] = [round(wall, 1), round(cpu, 1)]
    result = {"n": n, "openssl": libcrypto.version(), "loadavg": os.getloadavg(),
              "us_per_op_wall_cpu": best}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
