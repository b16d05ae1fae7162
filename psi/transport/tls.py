"""TLS 1.3 with mutual certificate authentication, and a small CA for trials and tests.

Deployments pass their own certificate, key and CA files. ``create_test_pki`` makes a CA and a
certificate per party with ``cryptography`` (ECDSA P-256, one-year validity), so two parties can
try psiq without a PKI of their own.

Whom a party talks to is always explicit (:meth:`TlsConfig.check_identity_policy`): either
``peer_name`` — the peer's certificate must chain to the CA *and* carry that name as its
subject CN or as a DNS name in its subject alternative names — or ``any_peer`` — any holder of a
certificate from the CA. A party without a certificate is refused in both cases. Trial
certificates carry the party name in the CN and SAN only (no ``localhost`` or IP address), so
with the trial PKI a pinned name identifies exactly one party.
"""

from __future__ import annotations

import datetime
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ..errors import AuthenticationError, InputError, UsageError

__all__ = [
    "TlsConfig",
    "server_context",
    "client_context",
    "peer_common_name",
    "certificate_names",
    "check_peer_certificate",
    "create_test_pki",
]


@dataclass(frozen=True)
class TlsConfig:
    """Where this party's certificate, key and trusted CA live, and whom to expect."""

    cert: Path
    key: Path
    ca: Path
    peer_name: str | None = None
    any_peer: bool = False

    def check_identity_policy(self) -> None:
        """Raise :class:`UsageError` unless exactly one of ``peer_name`` and ``any_peer`` is set."""
        if self.peer_name is not None and self.any_peer:
            raise UsageError("give either --peer-name NAME or --any-peer, not both")
        if self.peer_name is None and not self.any_peer:
            raise UsageError(
                "say whom you talk to: --peer-name NAME (the peer certificate's CN or SAN) "
                "or --any-peer (any holder of a certificate from this CA)"
            )
        if self.peer_name is not None and not self.peer_name.strip():
            raise UsageError("--peer-name is empty")

    def check_files(self) -> None:
        """Raise :class:`InputError` naming the first missing or unreadable file."""
        for label, path in (("certificate", self.cert), ("key", self.key), ("CA", self.ca)):
            if not Path(path).is_file():
                raise InputError(f"TLS {label} file not found: {path}")


def _load(ctx: ssl.SSLContext, cfg: TlsConfig) -> ssl.SSLContext:
    cfg.check_identity_policy()
    cfg.check_files()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    try:
        ctx.load_cert_chain(str(cfg.cert), str(cfg.key))
    except (ssl.SSLError, OSError) as err:
        raise InputError(f"cannot load TLS certificate/key ({cfg.cert}, {cfg.key}): {err}") from None
    try:
        ctx.load_verify_locations(cafile=str(cfg.ca))
    except (ssl.SSLError, OSError) as err:
        raise InputError(f"cannot load TLS CA file {cfg.ca}: {err}") from None
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def server_context(cfg: TlsConfig) -> ssl.SSLContext:
    """A TLS 1.3 server context that requires a client certificate from ``cfg.ca``.

    Raises :class:`UsageError` when ``cfg`` names neither a peer nor ``any_peer`` (so a server
    refuses to start listening without knowing whom it serves).
    """
    return _load(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), cfg)


def client_context(cfg: TlsConfig) -> ssl.SSLContext:
    """A TLS 1.3 client context presenting ``cfg.cert`` and trusting only ``cfg.ca``.

    Host names are not checked (banks connect by IP address); the peer is identified by its
    certificate chain and, when ``cfg.peer_name`` is set, by that name in its CN or SAN
    (:func:`check_peer_certificate`).
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    return _load(ctx, cfg)


def certificate_names(cert: x509.Certificate) -> tuple[str | None, list[str]]:
    """The subject common name (or None) and the DNS names of the subject alternative names."""
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = str(cns[0].value) if cns else None
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = [str(n) for n in san.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        dns = []
    return cn, dns


def check_peer_certificate(der: bytes | None, cfg: TlsConfig | None) -> str:
    """Check an already chain-verified peer certificate against ``cfg``'s identity policy.

    Returns the name the peer is known by (its CN, else its first DNS SAN). Raises
    :class:`AuthenticationError` when there is no certificate, or when ``cfg.peer_name`` is set
    and is neither the CN nor a DNS SAN (DNS names compare case-insensitively, no wildcards).
    """
    if not der:
        raise AuthenticationError("peer presented no certificate")
    try:
        cert = x509.load_der_x509_certificate(der)
        cn, dns = certificate_names(cert)
    except ValueError:
        raise AuthenticationError("peer certificate cannot be parsed") from None
    shown = cn or (dns[0] if dns else None)
    if shown is None:
        raise AuthenticationError("peer certificate names no subject (no CN, no DNS SAN)")
    expected = cfg.peer_name if cfg is not None else None
    if expected is not None:
        if expected != cn and expected.lower() not in {d.lower() for d in dns}:
            raise AuthenticationError(f"peer certificate is for {shown!r}, expected {expected!r}")
    return shown


def peer_common_name(sock: ssl.SSLSocket) -> str | None:
    """The subject CN of the verified peer certificate, or None."""
    der = sock.getpeercert(binary_form=True)
    if not der:
        return None
    return certificate_names(x509.load_der_x509_certificate(der))[0]


def check_peer_name(sock: ssl.SSLSocket, expected: str | None) -> str | None:
    """Return the peer's name; raise :class:`AuthenticationError` if it is not ``expected``
    (checked against CN and DNS SAN) or if the peer sent no certificate."""
    cfg = TlsConfig(Path(), Path(), Path(), expected, any_peer=expected is None)
    return check_peer_certificate(sock.getpeercert(binary_form=True), cfg)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "psiq trial PKI"), x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def create_test_pki(directory: Path, parties: list[str], *, days: int = 365, ca_name: str = "psiq trial CA") -> dict[str, Path]:
    """Create ``ca.pem``/``ca.key`` (reused if present) and ``NAME.pem``/``NAME.key`` per party.

    Party certificates carry the party name as CN and as their only DNS SAN (no ``localhost``
    or IP address, which every party would share), and are valid for client and server
    authentication. Returns the paths written.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for party in parties:
        if not party or any(c in party for c in "/\\\0") or party.startswith("."):
            raise UsageError(f"bad party name {party!r}")
        if party == "ca":
            raise UsageError("'ca' is reserved for the CA files")
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_pem, ca_key_path = directory / "ca.pem", directory / "ca.key"
    written: dict[str, Path] = {}
    if ca_pem.exists() and ca_key_path.exists():
        ca_cert = x509.load_pem_x509_certificate(ca_pem.read_bytes())
        loaded = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise InputError(f"{ca_key_path} is not an EC private key")
        ca_key = loaded
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(_name(ca_name))
            .issuer_name(_name(ca_name))
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        _write_private(ca_key_path, _key_pem(ca_key))
        ca_pem.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        written["ca"] = ca_pem
    for party in parties:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(party))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.SubjectAlternativeName([x509.DNSName(party)]),
                critical=False,
            )
            .add_extension(
                x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH, x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        _write_private(directory / f"{party}.key", _key_pem(key))
        (directory / f"{party}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        written[party] = directory / f"{party}.pem"
    return written
