"""Two ``psiq`` processes on loopback with mutual TLS, checked against the plaintext answer.

Also the faults a bank will meet: a certificate from another CA, a peer running another
protocol, a peer killed mid-session, a malformed input file.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from psiq_datasets.generate import generate

from .conftest import ROOT, free_port, psiq_cmd, subprocess_env, tls_args
from .helpers import ids as _ids, psi_pair_over_tls, run_psiq as _run, start_psiq as _start_server

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def tables(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("tables")
    generate(d, rows=1500, overlap=0.4, seed=7, blacklist_rows=100)
    return d


def _one_line_error(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    errors = [line for line in lines if line.startswith("psiq: error:")]
    assert len(errors) == 1, stderr
    return errors[0]


@pytest.mark.parametrize("protocol", ["rsa", "ecdh", "kkrt"])
def test_two_processes_align_over_tls(protocol: str, tables: Path, pki: Path, tmp_path: Path) -> None:
    client, s_out, out_a, out_b, expected = psi_pair_over_tls(protocol, "both", tables, pki, tmp_path)
    rows_a, rows_b = _ids(out_a), _ids(out_b)
    assert rows_a == rows_b, "row i must carry the same key on both sides"
    assert set(rows_a) == expected and len(rows_a) == len(expected)
    summary = json.loads(client.stdout)
    assert summary["intersection_size"] == len(expected) == json.loads(s_out)["intersection_size"]
    assert summary["peer_name"] == "bank-b" and summary["bytes_sent"] > 0 and summary["bytes_received"] > 0


def test_receiver_mode_client_output_only(tables: Path, pki: Path, tmp_path: Path) -> None:
    port = free_port()
    out_a = tmp_path / "a.csv"
    server = _start_server(["psi", "serve", "--protocol", "ecdh", "--input", str(tables / "bank_b.csv"), "--on", "phone",
                            "--listen", f"127.0.0.1:{port}", "--quiet", *tls_args(pki, "bank-b")])
    client = _run(["psi", "connect", "--protocol", "ecdh", "--input", str(tables / "bank_a.csv"), "--on", "phone",
                   "--peer", f"127.0.0.1:{port}", "--output", str(out_a), "--quiet", *tls_args(pki, "bank-a")])
    server.communicate(timeout=60)
    assert client.returncode == 0 and server.returncode == 0, client.stderr
    expected = set(_ids(tables / "bank_a.csv", "phone")) & set(_ids(tables / "bank_b.csv", "phone"))
    assert set(_ids(out_a, "phone")) == expected
    assert "intersection size: %d" % len(expected) in client.stdout


def test_certificate_from_another_ca_is_refused(tables: Path, pki: Path, tmp_path: Path) -> None:
    """The client is refused (exit 6); the one-shot server logs one line and keeps listening."""
    port = free_port()
    server = _start_server(["psi", "serve", "--input", str(tables / "bank_b.csv"), "--on", "id_number",
                            "--listen", f"127.0.0.1:{port}", "--quiet", *tls_args(pki, "bank-b")])
    try:
        client = _run(["psi", "connect", "--input", str(tables / "bank_a.csv"), "--on", "id_number",
                       "--peer", f"127.0.0.1:{port}", "--output", str(tmp_path / "a.csv"), "--quiet",
                       *tls_args(pki, "mallory")])
        assert client.returncode == 6 and "TLS" in _one_line_error(client.stderr)
        assert not (tmp_path / "a.csv").exists()
        time.sleep(0.5)
        assert server.poll() is None, "a refused connection must not end a one-shot server"
    finally:
        server.terminate()
        _s_out, s_err = server.communicate(timeout=60)
    refused = [line for line in s_err.splitlines() if "refused a connection" in line]
    assert len(refused) == 1 and "TLS" in refused[0], s_err
    assert server.returncode == 143, s_err


def test_one_shot_server_survives_scans_until_a_session_ran(tables: Path, pki: Path, tmp_path: Path) -> None:
    """Issue 11.6: a TCP health check and a client that hangs up before its hello are logged, then the
    real partner gets its session and the server exits 0."""
    import socket

    port = free_port()
    server = _start_server(["psi", "serve", "--input", str(tables / "bank_b.csv"), "--on", "id_number",
                            "--listen", f"127.0.0.1:{port}", "--timeout", "120", *tls_args(pki, "bank-b")])
    try:
        deadline = time.monotonic() + 60
        while True:  # the health check: connect, then close without a word
            try:
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "server never listened"
                time.sleep(0.1)
        time.sleep(0.5)
        assert server.poll() is None, "a health check must not end a one-shot server"
        client = _run(["psi", "connect", "--input", str(tables / "bank_a.csv"), "--on", "id_number",
                       "--peer", f"127.0.0.1:{port}", "--quiet", *tls_args(pki, "bank-a")])
        _s_out, s_err = server.communicate(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
    assert client.returncode == 0, client.stderr
    assert server.returncode == 0, s_err
    assert len([line for line in s_err.splitlines() if "refused a connection" in line]) == 1, s_err


def test_one_shot_server_gives_up_after_an_explicit_timeout(tables: Path, pki: Path) -> None:
    port = free_port()
    started = time.monotonic()
    result = _run(["psi", "serve", "--input", str(tables / "bank_b.csv"), "--on", "id_number",
                   "--listen", f"127.0.0.1:{port}", "--timeout", "2", "--quiet", *tls_args(pki, "bank-b")])
    assert result.returncode == 3 and "timeout" in _one_line_error(result.stderr)
    assert time.monotonic() - started < 60


def test_protocol_mismatch_stops_both_sides(tables: Path, pki: Path, tmp_path: Path) -> None:
    port = free_port()
    server = _start_server(["psi", "serve", "--protocol", "rsa", "--input", str(tables / "bank_b.csv"), "--on",
                            "id_number", "--listen", f"127.0.0.1:{port}", "--quiet", *tls_args(pki, "bank-b")])
    client = _run(["psi", "connect", "--protocol", "ecdh", "--input", str(tables / "bank_a.csv"), "--on", "id_number",
                   "--peer", f"127.0.0.1:{port}", "--quiet", *tls_args(pki, "bank-a")])
    _s_out, s_err = server.communicate(timeout=60)
    assert client.returncode == 5 and "protocol" in _one_line_error(client.stderr)
    assert server.returncode == 5 and "protocol" in _one_line_error(s_err)


def test_settings_mismatch_is_named(tables: Path, pki: Path) -> None:
    port = free_port()
    server = _start_server(["psi", "serve", "--input", str(tables / "bank_b.csv"), "--on", "phone", "--normalize",
                            "trim,phone", "--listen", f"127.0.0.1:{port}", "--quiet", *tls_args(pki, "bank-b")])
    client = _run(["psi", "connect", "--input", str(tables / "bank_a.csv"), "--on", "phone",
                   "--peer", f"127.0.0.1:{port}", "--quiet", *tls_args(pki, "bank-a")])
    server.communicate(timeout=60)
    assert client.returncode == 5 and "normalize" in _one_line_error(client.stderr)
    assert server.returncode == 5


def test_killed_peer_gives_clean_error_and_no_output(pki: Path, tmp_path: Path) -> None:
    tables = ROOT / "datasets" / "sample"  # 10,000 rows a side: about 15 s of RSA signing on one worker
    port = free_port()
    out_a = tmp_path / "a.csv"
    server = _start_server(["psi", "serve", "--protocol", "rsa", "--input", str(tables / "bank_b.csv"), "--on",
                            "id_number", "--listen", f"127.0.0.1:{port}", "--quiet", "--workers", "1",
                            *tls_args(pki, "bank-b")])
    client = subprocess.Popen(psiq_cmd() + ["psi", "connect", "--protocol", "rsa", "--input", str(tables / "bank_a.csv"),
                                            "--on", "id_number", "--peer", f"127.0.0.1:{port}", "--output", str(out_a),
                                            "--quiet", *tls_args(pki, "bank-a")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env())
    time.sleep(3.0)  # mid-session
    server.kill()
    server.communicate()
    _c_out, c_err = client.communicate(timeout=60)
    assert client.returncode == 3, c_err
    assert "peer" in _one_line_error(c_err) or "connection" in _one_line_error(c_err)
    assert not out_a.exists() and not list(tmp_path.glob("*.tmp*"))


def test_malformed_csv_names_the_line(tmp_path: Path, pki: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("id_number,name\n1,a\n2,b,extra\n", encoding="utf-8")
    result = _run(["psi", "connect", "--input", str(bad), "--on", "id_number", "--peer", "127.0.0.1:1",
                   *tls_args(pki, "bank-a")])
    assert result.returncode == 2
    assert "line 3" in _one_line_error(result.stderr)


def test_missing_column_and_insecure_remote(tmp_path: Path, tables: Path) -> None:
    result = _run(["psi", "connect", "--input", str(tables / "bank_a.csv"), "--on", "nope", "--peer", "127.0.0.1:1",
                   "--insecure"])
    assert result.returncode == 2 and "nope" in _one_line_error(result.stderr)
    result = _run(["psi", "connect", "--input", str(tables / "bank_a.csv"), "--on", "id_number",
                   "--peer", "192.0.2.10:7766", "--insecure"])
    assert result.returncode == 2 and "loopback" in _one_line_error(result.stderr)


def test_exchange_through_a_shared_folder(tables: Path, tmp_path: Path, pki: Path) -> None:
    exchange = tmp_path / "exchange"
    out_a, out_b = tmp_path / "a.csv", tmp_path / "b.csv"
    common = ["--protocol", "ecdh", "--on", "email", "--reveal", "both", "--quiet", "--via-dir", str(exchange)]
    server = _start_server(["psi", "serve", "--input", str(tables / "bank_b.csv"), "--output", str(out_b), *common,
                            *tls_args(pki, "bank-b")])
    client = _run(["psi", "connect", "--input", str(tables / "bank_a.csv"), "--output", str(out_a), "--json", *common,
                   *tls_args(pki, "bank-a")])
    server.communicate(timeout=60)
    assert client.returncode == 0 and server.returncode == 0, client.stderr
    expected = set(_ids(tables / "bank_a.csv", "email")) & set(_ids(tables / "bank_b.csv", "email"))
    assert _ids(out_a, "email") == _ids(out_b, "email") and set(_ids(out_a, "email")) == expected
    assert not list((exchange / "client-out").glob("*.frame")) and not list((exchange / "server-out").glob("*.frame"))
    again = _run(["psi", "connect", "--input", str(tables / "bank_a.csv"), *common, *tls_args(pki, "bank-a")])
    assert again.returncode == 2 and "fresh folder" in _one_line_error(again.stderr)


@pytest.mark.parametrize(
    "content,expected",
    [
        (b"", "empty"),
        (b"id_number,name\n\xff\xfe1,a\n", "UTF-8"),
        (b"id_number,name\n1,a\n2,b\n1,c\n", "duplicate"),
    ],
    ids=["empty-file", "bad-encoding", "duplicate-keys"],
)
def test_bad_input_files_give_one_line_and_code_2(content: bytes, expected: str, tmp_path: Path, pki: Path) -> None:
    bad = tmp_path / "in.csv"
    bad.write_bytes(content)
    result = _run(["psi", "connect", "--input", str(bad), "--on", "id_number", "--peer", "127.0.0.1:9",
                   *tls_args(pki, "bank-a")])
    assert result.returncode == 2
    assert expected.lower() in _one_line_error(result.stderr).lower()


def test_port_in_use_is_a_transport_error(tables: Path, pki: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = _run(["psi", "serve", "--input", str(tables / "bank_b.csv"), "--on", "id_number",
                       "--listen", f"127.0.0.1:{port}", *tls_args(pki, "bank-b")])
    assert result.returncode == 3 and "address already in use" in _one_line_error(result.stderr)


def test_forever_server_names_outputs_per_session_and_logs_the_peer(tables: Path, pki: Path, tmp_path: Path) -> None:
    """Issue 11.7: '--output b-{peer}-{session}.csv' gives one file per session; each session names its peer."""
    port = free_port()
    template = str(tmp_path / "b-{peer}-{session}.csv")
    server = _start_server(["psi", "serve", "--input", str(tables / "bank_b.csv"), "--on", "id_number", "--forever",
                            "--reveal", "both", "--output", template, "--listen", f"127.0.0.1:{port}",
                            *tls_args(pki, "bank-b")])
    try:
        for _ in range(2):
            client = _run(["psi", "connect", "--input", str(tables / "bank_a.csv"), "--on", "id_number", "--reveal",
                           "both", "--peer", f"127.0.0.1:{port}", "--quiet", *tls_args(pki, "bank-a")])
            assert client.returncode == 0, client.stderr
    finally:
        server.terminate()
        s_out, s_err = server.communicate(timeout=60)
    assert server.returncode == 143, s_err
    expected = set(_ids(tables / "bank_a.csv")) & set(_ids(tables / "bank_b.csv"))
    for n in (1, 2):
        assert set(_ids(tmp_path / f"b-bank-a-{n}.csv")) == expected
    assert s_out.count("(bank-a)") == 2, s_out


@pytest.mark.parametrize("side", ["server", "client"])
def test_refusing_peer_tells_the_other_side_why(side: str, tables: Path, pki: Path) -> None:
    """Issue 11.5: the side that refuses (--max-peer-size) sends its reason; both print it, both exit 7.

    The client's 10,000 keys make it send its first large message before it reads the server's
    refusal: that send fails (the server hung up) and the reason must still be found and shown.
    """
    port = free_port()
    cap = ["--max-peer-size", "10"]
    sample = ROOT / "datasets" / "sample"
    server = _start_server(["psi", "serve", "--input", str(sample / "bank_b.csv"), "--on", "id_number", "--quiet",
                            "--listen", f"127.0.0.1:{port}", *tls_args(pki, "bank-b"), *(cap if side == "server" else [])])
    client = _run(["psi", "connect", "--input", str(sample / "bank_a.csv"), "--on", "id_number", "--quiet",
                   "--peer", f"127.0.0.1:{port}", *tls_args(pki, "bank-a"), *(cap if side == "client" else [])])
    _s_out, s_err = server.communicate(timeout=60)
    assert client.returncode == 7 and "max-peer-size" in _one_line_error(client.stderr), client.stderr
    assert server.returncode == 7 and "max-peer-size" in _one_line_error(s_err), s_err


def test_wrong_peer_name_is_told_to_the_peer(tables: Path, pki: Path) -> None:
    """Issue 11.5: a client that refuses the server's name tells it; the server logs the reason, not 'peer closed'."""
    port = free_port()
    server = _start_server(["psi", "serve", "--input", str(tables / "bank_b.csv"), "--on", "id_number", "--quiet",
                            "--listen", f"127.0.0.1:{port}", "--timeout", "30", *tls_args(pki, "bank-b")])
    try:
        client = _run(["psi", "connect", "--input", str(tables / "bank_a.csv"), "--on", "id_number", "--quiet",
                       "--peer", f"127.0.0.1:{port}", *tls_args(pki, "bank-a", peer="bank-c")])
        assert client.returncode == 6 and "bank-c" in _one_line_error(client.stderr)
        time.sleep(1.0)
    finally:
        server.terminate()
        _s_out, s_err = server.communicate(timeout=60)
    refused = [line for line in s_err.splitlines() if "refused a connection" in line]
    # The refused side learns that it was refused, not whom the client expected instead.
    assert len(refused) == 1 and "refused our certificate" in refused[0] and "closed" not in refused[0], s_err
    assert "bank-c" not in s_err
