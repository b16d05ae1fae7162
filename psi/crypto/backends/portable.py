"""The portable backend: OpenSSL through ``cryptography`` (the default on every machine)."""

from __future__ import annotations

from typing import Sequence

from cryptography.hazmat.backends.openssl import backend as _openssl
from cryptography.hazmat.primitives.asymmetric import x25519

__all__ = ["PortableBackend"]


def _as_list(elements: Sequence[bytes] | bytes) -> Sequence[bytes]:
    if isinstance(elements, (bytes, bytearray, memoryview)):
        blob = bytes(elements)
        if len(blob) % 32:
            raise ValueError("x25519 element buffer is not a whole number of 32-byte elements")
        return [blob[i : i + 32] for i in range(0, len(blob), 32)]
    return elements


class PortableBackend:
    """``cryptography``'s X25519 (OpenSSL), one ``exchange`` per element."""

    name = "portable"

    def describe(self) -> dict[str, object]:
        return {"x25519": f"{_openssl.openssl_version_text()} (cryptography)"}

    def x25519_many(self, scalar: bytes, elements: Sequence[bytes] | bytes) -> list[bytes]:
        key = x25519.X25519PrivateKey.from_private_bytes(bytes(scalar))
        load, exchange = x25519.X25519PublicKey.from_public_bytes, key.exchange
        return [exchange(load(bytes(element))) for element in _as_list(elements)]  # ValueError on all-zero
