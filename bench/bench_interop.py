"""Time PPCA ECDH-PSI sessions: psiq against SecretFlow (spu 0.9.2b0) and psiq against psiq.

Usage: ``python bench/bench_interop.py --spu-python PATH [--n 10000] [--suite x25519|sm2]``.
Both sides hold n items, half of them common; psiq is rank 0, the result goes to both ranks,
no handshake (SecretFlow 0.9.2 sends none). Prints wall-clock seconds per run as JSON lines.
The two sides share the machine's cores, so the figures are for the whole session, not one side.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def psiq(rank: int, ports: dict, table: Path, out: Path, suite: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "cli", "interop", "ppca-ecdh", "--rank", str(rank),
            "--listen", f"127.0.0.1:{ports[rank]}", "--peer", f"127.0.0.1:{ports[1 - rank]}", "--input", str(table),
            "--on", "id", "--suite", suite, "--no-handshake", "--insecure", "--quiet", "--json",
            "--output", str(out), "--timeout", "600"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def spu(python: str, ports: dict, table: Path, out: Path, suite: str) -> subprocess.Popen:
    args = [python, str(ROOT / "tests" / "interop" / "spu_peer.py"), "--rank", "1", "--self",
            f"127.0.0.1:{ports[1]}", "--peer", f"127.0.0.1:{ports[0]}", "--curve", suite, "--receiver", "-1",
            "--input", str(table), "--output", str(out), "--timeout-ms", "600000"]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--spu-python", default=None)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--suite", choices=("x25519", "sm2"), default="x25519")
    parser.add_argument("--peer", choices=("spu", "psiq"), default="spu")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "a.csv").write_text("id\n" + "".join(f"k{i}\n" for i in range(args.n)))
        (d / "b.csv").write_text("id\n" + "".join(f"k{i}\n" for i in range(args.n // 2, args.n + args.n // 2)))
        ports = {0: free_port(), 1: free_port()}
        start = time.monotonic()
        if args.peer == "spu":
            other = spu(args.spu_python, ports, d / "b.csv", d / "bo.csv", args.suite)
        else:
            other = psiq(1, ports, d / "b.csv", d / "bo.csv", args.suite)
        mine = psiq(0, ports, d / "a.csv", d / "ao.csv", args.suite)
        out, err = mine.communicate()
        psiq_done = time.monotonic() - start
        other_out, other_err = other.communicate()
        total = time.monotonic() - start
        ok = mine.returncode == 0 and other.returncode == 0
        common = len((d / "ao.csv").read_text().splitlines()) - 1 if ok else None
        print(json.dumps({"suite": args.suite, "n": args.n, "peer": args.peer, "ok": ok, "intersection": common,
                          "psiq_seconds": round(psiq_done, 2), "session_seconds": round(total, 2),
                          "error": None if ok else (err + other_err)[-500:]}))


if __name__ == "__main__":
    main()
