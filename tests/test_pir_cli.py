"""``psiq pir``: setup from CSV, a served table in another process over TLS, single and file queries."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.pir import pir_group

from .conftest import free_port, psiq_cmd, subprocess_env, tls_args


@pytest.fixture(scope="module")
def blacklist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pir")
    with (d / "blacklist.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id_number", "reason", "listed_on"])
        for i in range(500):
            w.writerow([f"11010119900307{i:04d}", "fraud" if i % 2 else "制裁名单", "2024-01-01"])
    result = CliRunner().invoke(pir_group, ["setup", "--input", str(d / "blacklist.csv"), "--on", "id_number",
                                            "--label", "reason", "--out", str(d / "db"), "--workers", "1", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["entries"] == 500
    assert (d / "db" / "current" / "oprf.key").stat().st_mode & 0o777 == 0o600
    return d


def test_setup_errors(tmp_path: Path, blacklist: Path) -> None:
    result = CliRunner().invoke(pir_group, ["setup", "--input", str(blacklist / "blacklist.csv"), "--on", "nope",
                                            "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "no key column 'nope'" in result.output


def test_two_processes_over_tls(blacklist: Path, pki: Path, tmp_path: Path) -> None:
    port = free_port()
    server = subprocess.Popen(
        psiq_cmd() + ["pir", "serve", "--db", str(blacklist / "db"), "--listen", f"127.0.0.1:{port}", "--forever",
                      "--quota", "4", *tls_args(pki, "bank-a")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env())
    try:
        base = ["pir", "query", "--peer", f"127.0.0.1:{port}", "--cache-dir", str(tmp_path / "cache"),
                *tls_args(pki, "bank-b"), "--peer-name", "bank-a"]

        def run(args: list[str]) -> subprocess.CompletedProcess[str]:
            return subprocess.run(psiq_cmd() + base + args, capture_output=True, text=True, env=subprocess_env(), timeout=60)

        listed = run(["--id", "110101199003070003", "--json"])
        assert listed.returncode == 0, listed.stderr
        assert json.loads(listed.stdout) == {"id": "110101199003070003", "listed": True, "label": "fraud"}
        assert list((tmp_path / "cache").glob("*.hint"))
        missing = run(["--id", "110101199003079999", "--json"])
        assert missing.returncode == 0 and json.loads(missing.stdout)["listed"] is False
        ids = tmp_path / "ids.csv"
        ids.write_text("id_number,name\n110101199003070002,a\n999,b\n  ,c\n")
        out = tmp_path / "out.csv"
        batch = run(["--input", str(ids), "--on", "id_number", "--output", str(out), "--skip-empty-keys"])
        assert batch.returncode == 0, batch.stderr
        rows = list(csv.DictReader(out.open()))
        assert [(r["listed"], r["label"]) for r in rows] == [("true", "制裁名单"), ("false", ""), ("", "")]
        refused = run(["--id", "110101199003070001"])  # fifth lookup today for bank-b
        assert refused.returncode == 7 and "quota" in refused.stderr
        assert "4 used today, 0 remaining, 1 asked" in refused.stderr, refused.stderr
    finally:
        server.terminate()
        _out, server_err = server.communicate(timeout=10)
    assert "client bank-b has used 4 of its 4 lookups today" in server_err  # the quota warning
    log = [json.loads(line) for line in (blacklist / "db" / "audit.jsonl").read_text().splitlines()]
    assert {e["client"] for e in log} == {"bank-b"} and "110101199003070003" not in json.dumps(log)
