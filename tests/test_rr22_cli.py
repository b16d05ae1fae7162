"""``--protocol rr22`` as two ``psiq`` processes on loopback with mutual TLS (as the KKRT tests)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import free_port, tls_args
from .test_cli_psi_e2e import _ids, _run, _start_server, tables  # noqa: F401 - ``tables`` is a fixture

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("reveal", ["both", "receiver"])
def test_two_processes_rr22_over_tls(reveal: str, tables: Path, pki: Path, tmp_path: Path) -> None:  # noqa: F811
    port = free_port()
    out_a, out_b = tmp_path / "a.csv", tmp_path / "b.csv"
    common = ["--protocol", "rr22", "--on", "id_number", "--reveal", reveal, "--json", "--quiet"]
    server_out = ["--output", str(out_b)] if reveal == "both" else []
    server = _start_server(["psi", "serve", "--input", str(tables / "bank_b.csv"), "--listen", f"127.0.0.1:{port}",
                            *server_out, "--peer-name", "bank-a", *common, *tls_args(pki, "bank-b")])
    client = _run(["psi", "connect", "--input", str(tables / "bank_a.csv"), "--peer", f"127.0.0.1:{port}",
                   "--output", str(out_a), "--peer-name", "bank-b", *common, *tls_args(pki, "bank-a")])
    s_out, s_err = server.communicate(timeout=120)
    assert client.returncode == 0, client.stderr
    assert server.returncode == 0, s_err
    expected = set(_ids(tables / "bank_a.csv")) & set(_ids(tables / "bank_b.csv"))
    rows_a = _ids(out_a)
    assert set(rows_a) == expected and len(rows_a) == len(expected)
    summary, server_summary = json.loads(client.stdout), json.loads(s_out)
    assert summary["protocol"] == "rr22" and summary["intersection_size"] == len(expected)
    if reveal == "both":
        assert _ids(out_b) == rows_a, "row i must carry the same key on both sides"
        assert server_summary["intersection_size"] == len(expected)
    else:
        assert not out_b.exists() and server_summary["intersection_size"] is None
