"""``psiq ot send`` / ``psiq ot receive`` in two processes over TLS."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from cli.ot import pad_records, read_records, unpad_record

from .conftest import free_port, psiq_cmd, subprocess_env, tls_args

RECORDS = ["alice,100", "", "bob,2500000 — über", "carol,7"]


def _records_file(tmp_path: Path) -> Path:
    path = tmp_path / "records.txt"
    path.write_bytes(("\r\n".join(RECORDS) + "\n").encode("utf-8"))
    return path


def _exchange(tmp_path: Path, pki: Path, index: int, extra: list[str] = ()) -> tuple[subprocess.CompletedProcess, tuple]:
    port = free_port()
    sender = subprocess.Popen(
        psiq_cmd() + ["ot", "send", "--records", str(_records_file(tmp_path)), "--listen", f"127.0.0.1:{port}",
                      "--peer-name", "bank-a", "--quiet", *tls_args(pki, "bank-b")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env())
    receiver = subprocess.run(
        psiq_cmd() + ["ot", "receive", "--index", str(index), "--peer", f"127.0.0.1:{port}", "--peer-name", "bank-b",
                      *extra, *tls_args(pki, "bank-a")],
        capture_output=True, env=subprocess_env(), timeout=60)
    return receiver, (sender.communicate(timeout=60), sender.returncode)


def test_receiver_gets_exactly_its_record(tmp_path: Path, pki: Path) -> None:
    receiver, ((_out, s_err), s_code) = _exchange(tmp_path, pki, 2)
    assert receiver.returncode == 0, receiver.stderr
    assert s_code == 0, s_err
    assert receiver.stdout == RECORDS[2].encode("utf-8") + b"\n"


def test_out_of_range_index_is_a_clear_error(tmp_path: Path, pki: Path) -> None:
    receiver, ((_out, s_err), s_code) = _exchange(tmp_path, pki, 4, ["--json"])
    assert receiver.returncode == 2
    stderr = receiver.stderr.decode()
    assert "Traceback" not in stderr and "index 4 is out of range" in stderr and "4 messages" in stderr
    assert receiver.stdout == b""
    # the sender is told the receiver stopped, but never which index it asked for
    assert s_code != 0 and "local error" in s_err and "index" not in s_err


def test_record_padding_round_trip(tmp_path: Path) -> None:
    records = read_records(_records_file(tmp_path))
    assert records == [r.encode() for r in RECORDS]
    padded = pad_records(records)
    assert len({len(p) for p in padded}) == 1
    assert [unpad_record(p) for p in padded] == records


def test_ot_send_times_out_and_is_quiet_with_q(pki) -> None:
    """Issue 11.12: 'ot send --timeout' stops waiting for a receiver; -q prints no 'listening' line."""
    import subprocess
    import time

    from .conftest import free_port, psiq_cmd, subprocess_env, tls_args

    records = pki / "records.txt"
    records.write_text("a\nb\n", encoding="utf-8")
    started = time.monotonic()
    done = subprocess.run(psiq_cmd() + ["ot", "send", "--records", str(records), "--listen", f"127.0.0.1:{free_port()}",
                                        "--timeout", "1", "-q", *tls_args(pki, "bank-b")],
                          capture_output=True, text=True, env=subprocess_env(), timeout=120)
    assert done.returncode == 3 and "timeout" in done.stderr
    assert "listening" not in done.stderr
    assert time.monotonic() - started < 60
