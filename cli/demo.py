"""``psiq demo``: both parties on this machine, over loopback TLS, on the shipped sample data."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from psi import api
from psi.transport.tls import TlsConfig, create_test_pki

from .common import emit_json, handles_errors, make_progress

__all__ = ["demo_command", "sample_dir"]


def sample_dir() -> Path:
    """Where the shipped sample tables live (installed with the ``datasets`` package)."""
    import psiq_datasets

    return Path(psiq_datasets.__file__).resolve().parent / "sample"


@click.command("demo")
@handles_errors
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("psiq-demo"),
              show_default=True, help="Folder for the trial certificates and the two output files.")
@click.option("--protocol", type=click.Choice(["ecdh", "rsa", "kkrt", "rr22"]), default="ecdh", show_default=True)
@click.option("--on", default="id_number", show_default=True, help="Key column(s) of the sample tables.")
@click.option("--workers", type=click.IntRange(1, 512), default=None, help="Worker processes (default: all cores).")
@click.option("--json", "as_json", is_flag=True, help="Print both parties' summaries as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def demo_command(out_dir: Path, protocol: str, on: str, workers: int | None, as_json: bool, quiet: bool) -> None:
    """Align the two sample banks' customers (bank A connects, bank B serves) over mutual TLS.

    Both sides learn the intersection and write their own rows of it in the same order.
    """
    samples = sample_dir()
    bank_a, bank_b = samples / "bank_a.csv", samples / "bank_b.csv"
    pki = out_dir / "certs"
    if not (pki / "bank-a.pem").exists() or not (pki / "bank-b.pem").exists():
        create_test_pki(pki, ["bank-a", "bank-b"])
    tls_a = TlsConfig(pki / "bank-a.pem", pki / "bank-a.key", pki / "ca.pem", peer_name="bank-b")
    tls_b = TlsConfig(pki / "bank-b.pem", pki / "bank-b.key", pki / "ca.pem", peer_name="bank-a")
    out_a, out_b = out_dir / "bank_a_aligned.csv", out_dir / "bank_b_aligned.csv"
    options = api.PsiOptions(protocol=protocol, reveal="both", workers=workers)
    columns = [c.strip() for c in on.split(",") if c.strip()]
    bar = make_progress(quiet, f"demo {protocol}")
    started = time.perf_counter()
    try:
        client, server = api.intersect_files(bank_a, bank_b, on=columns, client_output=out_a, server_output=out_b,
                                             options=options, tls=(tls_a, tls_b), on_progress=bar)
    finally:
        bar.close()
    wall = time.perf_counter() - started
    if as_json:
        emit_json({"wall_seconds": round(wall, 3), "client": client.as_dict(), "server": server.as_dict()})
        return
    c: dict[str, Any] = client.as_dict()
    s: dict[str, Any] = server.as_dict()
    click.echo(f"psiq demo: {protocol.upper()} PSI over mutual TLS 1.3 on 127.0.0.1, both parties in this process")
    click.echo(f"  bank A (client, {c['peer_name']} authenticated as peer): {c['set_size']:,} customers from {bank_a}")
    click.echo(f"  bank B (server, {s['peer_name']} authenticated as peer): {s['set_size']:,} customers from {bank_b}")
    click.echo(f"  intersection size: {c['intersection_size']:,}")
    click.echo(f"  bank A rows -> {out_a} ({c['output_rows']:,} rows)")
    click.echo(f"  bank B rows -> {out_b} ({s['output_rows']:,} rows, same order)")
    click.echo(f"  certificates and outputs are in {out_dir.resolve()} (choose the folder with --out)")
    click.echo(f"  time: {wall:.2f} s wall; on the wire: A->B {c['bytes_sent']:,} B, B->A {c['bytes_received']:,} B")
    phases = ", ".join(f"{k} {v:.2f}s" for k, v in c["phases"].items())
    click.echo(f"  client phases: {phases}")
