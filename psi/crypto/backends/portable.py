"""The portable backend: OpenSSL through ``cryptography`` (the default on every machine)."""

from __future__ import annotations

from typing import Any, Callable, Sequence

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


def _public_key_loader() -> Callable[[bytes], Any]:
    """``X25519PublicKey.from_public_bytes`` without its per-call "is X25519 supported" check.

    The public classmethod asks the OpenSSL backend on every call, which cost about a third as
    much as the ladder's own Python-side work at 10^5 elements; the Rust function it then calls
    is used directly once that question has been asked here. Same function, same bytes; falls
    back to the public API if a future ``cryptography`` moves it.
    """
    if not _openssl.x25519_supported():
        return x25519.X25519PublicKey.from_public_bytes  # raises UnsupportedAlgorithm, as before
    try:
        from cryptography.hazmat.bindings._rust import openssl as rust_openssl

        return rust_openssl.x25519.from_public_bytes  # type: ignore[no-any-return]
    except (ImportError, AttributeError):  # pragma: no cover - other cryptography layouts
        return x25519.X25519PublicKey.from_public_bytes


class PortableBackend:
    """``cryptography``'s X25519 (OpenSSL), one ``exchange`` per element."""

    def __init__(self) -> None:
        self._load = _public_key_loader()

    name = "portable"

    def describe(self) -> dict[str, object]:
        return {"x25519": f"{_openssl.openssl_version_text()} (cryptography)"}

    def x25519_many(self, scalar: bytes, elements: Sequence[bytes] | bytes) -> list[bytes]:
        key = x25519.X25519PrivateKey.from_private_bytes(bytes(scalar))
        load, exchange = self._load, key.exchange
        return [exchange(load(bytes(element))) for element in _as_list(elements)]  # ValueError on all-zero
