"""``psiq interop ppca-ecdh`` end to end: two psiq processes, TLS, and a peer that refuses,
stalls or sends garbage (exit codes 5, 3, 4; nothing written)."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import pytest

pytest.importorskip("grpc", reason="psiq[interop] (grpcio) not installed")

from psi.interop.ppca import codec  # noqa: E402
from psi.interop.ppca.link import GrpcLink  # noqa: E402
from psi.interop.ppca.party import MAIN  # noqa: E402
from psi.interop.ppca.suite import suite_by_name  # noqa: E402

from .conftest import free_port, psiq_cmd, subprocess_env, tls_args  # noqa: E402


def _tables(tmp_path: Path) -> tuple[Path, Path, set[str]]:
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text("id,name\n" + "".join(f"c{i},n{i}\n" for i in range(0, 40)))
    b.write_text("amount,id\n" + "".join(f"{i},c{i}\n" for i in range(25, 70)))
    return a, b, {f"c{i}" for i in range(25, 40)}


def _start(rank: int, listen: int, peer: int, table: Path, extra: list[str]) -> subprocess.Popen[str]:
    args = ["interop", "ppca-ecdh", "--rank", str(rank), "--listen", f"127.0.0.1:{listen}",
            "--peer", f"127.0.0.1:{peer}", "--input", str(table), "--on", "id", "--quiet", *extra]
    return subprocess.Popen(psiq_cmd() + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=subprocess_env())


def _ids(path: Path, column: int) -> list[str]:
    return [line.split(",")[column] for line in path.read_text().splitlines()[1:]]


@pytest.mark.e2e
@pytest.mark.parametrize("suite", ["sm2", "sm2-sm3-increment"])  # the second: the spec's mandatory SM2 suite
def test_two_psiq_parties_over_mutual_tls_sm2_both_learn_aligned_rows(suite: str, tmp_path: Path, pki: Path) -> None:
    a, b, expected = _tables(tmp_path)
    p0, p1 = free_port(), free_port()
    r0 = _start(0, p0, p1, a, ["--suite", suite, "--output", str(tmp_path / "a_out.csv"), *tls_args(pki, "bank-a"),
                               "--peer-name", "bank-b"])
    r1 = _start(1, p1, p0, b, ["--suite", suite, "--output", str(tmp_path / "b_out.csv"), *tls_args(pki, "bank-b"),
                               "--peer-name", "bank-a"])
    out1, err1 = r1.communicate(timeout=300)
    out0, err0 = r0.communicate(timeout=60)
    assert (r0.returncode, r1.returncode) == (0, 0), err0 + err1
    left, right = _ids(tmp_path / "a_out.csv", 0), _ids(tmp_path / "b_out.csv", 1)
    assert set(left) == expected and left == right


@pytest.mark.e2e
def test_unsupported_suite_exits_5_on_both_sides_naming_the_proposal(tmp_path: Path) -> None:
    a, b, _ = _tables(tmp_path)
    p0, p1 = free_port(), free_port()
    r0 = _start(0, p0, p1, a, ["--suite", "sm2", "--output", str(tmp_path / "a_out.csv"), "--insecure"])
    r1 = _start(1, p1, p0, b, ["--suite", "x25519", "--output", str(tmp_path / "b_out.csv"), "--insecure"])
    _, err1 = r1.communicate(timeout=120)
    _, err0 = r0.communicate(timeout=60)
    assert r0.returncode == 5 and "<CURVE25519, SHA-256, DIRECT_HASH_AS_POINT_X>" in err0
    assert r1.returncode == 5 and "31100203" in err1
    assert not list(tmp_path.glob("*_out.csv*"))


def _fake_rank1(p0: int, p1: int, after_handshake: list[tuple[tuple[str, int], bytes]]) -> threading.Thread:
    """A rank 1 that proposes x25519, then sends ``after_handshake`` and goes quiet."""
    def run() -> None:
        link = GrpcLink(1, f"127.0.0.1:{p1}", f"127.0.0.1:{p0}", timeout=30)
        link.start()
        link.send((MAIN, 1), codec.encode_request(1, [suite_by_name("x25519")], 3, -1))
        link.recv((MAIN, 1))
        for key, data in after_handshake:
            link.send(key, data)
        try:
            link.recv((MAIN, 99))  # stay up, silent, until rank 0 gives up
        except Exception:  # noqa: BLE001 - whatever rank 0 does next ends this helper
            pass
        link.close(graceful=False)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.e2e
@pytest.mark.parametrize("after,code,message", [
    ([], 3, "timed out"),
    ([((MAIN, 2), codec.encode_batch("enc", 0, False, 3, b"\x00" * 95))], 4, "95 bytes for 3 values"),
])
def test_a_stalling_or_malformed_peer_exits_3_or_4_and_writes_nothing(tmp_path: Path, after: list, code: int,
                                                                      message: str) -> None:
    a, _, _ = _tables(tmp_path)
    p0, p1 = free_port(), free_port()
    rank0 = _start(0, p0, p1, a, ["--output", str(tmp_path / "a_out.csv"), "--insecure", "--timeout", "3"])
    helper = _fake_rank1(p0, p1, after)
    _, err = rank0.communicate(timeout=120)
    helper.join(timeout=40)
    assert rank0.returncode == code, err
    assert message in err
    assert not list(tmp_path.glob("a_out.csv*"))


def test_composite_keys_are_joined_with_commas_as_secretflow_does() -> None:
    from cli.interop import _secretflow_item
    from psi.records import encode_key

    assert _secretflow_item(encode_key(["138", "ab,c"]), 2) == b"138,ab,c"
    assert _secretflow_item(encode_key(["only"]), 1) == b"only"
