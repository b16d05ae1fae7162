"""``--protocol rr22`` as two ``psiq`` processes on loopback with mutual TLS (as the KKRT tests)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .helpers import ids as _ids, psi_pair_over_tls
from .test_cli_psi_e2e import tables  # noqa: F401 - ``tables`` is a fixture

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("reveal", ["both", "receiver"])
def test_two_processes_rr22_over_tls(reveal: str, tables: Path, pki: Path, tmp_path: Path) -> None:  # noqa: F811
    client, s_out, out_a, out_b, expected = psi_pair_over_tls("rr22", reveal, tables, pki, tmp_path,
                                                             server_output=reveal == "both")
    rows_a = _ids(out_a)
    assert set(rows_a) == expected and len(rows_a) == len(expected)
    summary, server_summary = json.loads(client.stdout), json.loads(s_out)
    assert summary["protocol"] == "rr22" and summary["intersection_size"] == len(expected)
    if reveal == "both":
        assert _ids(out_b) == rows_a, "row i must carry the same key on both sides"
        assert server_summary["intersection_size"] == len(expected)
    else:
        assert not out_b.exists() and server_summary["intersection_size"] is None
