"""The interface every compute backend implements (see :mod:`psi.crypto.backends`)."""

from __future__ import annotations

from typing import Callable, Protocol, Sequence, TypeVar, runtime_checkable

__all__ = ["Backend", "BackendUnavailable", "load_once"]

T = TypeVar("T")


class BackendUnavailable(Exception):
    """A backend cannot run here (library missing or failing to load, CPU lacks the ISA).

    ``str(err)`` is one line naming the reason; :func:`psi.crypto.backends.select` turns it into
    a note (``auto``) or a :class:`~psi.errors.UsageError` (the backend was named explicitly).
    """


def load_once(cache: dict[str, object], key: str, build: Callable[[], T]) -> T:
    """``build()`` once per process: what it returns, or the :class:`BackendUnavailable` it
    raises, is kept in ``cache[key]`` and returned (raised again) on every later call."""
    if key not in cache:
        try:
            cache[key] = build()
        except BackendUnavailable as err:
            cache[key] = err
    result = cache[key]
    if isinstance(result, BackendUnavailable):
        raise result
    return result  # type: ignore[return-value]


@runtime_checkable
class Backend(Protocol):
    """Hot primitives with one promise: the same bytes as the portable backend for every input.

    ``x25519_many(scalar, elements)`` is RFC 7748 X25519 of one 32-byte scalar (clamped as the
    RFC says) with each 32-byte u-coordinate (top bit masked, non-canonical u reduced mod p, as
    OpenSSL does), in order. It raises :class:`ValueError` if any product is all-zero (a
    low-order input), as ``cryptography``'s ``exchange`` does. Elements are *not* validated
    beyond that: :mod:`psi.crypto.groups` validates received elements before calling it.
    """

    name: str

    def describe(self) -> dict[str, object]:
        """What runs each primitive (library and version), for ``--json`` and ``--version``."""
        ...

    def x25519_many(self, scalar: bytes, elements: Sequence[bytes] | bytes) -> list[bytes]:
        """``X25519(scalar, u)`` for every ``u`` in ``elements`` (a list or a packed buffer)."""
        ...

    def rsa_private_many(self, params: Sequence[int], blob: bytes) -> bytes:
        """RSA's private operation y^d mod n on each kLen-byte big-endian y in ``blob``.

        ``params`` is ``(n, e, p, q, dp, dq, qinv)``; every y is below n (the caller checks).
        Returns the kLen-byte results concatenated. The caller verifies s^e == y afterwards.
        """
        ...

    def rsa_public_many(self, n: int, e: int, blob: bytes) -> bytes:
        """y^e mod n on each kLen-byte big-endian y in ``blob``; kLen-byte results concatenated."""
        ...
