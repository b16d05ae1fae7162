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


@certs_group.command("sm2-keygen")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--party", required=True, help="Party name: writes NAME.sm2.key (mode 0600) and NAME.sm2.pub.")
@click.option("--force", is_flag=True, help="Replace an existing key pair.")
@click.option("--json", "as_json", is_flag=True, help="Print the written paths and the key fingerprint as JSON.")
@handles_errors
def sm2_keygen(directory: Path, party: str, force: bool, as_json: bool) -> None:
    """Create an SM2 key pair for message signing (--sm2-key / the peer's --sm2-peer-key).

    Give NAME.sm2.pub to the peer; keep NAME.sm2.key. Uses the system's OpenSSL 3.
    """
    from psi.atomic import atomic_write_bytes
    from psi.crypto.libcrypto import Sm2PrivateKey
    from psi.errors import UsageError

    key_path, pub_path = directory / f"{party}.sm2.key", directory / f"{party}.sm2.pub"
    if not party or "/" in party or party.startswith("."):
        raise UsageError(f"bad party name {party!r}")
    if (key_path.exists() or pub_path.exists()) and not force:
        raise UsageError(f"{key_path} already exists: pass --force to replace it")
    key = Sm2PrivateKey.generate()
    atomic_write_bytes(key_path, key.private_pem(), mode=0o600)
    atomic_write_bytes(pub_path, key.public_pem(), mode=0o644)
    if as_json:
        emit_json({"key": str(key_path), "public_key": str(pub_path), "fingerprint": key.fingerprint()})
    else:
        info(f"wrote {key_path} (mode 0600) and {pub_path}; fingerprint {key.fingerprint()}")
