"""Shared fixtures: a trial PKI per test session, a free loopback port, the psiq command."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

from psi.transport.tls import TlsConfig, create_test_pki

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA with certificates for 'bank-a', 'bank-b' and a second CA with 'mallory'."""
    d = tmp_path_factory.mktemp("pki")
    create_test_pki(d, ["bank-a", "bank-b"])
    create_test_pki(d / "other", ["mallory"])
    return d


#: Whom each trial party expects by default: the other bank (mallory, from another CA, aims at bank-b).
COUNTERPART = {"bank-a": "bank-b", "bank-b": "bank-a", "mallory": "bank-b"}


def tls_for(pki: Path, name: str, peer: str | None = None, *, any_peer: bool = False) -> TlsConfig:
    """``name``'s TLS files, expecting ``peer`` (default: the counterpart bank), or anyone from the
    CA with ``any_peer``."""
    base = pki / "other" if name == "mallory" else pki
    expected = None if any_peer else (peer or COUNTERPART.get(name))
    return TlsConfig(base / f"{name}.pem", base / f"{name}.key", base / "ca.pem", expected, any_peer=any_peer)


def tls_args(pki: Path, name: str, *, peer: str | None = None) -> list[str]:
    """CLI TLS options for ``name``, with ``--peer-name`` of ``peer`` (default: the counterpart bank)."""
    base = pki / "other" if name == "mallory" else pki
    return ["--tls-cert", str(base / f"{name}.pem"), "--tls-key", str(base / f"{name}.key"), "--tls-ca", str(base / "ca.pem"),
            "--peer-name", peer or COUNTERPART[name]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def psiq_cmd() -> list[str]:
    return [sys.executable, "-m", "cli"]


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("PSIQ_WORKERS", "2")
    return env
