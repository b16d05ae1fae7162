"""The quick-start demo, trial certificates, and the prepare -> serve flow, through the CLI."""

from __future__ import annotations

import csv
import json
import stat
import subprocess
from pathlib import Path

from click.testing import CliRunner

from cli.main import cli

from .conftest import ROOT, free_port, psiq_cmd, subprocess_env, tls_args


def test_demo_aligns_the_sample_banks(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["demo", "--out", str(tmp_path / "demo"), "--json", "--workers", "1"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    expected = json.loads((ROOT / "datasets" / "sample" / "expected.json").read_text())["intersection"]["bank_a&bank_b"]
    assert summary["client"]["intersection_size"] == summary["server"]["intersection_size"] == expected
    with open(tmp_path / "demo" / "bank_a_aligned.csv", encoding="utf-8") as a, \
            open(tmp_path / "demo" / "bank_b_aligned.csv", encoding="utf-8") as b:
        ids_a = [r["id_number"] for r in csv.DictReader(a)]
        ids_b = [r["id_number"] for r in csv.DictReader(b)]
    assert ids_a == ids_b and len(ids_a) == expected
    assert summary["client"]["peer_name"] == "bank-b" and summary["server"]["peer_name"] == "bank-a"


def test_demo_human_output_names_files_time_and_bytes(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["demo", "--out", str(tmp_path / "demo"), "--workers", "1", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "intersection size: 3,000" in result.output
    assert "bank_a_aligned.csv" in result.output and " B" in result.output and " s wall" in result.output
    assert f"are in {(tmp_path / 'demo').resolve()}" in result.output  # issue 11.12: say where the files went


def test_certs_init_writes_private_keys_0600(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["certs", "init", str(tmp_path), "--party", "bank-a", "--party", "bank-b"])
    assert result.exit_code == 0, result.output
    for name in ("ca.pem", "ca.key", "bank-a.pem", "bank-a.key", "bank-b.pem", "bank-b.key"):
        assert (tmp_path / name).is_file()
    assert stat.S_IMODE((tmp_path / "bank-a.key").stat().st_mode) == 0o600
    bad = CliRunner().invoke(cli, ["certs", "init", str(tmp_path), "--party", "../evil"])
    assert bad.exit_code == 2 and "bad party name" in bad.output


def test_missing_tls_files_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["psi", "connect", "--input", str(ROOT / "datasets/sample/bank_a.csv"),
                                      "--on", "id_number", "--peer", "127.0.0.1:9"])
    assert result.exit_code == 2 and "psiq certs init" in result.output


def test_prepared_ecdh_set_serves_a_client(tmp_path: Path, pki: Path) -> None:
    sample = ROOT / "datasets" / "sample"
    key, prepared = tmp_path / "b.key", tmp_path / "b.prepared"
    prep = CliRunner().invoke(cli, ["psi", "prepare", "--input", str(sample / "bank_b.csv"), "--on", "email",
                                    "--server-key", str(key), "--out", str(prepared), "--workers", "1", "--json"])
    assert prep.exit_code == 0, prep.output
    assert json.loads(prep.output)["keys"] == 10_000
    port = free_port()
    server = subprocess.Popen(psiq_cmd() + ["psi", "serve", "--protocol", "ecdh", "--input", str(sample / "bank_b.csv"),
                                            "--on", "email", "--listen", f"127.0.0.1:{port}", "--prepared", str(prepared),
                                            "--server-key", str(key), "--json", "--quiet", *tls_args(pki, "bank-b")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env())
    client = subprocess.run(psiq_cmd() + ["psi", "connect", "--protocol", "ecdh", "--input", str(sample / "bank_a.csv"),
                                          "--on", "email", "--peer", f"127.0.0.1:{port}", "--json", "--quiet",
                                          *tls_args(pki, "bank-a")],
                            capture_output=True, text=True, env=subprocess_env(), timeout=120)
    s_out, s_err = server.communicate(timeout=60)
    assert client.returncode == 0 and server.returncode == 0, (client.stderr, s_err)
    assert json.loads(client.stdout)["intersection_size"] == 3000
    assert any("persisted key" in n for n in json.loads(s_out)["notes"])


def _run_exit(code: str, tmp_path: Path, before: str = "") -> subprocess.CompletedProcess:
    script = f"import sys, threading, time\nfrom cli.main import _exit\n{before}\n_exit({code})\n"
    return subprocess.run([*psiq_cmd()[:1], "-c", script], capture_output=True, text=True, cwd=tmp_path,
                          env=subprocess_env(), timeout=60)


def test_exit_codes_follow_sys_exit(tmp_path: Path) -> None:
    assert _run_exit("None", tmp_path).returncode == 0
    assert _run_exit("4", tmp_path).returncode == 4
    done = _run_exit("'psiq: something failed'", tmp_path)
    assert done.returncode == 1 and "psiq: something failed" in done.stderr


def test_exit_waits_for_a_thread_still_writing(tmp_path: Path) -> None:
    # the fast path (no interpreter teardown) is only taken when nothing else is running
    before = ("def late():\n    time.sleep(0.3)\n    open('late.txt', 'w').write('done')\n"
              "threading.Thread(target=late).start()")
    done = _run_exit("0", tmp_path, before)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "late.txt").read_text() == "done"


# -- whom each command talks to (issue 10, point 7) ---------------------------------------------

def _tiny_inputs(tmp_path: Path) -> tuple[Path, Path]:
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text("id\n" + "".join(f"{i}\n" for i in range(0, 20)))
    b.write_text("id\n" + "".join(f"{i}\n" for i in range(10, 30)))
    return a, b


def _tls_only(pki: Path, name: str) -> list[str]:
    return ["--tls-cert", str(pki / f"{name}.pem"), "--tls-key", str(pki / f"{name}.key"), "--tls-ca", str(pki / "ca.pem")]


def test_every_networked_command_needs_a_peer_name_or_any_peer(tmp_path: Path, pki: Path) -> None:
    a, _b = _tiny_inputs(tmp_path)
    records = tmp_path / "records.txt"
    records.write_text("x\ny\n")
    port = free_port()
    commands = [
        ["psi", "serve", "--input", str(a), "--on", "id", "--listen", f"127.0.0.1:{port}"],
        ["psi", "connect", "--input", str(a), "--on", "id", "--peer", f"127.0.0.1:{port}"],
        ["psi", "serve", "--input", str(a), "--on", "id", "--via-dir", str(tmp_path / "x")],
        ["ot", "send", "--records", str(records), "--listen", f"127.0.0.1:{port}"],
        ["ot", "receive", "--index", "0", "--peer", f"127.0.0.1:{port}"],
        ["pir", "serve", "--db", str(tmp_path), "--listen", f"127.0.0.1:{port}"],
        ["pir", "query", "--peer", f"127.0.0.1:{port}", "--id", "1"],
    ]
    for command in commands:
        result = CliRunner().invoke(cli, [*command, *_tls_only(pki, "bank-a")])
        assert result.exit_code == 2, (command, result.output)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and "--peer-name NAME" in lines[0] and "--any-peer" in lines[0], result.output
    assert not (tmp_path / "x").exists()  # refused before touching the folder
    both = CliRunner().invoke(cli, [*commands[1], *_tls_only(pki, "bank-a"), "--peer-name", "bank-b", "--any-peer"])
    assert both.exit_code == 2 and "not both" in both.output


def _pair_of_processes(server_args: list[str], client_args: list[str]) -> tuple[subprocess.CompletedProcess, tuple]:
    server = subprocess.Popen(psiq_cmd() + server_args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=subprocess_env())
    client = subprocess.run(psiq_cmd() + client_args, capture_output=True, text=True, env=subprocess_env(), timeout=120)
    out, err = server.communicate(timeout=60)
    return client, (server.returncode, out, err)


def test_a_client_pinning_bank_b_refuses_bank_a_and_both_sides_exit_6(tmp_path: Path, pki: Path) -> None:
    """The client exits 6; the one-shot server is told why (it refused our certificate), logs that one
    line and keeps listening for its real partner (issue 11.6) until it is stopped."""
    import signal
    import time

    a, b = _tiny_inputs(tmp_path)
    port = free_port()
    server = subprocess.Popen(psiq_cmd() + ["psi", "serve", "--input", str(b), "--on", "id", "--listen",
                                            f"127.0.0.1:{port}", "--workers", "1", "--quiet",
                                            *_tls_only(pki, "bank-a"), "--any-peer"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env())
    try:
        client = subprocess.run(psiq_cmd() + ["psi", "connect", "--input", str(a), "--on", "id", "--peer",
                                              f"127.0.0.1:{port}", "--workers", "1", "--quiet",
                                              *_tls_only(pki, "bank-a"), "--peer-name", "bank-b"],
                                capture_output=True, text=True, env=subprocess_env(), timeout=120)
        assert client.returncode == 6 and "expected 'bank-b'" in client.stderr, client.stderr
        time.sleep(0.5)
        assert server.poll() is None, "a refused connection must not end a one-shot server"
    finally:
        server.send_signal(signal.SIGTERM)
        _out, s_err = server.communicate(timeout=60)
    refused = [line for line in s_err.splitlines() if "refused our certificate" in line]
    assert len(refused) == 1 and server.returncode == 143, s_err


def test_any_peer_runs_a_session(tmp_path: Path, pki: Path) -> None:
    a, b = _tiny_inputs(tmp_path)
    port = free_port()
    client, (s_code, _out, s_err) = _pair_of_processes(
        ["psi", "serve", "--input", str(b), "--on", "id", "--listen", f"127.0.0.1:{port}", "--workers", "1", "--quiet",
         *_tls_only(pki, "bank-b"), "--any-peer"],
        ["psi", "connect", "--input", str(a), "--on", "id", "--peer", f"127.0.0.1:{port}", "--workers", "1", "--quiet",
         "--json", *_tls_only(pki, "bank-a"), "--any-peer"])
    assert client.returncode == 0 and s_code == 0, (client.stderr, s_err)
    summary = json.loads(client.stdout)
    assert summary["intersection_size"] == 10 and summary["peer_name"] == "bank-b"


def test_via_dir_to_the_wrong_bank_exits_6_on_both_sides(tmp_path: Path, pki: Path) -> None:
    a, b = _tiny_inputs(tmp_path)
    folder = tmp_path / "exchange"
    client, (s_code, _out, s_err) = _pair_of_processes(
        ["psi", "serve", "--input", str(b), "--on", "id", "--via-dir", str(folder), "--workers", "1", "--quiet",
         "--timeout", "30", *_tls_only(pki, "bank-a"), "--any-peer"],
        ["psi", "connect", "--input", str(a), "--on", "id", "--via-dir", str(folder), "--workers", "1", "--quiet",
         "--timeout", "30", *_tls_only(pki, "bank-a"), "--peer-name", "bank-b"])
    assert client.returncode == 6 and "expected 'bank-b'" in client.stderr, client.stderr
    assert s_code == 6 and "refused this exchange" in s_err, s_err


def test_an_over_cap_announcement_ends_the_command_with_exit_4_naming_the_kind(tmp_path: Path) -> None:
    """A 'server' whose first frame announces a 200 MiB hello: one line, exit 4, nothing written."""
    import socket
    import threading

    from psi.messages import HEADER, MAGIC, WIRE_VERSION

    a, _b = _tiny_inputs(tmp_path)
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    done = threading.Event()

    def hostile() -> None:
        conn, _ = srv.accept()
        conn.sendall(HEADER.pack(MAGIC, WIRE_VERSION, 5, 0, bytes(8), 200 * 1024 * 1024) + b"hello" + b"{" * 1000)
        done.wait(30)
        conn.close()

    t = threading.Thread(target=hostile, daemon=True)
    t.start()
    out = tmp_path / "out.csv"
    result = subprocess.run(psiq_cmd() + ["psi", "connect", "--input", str(a), "--on", "id", "--peer",
                                          f"127.0.0.1:{srv.getsockname()[1]}", "--insecure", "--workers", "1",
                                          "--output", str(out), "--timeout", "20"],
                            capture_output=True, text=True, env=subprocess_env(), timeout=60)
    done.set()
    t.join(5)
    srv.close()
    errors = [line for line in result.stderr.splitlines() if line.startswith("psiq: error:")]
    assert result.returncode == 4 and len(errors) == 1, result.stderr
    assert "'hello' message of 209715200 bytes" in errors[0] and not out.exists()


def test_certs_init_refuses_to_replace_a_party_key_without_force(tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(cli, ["certs", "init", str(tmp_path), "--party", "bank-a"]).exit_code == 0
    key = (tmp_path / "bank-a.key").read_bytes()
    again = runner.invoke(cli, ["certs", "init", str(tmp_path), "--party", "bank-a"])
    assert again.exit_code == 2 and "--force" in again.output
    assert (tmp_path / "bank-a.key").read_bytes() == key
    assert runner.invoke(cli, ["certs", "init", str(tmp_path), "--party", "owner"]).exit_code == 0  # a new party: fine
    assert runner.invoke(cli, ["certs", "init", str(tmp_path), "--party", "bank-a", "--force"]).exit_code == 0
    assert (tmp_path / "bank-a.key").read_bytes() != key


def test_help_lists_whole_descriptions_and_every_prepare_option() -> None:
    runner = CliRunner()
    def cut(text: str) -> list[str]:
        return [ln for ln in text.splitlines() if ln.rstrip().endswith("...") and not ln.startswith("Usage")]

    top = runner.invoke(cli, ["--help"], terminal_width=80).output
    assert not cut(top) and "id was asked" in " ".join(top.split())
    assert not cut(runner.invoke(cli, ["psi", "--help"], terminal_width=80).output)
    assert not cut(runner.invoke(cli, ["pir", "--help"], terminal_width=80).output)
    prepare = runner.invoke(cli, ["psi", "prepare", "--help"], terminal_width=200).output
    for line in prepare.splitlines():
        if line.strip().startswith("--") and not line.strip().startswith(("--json", "--quiet", "--help")):
            assert len(line.split("  ", 2)) > 1 and line.split(None, 1)[1:], line
    assert "--input FILE" in prepare and "same file" in prepare
    assert "one per line" in runner.invoke(cli, ["ot", "send", "--help"]).output


def test_json_keeps_chinese_readable(tmp_path: Path) -> None:
    from cli.common import emit_json

    runner = CliRunner()
    import click

    @click.command()
    def show() -> None:
        emit_json({"label": "欺诈"})

    assert '"欺诈"' in runner.invoke(show).output
