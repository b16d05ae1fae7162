"""Test helpers shared by several test modules (fixtures here are imported by name where used)."""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import pytest

from psi.crypto.rsa_keys import RsaKey
from psi.parallel import Executor
from psi.protocols.base import Reveal

from .conftest import free_port, psiq_cmd, subprocess_env, tls_args


# -- sans-IO PSI runs ---------------------------------------------------------------------------


def assert_matches_plaintext(client: list, server: list, c_out, s_out, reveal: Reveal) -> None:
    """The client's output is the plaintext intersection; in ``both`` mode the server's indices
    align with the client's row by row, otherwise the server learns nothing."""
    expected = set(client) & set(server)
    assert sorted(client[i] for i in c_out.indices) == sorted(expected)
    assert c_out.cardinality == len(expected)
    if reveal is Reveal.BOTH:
        assert [client[i] for i in c_out.indices] == [server[i] for i in s_out.indices]
    else:
        assert s_out.indices is None and s_out.cardinality is None


# -- RSA fixtures (import them by name into a test module) --------------------------------------


@pytest.fixture(scope="module")
def key() -> RsaKey:
    return RsaKey.generate(2048)


@pytest.fixture(scope="module")
def executor():
    with Executor(workers=1) as ex:
        yield ex


# -- two psiq processes -------------------------------------------------------------------------


def ids(path: Path, column: str = "id_number") -> list[str]:
    """The ``column`` values of a CSV file, in row order."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
        return [row[column] for row in csv.DictReader(fh)]


def start_psiq(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(psiq_cmd() + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=subprocess_env())


def run_psiq(args: list[str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(psiq_cmd() + args, capture_output=True, text=True, env=subprocess_env(), timeout=timeout)


def psi_pair_over_tls(protocol: str, reveal: str, tables: Path, pki: Path, tmp_path: Path, *,
                      server_output: bool = True) -> tuple[subprocess.CompletedProcess[str], str, Path, Path, set[str]]:
    """bank-b serves ``bank_b.csv``, bank-a connects with ``bank_a.csv`` (``--on id_number``,
    ``--json``, mutual TLS on loopback); both must exit 0. Returns (client run, server stdout,
    client output, server output path, the plaintext intersection)."""
    port = free_port()
    out_a, out_b = tmp_path / "a.csv", tmp_path / "b.csv"
    common = ["--protocol", protocol, "--on", "id_number", "--reveal", reveal, "--json", "--quiet"]
    server_out = ["--output", str(out_b)] if server_output else []
    server = start_psiq(["psi", "serve", "--input", str(tables / "bank_b.csv"), "--listen", f"127.0.0.1:{port}",
                         *server_out, "--peer-name", "bank-a", *common, *tls_args(pki, "bank-b")])
    client = run_psiq(["psi", "connect", "--input", str(tables / "bank_a.csv"), "--peer", f"127.0.0.1:{port}",
                       "--output", str(out_a), "--peer-name", "bank-b", *common, *tls_args(pki, "bank-a")])
    s_out, s_err = server.communicate(timeout=120)
    assert client.returncode == 0, client.stderr
    assert server.returncode == 0, s_err
    expected = set(ids(tables / "bank_a.csv")) & set(ids(tables / "bank_b.csv"))
    return client, s_out, out_a, out_b, expected
