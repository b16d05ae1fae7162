"""``psiq certs``: a small CA and per-party certificates for trials and tests."""

from __future__ import annotations

from pathlib import Path

import click

from psi.transport.tls import create_test_pki

from .common import emit_json, handles_errors, info

__all__ = ["certs_group"]


@click.group("certs")
def certs_group() -> None:
    """Create trial TLS certificates (real deployments use their own PKI)."""


@certs_group.command("init")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--party", "parties", multiple=True, required=True,
              help="Party name (repeatable); becomes the certificate CN and its only DNS SAN (what --peer-name matches).")
@click.option("--days", default=365, show_default=True, help="Validity in days.")
@click.option("--json", "as_json", is_flag=True, help="Print the written paths as JSON.")
@click.option("--force", is_flag=True, help="Replace the key and certificate of a party that already has them.")
@handles_errors
def init(directory: Path, parties: tuple[str, ...], days: int, as_json: bool, force: bool = False) -> None:
    """Create DIRECTORY/ca.pem (reused if present) and NAME.pem/NAME.key for each --party.

    The peers of a party then name it with --peer-name NAME.
    """
    from psi.errors import UsageError

    existing = [p for p in parties if (directory / f"{p}.key").exists() or (directory / f"{p}.pem").exists()]
    if existing and not force:
        raise UsageError(f"{directory} already has a key for {', '.join(existing)}: pass --force to replace it")
    written = create_test_pki(directory, list(parties), days=days)
    if as_json:
        emit_json({k: str(v) for k, v in written.items()})
    else:
        for name, path in written.items():
            info(f"wrote {path}" + ("" if name == "ca" else f" and {path.with_suffix('.key')}"))
