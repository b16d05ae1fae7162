"""Bucketed sessions with real processes and real sockets: kill -9 and --resume, a socket
closed under a running session, and the CLI's refusals."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from psi import api
from psi.errors import PsiqError
from psi.scale import runner
from psi.scale.session import ScaleOptions
from tests.conftest import free_port, psiq_cmd, subprocess_env, tls_args, tls_for


def _inputs(tmp: Path, n: int = 6000) -> tuple[Path, Path]:
    rng = random.Random(3)
    common = [f"c{i:06d}" for i in range(n // 2)]
    a = common + [f"a{i:06d}" for i in range(n // 2)]
    b = common + [f"b{i:06d}" for i in range(n // 3)]
    rng.shuffle(a)
    rng.shuffle(b)
    pa, pb = tmp / "a.csv", tmp / "b.csv"
    pa.write_text("id,x\n" + "".join(f"{k},{i}\n" for i, k in enumerate(a)))
    pb.write_text("id,y\n" + "".join(f"{k},{i}\n" for i, k in enumerate(b)))
    return pa, pb


def _start(pki: Path, tmp: Path, tag: str, port: int, a: Path, b: Path, *extra: str,
           server_extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen, subprocess.Popen]:
    common = ["--protocol", "kkrt", "--reveal", "both", "--join", "full", "--on", "id", "--buckets", "8",
              "--workers", "1", "--json", *extra]
    server = subprocess.Popen(
        [*psiq_cmd(), "psi", "serve", "--listen", f"127.0.0.1:{port}", "--input", str(b), "--output",
         str(tmp / f"s_{tag}.csv"), "--work-dir", str(tmp / "ws"), *common, *server_extra, *tls_args(pki, "bank-b")],
        env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    client = subprocess.Popen(
        [*psiq_cmd(), "psi", "connect", "--peer", f"127.0.0.1:{port}", "--input", str(a), "--output",
         str(tmp / f"c_{tag}.csv"), "--work-dir", str(tmp / "wc"), *common, *tls_args(pki, "bank-a")],
        env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return server, client


def _finished(work: Path) -> int:
    try:
        return len(json.loads((work / "manifest.json").read_text())["finished"])
    except (OSError, ValueError, KeyError):
        return 0


def test_kill_client_then_resume_both_is_byte_identical(pki, tmp_path):
    a, b = _inputs(tmp_path)
    ref = tmp_path / "ref"
    ref.mkdir()
    server, client = _start(pki, ref, "ref", free_port(), a, b)
    assert client.wait(240) == 0, client.stderr.read()
    assert server.wait(60) == 0, server.stderr.read()

    port = free_port()
    server, client = _start(pki, tmp_path, "x", port, a, b, server_extra=("--reconnect-timeout", "0"))
    deadline = time.monotonic() + 240
    while _finished(tmp_path / "wc") < 3 and time.monotonic() < deadline and client.poll() is None:
        time.sleep(0.05)
    killed_after = _finished(tmp_path / "wc")
    client.send_signal(signal.SIGKILL)
    client.wait(30)
    assert 3 <= killed_after < 8
    assert server.wait(60) == 3  # connection lost, no reconnect allowed: exit 3
    assert not (tmp_path / "c_x.csv").exists() and not (tmp_path / "s_x.csv").exists()

    server, client = _start(pki, tmp_path, "x", port, a, b, "--resume")
    out, err = client.communicate(timeout=240)
    assert client.returncode == 0, err
    assert server.wait(60) == 0, server.stderr.read()
    report = json.loads(out)
    start = report["scale"]["started_at_bucket"][0]
    assert killed_after - 1 <= start <= killed_after  # extra work: at most one bucket
    assert (tmp_path / "c_x.csv").read_bytes() == (ref / "c_ref.csv").read_bytes()
    assert (tmp_path / "s_x.csv").read_bytes() == (ref / "s_ref.csv").read_bytes()


def test_resume_with_changed_input_exits_2_naming_it(pki, tmp_path):
    a, b = _inputs(tmp_path, 600)
    (tmp_path / "wc").mkdir()
    port = free_port()
    server, client = _start(pki, tmp_path, "x", port, a, b, server_extra=("--reconnect-timeout", "0"))
    while _finished(tmp_path / "wc") < 1 and client.poll() is None:
        time.sleep(0.02)
    client.send_signal(signal.SIGKILL)
    client.wait(30)
    server.wait(60)
    if not (tmp_path / "wc" / "manifest.json").exists():
        pytest.skip("the client finished before it could be killed")
    a.write_text(a.read_text() + "zzz,1\n")
    proc = subprocess.run(
        [*psiq_cmd(), "psi", "connect", "--peer", f"127.0.0.1:{port}", "--input", str(a), "--on", "id",
         "--protocol", "kkrt", "--reveal", "both", "--join", "full", "--buckets", "8", "--work-dir",
         str(tmp_path / "wc"), "--resume", *tls_args(pki, "bank-a")],
        env=subprocess_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "a.csv differs from the one the interrupted run read" in proc.stderr


def test_socket_closed_under_the_session_heals(pki, tmp_path, monkeypatch):
    a, b = _inputs(tmp_path, 3000)
    opts = api.PsiOptions(protocol="ecdh", reveal="both", join="left", workers=1)
    channels: list[Any] = []
    real_connect = runner.tcp_connect

    def recording_connect(*args: Any, **kw: Any) -> Any:
        channel = real_connect(*args, **kw)
        channels.append(channel)
        return channel

    monkeypatch.setattr(runner, "tcp_connect", recording_connect)
    port = free_port()
    box: dict[str, Any] = {}

    def serve() -> None:
        try:
            box["s"] = runner.serve_bucketed(b, on=["id"], listen=f"127.0.0.1:{port}", tls=tls_for(pki, "bank-b"),
                                             options=opts, scale=ScaleOptions(tmp_path / "ws", 6, reconnect_timeout=60),
                                             output=tmp_path / "s.csv")
        except PsiqError as err:
            box["e"] = err

    def saboteur() -> None:  # close the client's socket once two buckets are done
        while _finished(tmp_path / "wc") < 2 and "c" not in box:
            time.sleep(0.01)
        if channels:
            # the TCP socket under the TLS channel, as a network drop would (SSLSocket.shutdown
            # would also drop the TLS state and make later reads see raw records)
            socket.socket.shutdown(channels[0]._sock, socket.SHUT_RDWR)

    threads = [threading.Thread(target=serve), threading.Thread(target=saboteur)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    summary = runner.connect_bucketed(a, on=["id"], peer=f"127.0.0.1:{port}", tls=tls_for(pki, "bank-a"), options=opts,
                                      scale=ScaleOptions(tmp_path / "wc", 6, reconnect_timeout=60),
                                      output=tmp_path / "c.csv")
    box["c"] = summary
    for t in threads:
        t.join(60)
    assert "e" not in box, box.get("e")
    assert summary.scale["reconnects"] >= 1 and len(channels) >= 2
    assert box["s"].scale["reconnects"] >= 1
    ref_c, ref_s = tmp_path / "rc.csv", tmp_path / "rs.csv"
    api.intersect_files(a, b, on=["id"], client_output=ref_c, server_output=ref_s, options=opts)
    got = sorted(zip((tmp_path / "c.csv").read_text().splitlines(), (tmp_path / "s.csv").read_text().splitlines()))
    want = sorted(zip(ref_c.read_text().splitlines(), ref_s.read_text().splitlines()))
    assert got == want


def test_cli_refuses_buckets_without_work_dir(tmp_path):
    a, _b = _inputs(tmp_path, 20)
    proc = subprocess.run([*psiq_cmd(), "psi", "connect", "--peer", "127.0.0.1:1", "--input", str(a), "--on", "id",
                           "--buckets", "4", "--insecure"], env=subprocess_env(), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and "--buckets and --work-dir go together" in proc.stderr


def test_buckets_via_folder_equal_the_connection_run(pki, tmp_path):
    """--via-dir with --buckets: the same bucketed session through a signed, encrypted folder;
    the outputs are byte-identical to a bucketed run over a TLS connection (the order does not
    depend on the session's split)."""
    a, b = _inputs(tmp_path, 1500)
    opts = api.PsiOptions(protocol="ecdh", reveal="both", join="full", workers=1)
    box: dict[str, Any] = {}

    def party(name: str, fn: Any) -> threading.Thread:
        def run() -> None:
            try:
                box[name] = fn()
            except PsiqError as err:
                box[name + "_error"] = err
        t = threading.Thread(target=run)
        t.start()
        return t

    folder = tmp_path / "exchange"
    folder.mkdir()
    threads = [
        party("s", lambda: runner.bucketed_via_folder("server", b, on=["id"], directory=folder, tls=tls_for(pki, "bank-b"),
                                                      options=opts, scale=ScaleOptions(tmp_path / "ws", 3),
                                                      output=tmp_path / "s_dir.csv")),
        party("c", lambda: runner.bucketed_via_folder("client", a, on=["id"], directory=folder, tls=tls_for(pki, "bank-a"),
                                                      options=opts, scale=ScaleOptions(tmp_path / "wc", 3),
                                                      output=tmp_path / "c_dir.csv")),
    ]
    for t in threads:
        t.join(180)
    assert "s" in box and "c" in box, box
    port = free_port()
    threads = [party("s2", lambda: runner.serve_bucketed(b, on=["id"], listen=f"127.0.0.1:{port}", tls=tls_for(pki, "bank-b"),
                                                         options=opts, scale=ScaleOptions(tmp_path / "ws2", 3),
                                                         output=tmp_path / "s_tcp.csv"))]
    time.sleep(0.3)
    runner.connect_bucketed(a, on=["id"], peer=f"127.0.0.1:{port}", tls=tls_for(pki, "bank-a"), options=opts,
                            scale=ScaleOptions(tmp_path / "wc2", 3), output=tmp_path / "c_tcp.csv")
    threads[0].join(60)
    assert (tmp_path / "c_dir.csv").read_bytes() == (tmp_path / "c_tcp.csv").read_bytes()
    assert (tmp_path / "s_dir.csv").read_bytes() == (tmp_path / "s_tcp.csv").read_bytes()
    assert box["c"].scale["buckets"] == 3 and box["c"].intersection_size == 750


@pytest.mark.parametrize("extra,message", [
    (["--forever"], "drop --forever"),
    (["--protocol", "ecdh", "--prepared", "p.bin", "--server-key", "k.pem"], "precomputed for the whole set"),
    (["--protocol", "ecdh", "--server-key", "k.pem"], "precomputed for the whole set"),
    (["--protocol", "ecdh", "--prepared", "p.bin"], "precomputed for the whole set"),
    (["--protocol", "ecdh", "--cache-dir", "cache"], "precomputed for the whole set"),
])
def test_cli_refuses_buckets_with_forever_and_prepared(tmp_path, extra, message):
    a, _b = _inputs(tmp_path, 20)
    proc = subprocess.run([*psiq_cmd(), "psi", "serve", "--listen", "127.0.0.1:0", "--input", str(a), "--on", "id",
                           "--buckets", "4", "--work-dir", str(tmp_path / "w"), "--insecure", *extra],
                          env=subprocess_env(), capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
