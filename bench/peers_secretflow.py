"""SecretFlow's PSI as a peer in bench_psi.py (``--peers secretflow``).

SecretFlow (``spu==0.9.5``) lives in its own virtual environment (``--spu-python``, default
``$PSIQ_BENCH_SPU_PYTHON`` or ``/work/venvs/spu095/bin/python``): its wheel pins jax and protobuf
versions psiq's environment need not share. For each protocol (ECDH on curve 25519, KKRT, RR22)
two processes of ``bench/secretflow_party.py`` run on the same bank_a/bank_b CSV files as psiq,
rank 0 (receiver, bank_a) and rank 1 (bank_b), over brpc on loopback without TLS, the result
broadcast to both and written as SecretFlow's own aligned CSV. Recorded: ``wall`` (first launch
to both exited: interpreter start, CSV, protocol, output), each party's own ``seconds``, peak RSS
per party, CPU seconds of both, and which x25519 implementation SecretFlow logged (``Using libSodium`` / IPP). A wrong
intersection size or output row count stops the benchmark (BenchError), as for psiq.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import BenchError, free_port

__all__ = ["SF_PROTOCOLS", "spu_python", "run_secretflow"]

SF_PROTOCOLS = ("ecdh", "kkrt", "rr22")
PARTY = Path(__file__).resolve().parent / "secretflow_party.py"


def spu_python(explicit: str | None) -> Path:
    """The interpreter that has ``spu`` installed; raises BenchError naming what to install."""
    path = Path(explicit or os.environ.get("PSIQ_BENCH_SPU_PYTHON") or "/work/venvs/spu095/bin/python")
    if not path.exists():
        raise BenchError(f"--peers secretflow: {path} not found (python3 -m venv /work/venvs/spu095 && "
                         "/work/venvs/spu095/bin/pip install spu==0.9.5, or --spu-python)")
    done = subprocess.run([str(path), "-c", "import spu, spu.psi; print(spu.__version__)"],
                          capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise BenchError(f"--peers secretflow: {path} cannot import spu.psi: {done.stderr.strip().splitlines()[-1:]}")
    return path


def _last_json(text: str) -> dict[str, Any]:
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise BenchError("secretflow party printed no summary")


def _rows(path: Path) -> int:
    with open(path, "rb") as fh:
        return max(0, sum(1 for _ in fh) - 1)


def run_secretflow(python: Path, protocol: str, data: Path, key: str, expected: int, timeout: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="psiq-bench-sf-") as tmp:
        ports = f"{free_port()},{free_port()}"
        procs = []
        start = time.perf_counter()
        for rank, table in ((1, "bank_b.csv"), (0, "bank_a.csv")):
            out = Path(tmp) / f"out{rank}.csv"
            cmd = [str(python), str(PARTY), "--rank", str(rank), "--protocol", protocol, "--input", str(data / table),
                   "--output", str(out), "--key", key, "--ports", ports, "--timeout-ms", str(int(timeout * 1000))]
            procs.append((rank, out, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                                      cwd=tmp, start_new_session=True)))
        results: dict[int, dict[str, Any]] = {}
        logs = ""
        try:
            for rank, out, proc in procs:
                text, _ = proc.communicate(timeout=max(1.0, timeout - (time.perf_counter() - start)))
                logs += text
                if proc.returncode != 0:
                    raise BenchError(f"secretflow {protocol} rank {rank} exited {proc.returncode}: "
                                     f"{(text.strip().splitlines() or [''])[-1][:300]}")
                results[rank] = {**_last_json(text), "output_rows": _rows(out)}
        except subprocess.TimeoutExpired:
            raise BenchError(f"secretflow {protocol}: timed out after {timeout:.0f} s") from None
        finally:
            for _, _, proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        wall = time.perf_counter() - start
    for rank, r in results.items():
        if r["intersection_count"] != expected or r["output_rows"] != expected:
            raise BenchError(f"secretflow {protocol} rank {rank}: intersection {r['intersection_count']}, "
                             f"{r['output_rows']} rows written, plaintext answer {expected}")
    found = re.search(r"Using (\w+)", logs)
    return {"protocol": protocol, "wall_s": round(wall, 3),
            "session_s": round(max(r["seconds"] for r in results.values()), 3),
            "peak_rss_mb": {str(rank): r["peak_rss_mb"] for rank, r in sorted(results.items())},
            "cpu_s": round(sum(r.get("cpu_s", 0.0) for r in results.values()), 2),
            "intersection_size": expected, "x25519_impl": found.group(1) if found and protocol == "ecdh" else None}
