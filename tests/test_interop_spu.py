"""psiq against the real thing: SecretFlow's ECDH-PSI in interconnection mode.

The peer is PyPI ``spu==0.9.2b0`` (``spu.psi.bucket_psi(..., ic_mode=True)`` over
``brpc_channel_protocol="h2:grpc"``), run by tests/interop/spu_peer.py in its own virtualenv
because it pins its own numpy/jax/protobuf. ``.ci/run`` creates that venv at ``.venv-spu``;
elsewhere point ``PSIQ_SPU_PYTHON`` at its interpreter. Both outputs are compared with the
plaintext intersection.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("grpc", reason="psiq[interop] (grpcio) not installed")

from .conftest import ROOT, free_port, psiq_cmd, subprocess_env  # noqa: E402

SPU_PYTHON = Path(os.environ.get("PSIQ_SPU_PYTHON", ROOT / ".venv-spu" / "bin" / "python"))
PEER = ROOT / "tests" / "interop" / "spu_peer.py"

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not SPU_PYTHON.exists(),
                       reason=f"no SecretFlow venv at {SPU_PYTHON} (.ci/run creates it; or set PSIQ_SPU_PYTHON)"),
]


def _tables(tmp_path: Path) -> tuple[Path, Path, set[str]]:
    left, right = tmp_path / "left.csv", tmp_path / "right.csv"
    left.write_text("id\n" + "".join(f"u{i:05d}\n" for i in range(0, 300)))
    right.write_text("id\n" + "".join(f"u{i:05d}\n" for i in range(180, 480)))
    return left, right, {f"u{i:05d}" for i in range(180, 300)}


@pytest.mark.parametrize("suite,psiq_rank,result_to,spu_seq_ids,psiq_seq_ids", [
    ("x25519", 0, -1, False, False),
    ("x25519", 1, 1, True, True),
    ("sm2", 0, 1, True, True),
    ("sm2", 1, -1, True, False),  # SecretFlow suffixes its keys, psiq does not: both read the other
])
def test_psiq_and_secretflow_compute_the_plaintext_intersection(tmp_path: Path, suite: str, psiq_rank: int,
                                                                result_to: int, spu_seq_ids: bool,
                                                                psiq_seq_ids: bool) -> None:
    left, right, expected = _tables(tmp_path)
    spu_rank = 1 - psiq_rank
    ports = {0: free_port(), 1: free_port()}
    spu_out, psiq_out = tmp_path / "spu_out.csv", tmp_path / "psiq_out.csv"
    spu = subprocess.Popen(
        [str(SPU_PYTHON), str(PEER), "--rank", str(spu_rank), "--self", f"127.0.0.1:{ports[spu_rank]}",
         "--peer", f"127.0.0.1:{ports[psiq_rank]}", "--curve", suite, "--receiver", str(result_to),
         "--input", str(right), "--output", str(spu_out), "--timeout-ms", "60000", "--link-id", "root",
         *(["--seq-id"] if spu_seq_ids else [])],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    psiq_gets = result_to in (-1, psiq_rank)
    args = ["interop", "ppca-ecdh", "--rank", str(psiq_rank), "--listen", f"127.0.0.1:{ports[psiq_rank]}",
            "--peer", f"127.0.0.1:{ports[spu_rank]}", "--input", str(left), "--on", "id", "--suite", suite,
            "--no-handshake", "--result-to", "all" if result_to == -1 else str(result_to), "--insecure",
            "--quiet", "--timeout", "60", *(["--link-seq-ids"] if psiq_seq_ids else []),
            *(["--output", str(psiq_out)] if psiq_gets else [])]
    psiq = subprocess.run(psiq_cmd() + args, capture_output=True, text=True, env=subprocess_env(), timeout=300)
    spu_stdout, spu_stderr = spu.communicate(timeout=120)
    assert psiq.returncode == 0, psiq.stderr
    assert spu.returncode == 0, spu_stderr[-2000:]
    if psiq_gets:
        assert set(psiq_out.read_text().split()[1:]) == expected
    if result_to in (-1, spu_rank):
        assert set(spu_out.read_text().split()[1:]) == expected
    assert '"original_count": 300' in spu_stdout
