"""``psiq interop``: sessions with other platforms' implementations of published specs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from psi.errors import UsageError
from psi.normalize import Normalization

from .common import emit_json, handles_errors, info, output_options, tls_options

__all__ = ["interop_group"]

SUITE_CHOICES = ("x25519", "sm2", "sm2-sm3", "sm2-sm3-increment")


@click.group("interop")
def interop_group() -> None:
    """Interoperate with other privacy-computing platforms (needs psiq[interop])."""


@interop_group.command("ppca-ecdh")
@click.option("--rank", type=click.IntRange(0, 1), required=True,
              help="This party's rank: 0 answers the handshake, 1 sends it.")
@click.option("--listen", required=True, help="HOST:PORT this party's ReceiverService listens on.")
@click.option("--peer", required=True, help="HOST:PORT of the peer's ReceiverService.")
@click.option("--input", "input_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="CSV/TSV/Parquet file with this party's records.")
@click.option("--on", required=True, help="Key column(s); a composite key is joined with ',' as SecretFlow does.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write this party's rows of the intersection here (only on a rank that gets the result).")
@click.option("--suite", "suites", type=click.Choice(SUITE_CHOICES), multiple=True,
              help="EC suite (repeatable; rank 1 proposes them in this order, rank 0 accepts only these). "
                   "Default: rank 1 proposes x25519; rank 0 accepts all. Without a handshake: exactly one.")
@click.option("--result-to", type=click.Choice(["all", "0", "1"]), default="all", show_default=True,
              help="Which rank learns the intersection; both sides must agree.")
@click.option("--no-handshake", is_flag=True,
              help="Skip the PPCA handshake (SecretFlow 0.9.2 bucket_psi(ic_mode=True) sends none); "
                   "both sides then rely on --suite and --result-to.")
@click.option("--link-id", default="root", show_default=True, help="Link/session id (SecretFlow's link 'id').")
@click.option("--link-seq-ids", is_flag=True,
              help="Suffix psiq's own keys with yacl's message sequence ids. Received keys are read "
                   "(and ACKed) in either form; SecretFlow 0.9.2 reads both.")
@click.option("--timeout", type=click.FloatRange(1, 86400), default=60.0, show_default=True,
              help="Seconds to wait for the peer to connect or send its next message.")
@click.option("--format", "input_format", type=click.Choice(["csv", "tsv", "parquet"]), default=None)
@click.option("--normalize", default="none", show_default=True,
              help="Key normalisation (psiq's names); 'none' keeps the bytes SecretFlow would hash.")
@click.option("--dedup", type=click.Choice(["error", "first"]), default="error", show_default=True)
@click.option("--workers", type=click.IntRange(1, 512), default=None, help="Worker processes (default: all cores).")
@click.option("--max-peer-size", type=click.IntRange(0), default=100_000_000, show_default=True,
              help="Refuse a peer with more items than this.")
@tls_options
@output_options
@handles_errors
def ppca_ecdh(rank: int, listen: str, peer: str, input_path: Path, on: str, output: Path | None,
              suites: tuple[str, ...], result_to: str, no_handshake: bool, link_id: str, link_seq_ids: bool,
              timeout: float, input_format: str | None, normalize: str, dedup: str, workers: int | None,
              max_peer_size: int, tls: Any, as_json: bool, quiet: bool) -> None:
    """One party of a PPCA ECDH-PSI session (PPCA 9—2023) with SecretFlow or another platform.

    Speaks the spec's gRPC link (org.interconnection.link.ReceiverService/Push), its handshake
    and its EcdhPsiCipherBatch messages. See docs/INTEROP.md.
    """
    try:
        from psi.interop.ppca.link import GrpcLink, LinkTls
        from psi.interop.ppca.party import PpcaConfig, PpcaEcdhParty
        from psi.interop.ppca.session import run_session
        from psi.interop.ppca.suite import SUITE_NAMES, suite_by_name
    except ModuleNotFoundError as err:
        raise UsageError(f"psiq interop needs the interop extra (pip install 'psiq[interop]'): {err.name} is missing") from None
    from psi.parallel import Executor
    from psi.records import read_keys, write_rows

    target = -1 if result_to == "all" else int(result_to)
    if output is not None and target not in (-1, rank):
        raise UsageError(f"--output: rank {rank} gets no result with --result-to {result_to}")
    if no_handshake and len(suites) != 1:
        raise UsageError("--no-handshake needs exactly one --suite (nothing is negotiated)")
    if not suites:
        suites = ("x25519",) if rank == 1 else SUITE_NAMES
    started = time.monotonic()
    table = read_keys(input_path, [c.strip() for c in on.split(",")], normalization=Normalization.parse(normalize),
                      dedup=dedup, fmt=input_format)
    items = [_secretflow_item(key, len(table.on)) for key in table.keys]
    config = PpcaConfig(rank=rank, suites=tuple(suite_by_name(s) for s in suites), result_to=target,
                        handshake=not no_handshake, max_peer_items=max_peer_size)
    link_tls = None if tls is None else LinkTls(tls.cert, tls.key, tls.ca, tls.peer_name)
    info(f"ppca-ecdh rank {rank}: {len(items)} items from {input_path.name}; listening on {listen}, peer {peer}", quiet)
    with Executor(workers) as executor:
        party = PpcaEcdhParty(config, items, executor)
        with GrpcLink(rank, listen, peer, link_id=link_id, seq_ids=link_seq_ids, timeout=timeout,
                      tls=link_tls) as link:
            outcome = run_session(party, link)
    written = None
    if outcome.indices is not None and output is not None:
        rows = [int(r) for k in outcome.indices for r in table.rows_of(k)]
        written = write_rows(input_path, rows, output, fmt=table.fmt, expect_rows=table.rows_read)
    summary = {
        "rank": rank,
        "suite": outcome.suite,
        "own_items": len(items),
        "peer_items": outcome.peer_items,
        "intersection": None if outcome.indices is None else len(outcome.indices),
        "truncation_bits": outcome.truncation_bits,
        "rows_written": written,
        "output": None if written is None else str(output),
        "seconds": round(time.monotonic() - started, 3),
    }
    if as_json:
        emit_json(summary)
    else:
        got = "no result on this rank" if outcome.indices is None else f"{len(outcome.indices)} in the intersection"
        info(f"ppca-ecdh done ({outcome.suite}): {got}; peer has {outcome.peer_items} items", quiet)


def _secretflow_item(key: bytes, fields: int) -> bytes:
    """psiq's key encoding -> the bytes SecretFlow hashes (fields joined with ',')."""
    if fields == 1:
        return key
    parts, pos = [], 0
    while pos < len(key):
        size = int.from_bytes(key[pos : pos + 4], "big")
        parts.append(key[pos + 4 : pos + 4 + size])
        pos += 4 + size
    return b",".join(parts)
