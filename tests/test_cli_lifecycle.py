"""Process lifecycle with real signals against real ``python -m cli`` processes.

A stopped ``psiq psi serve`` must leave no worker process behind (none may hold the listening
socket or the port), whatever signal stopped it; SIGTERM and SIGHUP end a command the way
Ctrl-C does: one line on stderr, exit 128 + signal number, no temporary output file left.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import ROOT, free_port, psiq_cmd, subprocess_env, tls_args

pytestmark = pytest.mark.e2e

SAMPLE = ROOT / "datasets" / "sample"


def _children(pid: int) -> set[int]:
    """Every live descendant of ``pid`` (read from /proc)."""
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        parents, frontier = frontier, set()
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) in parents and fields[0] != "Z" and int(entry) not in found:
                found.add(int(entry))
                frontier.add(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_for_line(proc: subprocess.Popen[bytes], needle: bytes, timeout: float = 60.0) -> bytes:
    """Read proc's stderr until a line contains ``needle``; return what was read."""
    assert proc.stderr is not None
    seen = b""
    deadline = time.monotonic() + timeout
    fd = proc.stderr.fileno()
    while needle not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"no {needle!r} within {timeout} s: {seen!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 65536)
            assert chunk, f"process ended before {needle!r}: {seen!r}"
            seen += chunk
    return seen


def _serve(port: int, *extra: str, pki: Path, workers: str = "2") -> subprocess.Popen[bytes]:
    env = subprocess_env()
    env["PSIQ_WORKERS"] = workers
    return subprocess.Popen(
        psiq_cmd() + ["psi", "serve", "--protocol", "ecdh", "--input", str(SAMPLE / "bank_b.csv"), "--on", "id_number",
                      "--listen", f"127.0.0.1:{port}", *tls_args(pki, "bank-b"), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


def _assert_gone(pids: set[int], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)
    assert not [p for p in pids if _alive(p)], "worker processes survived their parent"


def _bind_at_once(port: int) -> None:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))  # raises "address already in use" if a worker kept the socket
        s.listen(1)


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129), (signal.SIGKILL, -9)],
                         ids=["SIGTERM", "SIGHUP", "SIGKILL"])
def test_stopped_server_leaves_no_worker_and_frees_the_port(sig: int, code: int, pki: Path) -> None:
    port = free_port()
    server = _serve(port, pki=pki)
    try:
        _wait_for_line(server, b"listening on")
        workers = _children(server.pid)
        deadline = time.monotonic() + 10
        while len(workers) < 2 and time.monotonic() < deadline:  # the pool starts in the background
            time.sleep(0.05)
            workers = _children(server.pid)
        assert len(workers) >= 2, "expected the worker pool to be running while listening"
        server.send_signal(sig)
        server.wait(timeout=30)
        _assert_gone(workers)  # before reading stderr: a surviving worker would hold the pipe open
        _out, err = server.communicate(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        for pid in workers if "workers" in locals() else ():
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert server.returncode == code, err
    _bind_at_once(port)
    if sig != signal.SIGKILL:
        text = err.decode()
        assert "Traceback" not in text, text
        lines = [ln for ln in text.splitlines() if ln.startswith("psiq:") and "warning" not in ln]
        assert lines == [f"psiq: stopped by {signal.Signals(sig).name}"], text


def test_sigterm_mid_session_removes_temp_output_and_workers(pki: Path, tmp_path: Path) -> None:
    """A client stopped by SIGTERM mid-session: exit 143, no output or temp file, no worker left."""
    port = free_port()
    server = _serve(port, "--quiet", pki=pki, workers="1")
    env = subprocess_env()
    env["PSIQ_WORKERS"] = "2"
    out = tmp_path / "a.csv"
    client = subprocess.Popen(
        psiq_cmd() + ["psi", "connect", "--protocol", "ecdh", "--input", str(SAMPLE / "bank_a.csv"), "--on",
                      "id_number", "--peer", f"127.0.0.1:{port}", "--output", str(out), *tls_args(pki, "bank-a")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 30
        workers: set[int] = set()
        while len(workers) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
            workers = _children(client.pid)
        assert len(workers) >= 2, "expected the client's worker pool to be running"
        client.send_signal(signal.SIGTERM)
        client.wait(timeout=30)
        _assert_gone(workers)
        _out, err = client.communicate(timeout=30)
    finally:
        for proc in (client, server):
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        for pid in workers if "workers" in locals() else ():
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert client.returncode == 143, err
    assert "psiq: stopped by SIGTERM" in err.decode() and "Traceback" not in err.decode()
    assert not list(tmp_path.iterdir()), "no output and no temp file after a stop"
