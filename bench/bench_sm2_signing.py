"""Overhead of SM2 message signing (--sm2-key/--sm2-peer-key) on whole two-process sessions.

Usage: ``flock /work/wt/bench.lock python bench/bench_sm2_signing.py [--kkrt 100000] [--ecdh 10000]``.
Runs each protocol with and without signing, interleaved (plain, signed, plain, signed), over
mutual TLS on loopback, and prints wall seconds (client), CPU seconds (both processes, from
getrusage of the children), frames signed and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def psiq(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli", *args]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def session(d: Path, protocol: str, n: int, signed: bool) -> dict:
    port = free_port()
    tls = lambda me, peer: ["--tls-cert", str(d / f"{me}.pem"), "--tls-key", str(d / f"{me}.key"),
                            "--tls-ca", str(d / "ca.pem"), "--peer-name", peer]
    sm2 = lambda me, peer: (["--sm2-key", str(d / f"{me}.sm2.key"), "--sm2-peer-key", str(d / f"{peer}.sm2.pub")]
                            if signed else [])
    common = ["--protocol", protocol, "--on", "id", "--json", "--quiet"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    server = subprocess.Popen(psiq("psi", "serve", "--input", str(d / f"b{n}.csv"), "--listen", f"127.0.0.1:{port}",
                                   *common, *tls("b", "a"), *sm2("b", "a")), env=env, stdout=subprocess.PIPE)
    time.sleep(1.0)
    client = subprocess.run(psiq("psi", "connect", "--input", str(d / f"a{n}.csv"), "--peer", f"127.0.0.1:{port}",
                                 *common, *tls("a", "b"), *sm2("a", "b")), env=env, capture_output=True, text=True)
    server.communicate(timeout=600)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if client.returncode:
        raise SystemExit(client.stderr)
    summary = json.loads(client.stdout)
    return {"client_session_s": summary["seconds"], "wall_s_incl_startup": round(wall, 2),
            "cpu_s_both": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 2),
            "intersection": summary["intersection_size"], "bytes_sent": summary["bytes_sent"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kkrt", type=int, default=100_000)
    parser.add_argument("--ecdh", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        subprocess.run(psiq("certs", "init", str(d), "--party", "a", "--party", "b"), env=env, check=True, capture_output=True)
        for party in ("a", "b"):
            subprocess.run(psiq("certs", "sm2-keygen", str(d), "--party", party), env=env, check=True, capture_output=True)
        for n in {args.kkrt, args.ecdh}:
            (d / f"a{n}.csv").write_text("id\n" + "".join(f"{i}\n" for i in range(n)))
            (d / f"b{n}.csv").write_text("id\n" + "".join(f"{i}\n" for i in range(n // 2, n + n // 2)))
        results: dict = {}
        for protocol, n in (("kkrt", args.kkrt), ("ecdh", args.ecdh)):
            for _ in range(args.rounds):
                for signed in (False, True):
                    key = f"{protocol} {n} {'signed' if signed else 'plain'}"
                    results.setdefault(key, []).append(session(d, protocol, n, signed))
        print(json.dumps({"loadavg": os.getloadavg(), "results": results}, indent=1))


if __name__ == "__main__":
    main()
