"""``psiq ot``: fetch one record from a peer's list without the peer learning which.

``send`` serves a file of records (one per line) to one receiver; ``receive`` asks for record
``--index`` and prints it. Every record travels padded to the longest one (with a length
prefix), so the receiver learns nothing about the lengths of the others and the sender learns
nothing about the index (1-out-of-N OT, :mod:`psi.ot.kk13`). A receiver that deviates from the
protocol to open more than its record fails the OOS17 check before any record leaves: the
sender stops with exit 4.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import click

from psi.errors import InputError, MalformedMessage

from .common import emit_json, handles_errors, info, make_progress, output_options, tls_options

__all__ = ["ot_group", "read_records", "pad_records", "unpad_record"]

_LENGTH = struct.Struct(">I")


def read_records(path: Path) -> list[bytes]:
    """Lines of ``path`` as bytes (``\\n`` or ``\\r\\n`` endings; a final newline is optional)."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise InputError(f"cannot read {path}: {err.strerror}") from None
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    records = [line[:-1] if line.endswith(b"\r") else line for line in lines]
    if not records:
        raise InputError(f"{path} holds no records")
    return records


def pad_records(records: list[bytes]) -> list[bytes]:
    """Length prefix + record + zero padding, all to one width."""
    width = max(len(r) for r in records)
    return [_LENGTH.pack(len(r)) + r + bytes(width - len(r)) for r in records]


def unpad_record(padded: bytes) -> bytes:
    (length,) = _LENGTH.unpack_from(padded)
    if length > len(padded) - _LENGTH.size:
        raise MalformedMessage("record length prefix exceeds the record")
    return padded[_LENGTH.size : _LENGTH.size + length]


_SUITE_OPTION = click.option(
    "--suite", type=click.Choice(["standard", "gm"]), default="standard", show_default=True,
    help="Crypto suite both sides must agree on: 'gm' = SM3, SM4 and an SM2 base OT (docs/GM.md).")


@click.group("ot")
def ot_group() -> None:
    """Oblivious transfer: the receiver gets one record, the sender does not learn which."""


@ot_group.command("send")
@handles_errors
@click.option("--records", "records_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="File with one record per line.")
@click.option("--listen", default="127.0.0.1:7768", show_default=True, help="HOST:PORT to listen on.")
@click.option("--timeout", type=click.FloatRange(1), default=None,
              help="Seconds to wait for the receiver and for each of its messages (default: no limit).")
@_SUITE_OPTION
@tls_options
@output_options
def send_command(records_path: Path, listen: str, tls: object, as_json: bool, quiet: bool,
                 timeout: float | None = None, suite: str = "standard") -> None:
    """Serve the records of the --records file (one per line) to one receiver."""
    from psi.driver import run_party
    from psi.ot import OneOfNSender
    from psi.transport.tcp import Listener

    records = read_records(records_path)
    sender = OneOfNSender(pad_records(records), suite=suite)
    with Listener(listen, tls) as listener:  # type: ignore[arg-type]
        host, port = listener.address
        info(f"listening {host}:{port}", quiet)
        with listener.accept(timeout=timeout) as channel:
            bar = make_progress(quiet, "ot send")
            try:
                stats = run_party(sender, channel, on_progress=bar, timeout=timeout)
            finally:
                bar.close()
    if as_json:
        emit_json({"records": len(records), "suite": suite, **stats.as_dict()})
    else:
        info(f"served {len(records)} records ({stats.bytes_sent} bytes sent, {stats.seconds:.2f} s)", quiet)


@ot_group.command("receive")
@handles_errors
@click.option("--index", "index", required=True, type=click.IntRange(min=0), help="0-based record number to fetch.")
@click.option("--peer", required=True, help="HOST:PORT of the sender.")
@click.option("--timeout", type=click.FloatRange(1), default=None,
              help="Seconds to wait for each message from the sender (default: no limit).")
@_SUITE_OPTION
@tls_options
@output_options
def receive_command(index: int, peer: str, tls: object, as_json: bool, quiet: bool,
                    timeout: float | None = None, suite: str = "standard") -> None:
    """Fetch record INDEX from the sender and print it on stdout."""
    from psi.driver import run_party
    from psi.ot import OneOfNReceiver
    from psi.transport.tcp import connect

    receiver = OneOfNReceiver([index], suite=suite)
    with connect(peer, tls) as channel:  # type: ignore[arg-type]
        bar = make_progress(quiet, "ot receive")
        try:
            stats = run_party(receiver, channel, on_progress=bar, timeout=timeout)
        finally:
            bar.close()
    record = unpad_record(receiver.result()[0].tobytes())
    if as_json:
        emit_json({"index": index, "record": record.decode("utf-8", "replace"), "record_bytes": len(record),
                   "records_offered": receiver.message_count, "suite": suite, **stats.as_dict()})
    else:
        sys.stdout.buffer.write(record + b"\n")
        sys.stdout.flush()
