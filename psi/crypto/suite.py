"""Cryptographic suites: every hash, cipher, PRG, AEAD and curve psiq's own protocols use.

A protocol asks its :class:`Suite` for primitives instead of naming them, so one switch
(``--suite``) changes them all and the code paths stay shared:

=========================  =================================  ======================================
primitive                  ``standard`` (psiq's default)      ``gm`` (national algorithms, 国密)
=========================  =================================  ======================================
``hash`` (domain tag)      BLAKE2b, personalised              SM3 over ``len(tag) || tag || len || data``
``digest`` (SHA-256 uses)  SHA-256                            SM3
``keyed_digests``          BLAKE2b keyed                      SM3 over ``tag || key || item``, truncated
``ecb`` / fixed-key π      AES-128 (or -256 by key length)    SM4 (a 32-byte key is first hashed to 16)
``ctr`` (PRG)              AES-CTR                            SM4-CTR
``aead``                   ChaCha20-Poly1305 / AES-GCM        SM4-GCM (16-byte tag)
ECDH PSI group             the user's ``--group``             ``sm2`` (and only sm2)
base-OT group              ristretto255                       SM2 (compressed points, 33 bytes)
=========================  =================================  ======================================

The ``standard`` suite reproduces, byte for byte, what psiq computed before suites existed:
its methods are the exact calls the protocols made. Under ``gm`` no SHA-2, BLAKE2, AES,
ChaCha20 or curve other than SM2 is touched by the protocols that take a suite
(``tests/test_suite_gm.py`` makes those primitives raise and runs every protocol).

SM3 and SM4 come from OpenSSL through ``hashlib`` / ``cryptography``; both are pinned by the
published vectors of GB/T 32905 and GB/T 32907 in the tests.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Sequence

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ..errors import UsageError

__all__ = ["Suite", "STANDARD", "GM", "SUITES", "SUITE_NAMES", "get_suite", "hello_params"]

STANDARD_NAME = "standard"
GM_NAME = "gm"


class _Truncated:
    """An incremental hash whose ``digest()`` is the first ``size`` bytes."""

    __slots__ = ("_h", "_size")

    def __init__(self, h: Any, size: int) -> None:
        self._h, self._size = h, size

    def update(self, data: bytes) -> None:
        self._h.update(data)

    def digest(self) -> bytes:
        return self._h.digest()[: self._size]

    def copy(self) -> "_Truncated":
        return _Truncated(self._h.copy(), self._size)


def _sm3(data: bytes = b"") -> Any:
    return hashlib.new("sm3", data)


@dataclass(frozen=True)
class Suite:
    """One named set of primitives (see the module docstring). Picklable: workers get it."""

    name: str

    def __reduce__(self) -> tuple:
        return (get_suite, (self.name,))  # a worker's copy is the module's own object, so ``is`` works

    @property
    def is_gm(self) -> bool:
        return self.name == GM_NAME

    # -- hashing ---------------------------------------------------------------------------
    def hasher(self, *, person: bytes, size: int = 32, key: bytes = b"") -> Any:
        """An incremental domain-separated hash (``update`` / ``digest``) of ``size`` bytes.

        standard: ``blake2b(digest_size=size, person=person, key=key)``; gm: SM3 over
        ``len(person) || person || size || len(key) || key`` then the data, truncated
        (``size`` <= 32).
        """
        if not self.is_gm:
            return hashlib.blake2b(digest_size=size, person=person, key=key)
        if not 1 <= size <= 32:
            raise ValueError("an SM3-based hash gives at most 32 bytes")
        h = _sm3(bytes([len(person)]) + person + bytes([size, len(key)]) + key)
        return _Truncated(h, size)

    def hash(self, data: bytes, *, person: bytes, size: int = 32, key: bytes = b"") -> bytes:
        """One-shot :meth:`hasher`."""
        h = self.hasher(person=person, size=size, key=key)
        h.update(data)
        return h.digest()

    def keyed_digests(self, items: Sequence[bytes], key: bytes, size: int) -> bytes:
        """``size``-byte keyed digests of ``items``, back to back (the protocols' item pre-hash).

        standard: ``blake2b(item, digest_size=size, key=key)``; gm: SM3 of a fixed prefix
        (tag, key) then the item, truncated to ``size`` bytes.
        """
        if not self.is_gm:
            blake = hashlib.blake2b
            return b"".join([blake(item, digest_size=size, key=key).digest() for item in items])
        base = _sm3(b"\x13psiq-keyed-digest" + bytes([size, len(key)]) + key)
        out = []
        for item in items:
            h = base.copy()
            h.update(item)
            out.append(h.digest()[:size])
        return b"".join(out)

    def digest(self, data: bytes = b"") -> Any:
        """A 32-byte hash object where psiq used SHA-256: SHA-256 or SM3."""
        return _sm3(data) if self.is_gm else hashlib.sha256(data)

    @property
    def digest_name(self) -> str:
        return "sm3" if self.is_gm else "sha256"

    # -- block cipher, PRG, AEAD -----------------------------------------------------------
    def block_cipher(self, key: bytes) -> Any:
        """The block cipher keyed with ``key``: AES (16/32-byte keys) or SM4 (a 32-byte key
        is hashed down to SM4's 16 bytes, so callers keep their key sizes)."""
        if not self.is_gm:
            return algorithms.AES(key)
        key = bytes(key)
        if len(key) != 16:
            key = self.hash(key, person=b"psiq-sm4-key", size=16)
        return algorithms.SM4(key)

    def ecb(self, key: bytes) -> Any:
        """An ECB encryptor (the fixed-key permutation π, bin hashes): ``update_into`` works."""
        return Cipher(self.block_cipher(key), modes.ECB()).encryptor()

    def ctr(self, key: bytes, counter: bytes = bytes(16)) -> Any:
        """A CTR keystream encryptor (the PRG) starting at the 16-byte ``counter`` block."""
        return Cipher(self.block_cipher(key), modes.CTR(counter)).encryptor()

    def seal(self, key: bytes, nonce: bytes, plain: bytes, aad: bytes) -> bytes:
        """AEAD: ChaCha20-Poly1305 (standard) or SM4-GCM (gm); ciphertext || 16-byte tag."""
        if not self.is_gm:
            from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

            return ChaCha20Poly1305(key).encrypt(nonce, plain, aad)
        enc = Cipher(self.block_cipher(key), modes.GCM(nonce)).encryptor()
        enc.authenticate_additional_data(aad)
        return enc.update(plain) + enc.finalize() + enc.tag

    def open(self, key: bytes, nonce: bytes, sealed: bytes, aad: bytes) -> bytes:
        """Inverse of :meth:`seal`; raises ``cryptography.exceptions.InvalidTag``."""
        if not self.is_gm:
            from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

            return ChaCha20Poly1305(key).decrypt(nonce, sealed, aad)
        from cryptography.exceptions import InvalidTag

        if len(sealed) < 16:
            raise InvalidTag()
        dec = Cipher(self.block_cipher(key), modes.GCM(nonce, sealed[-16:])).decryptor()
        dec.authenticate_additional_data(aad)
        return dec.update(sealed[:-16]) + dec.finalize()

    # -- groups ----------------------------------------------------------------------------
    def psi_group(self, requested: str | None, default: str) -> str:
        """The ECDH PSI group: gm forces ``sm2`` (another explicit group is a usage error)."""
        if not self.is_gm:
            return requested or default
        if requested not in (None, "sm2"):
            raise UsageError(f"--suite gm uses the sm2 group; --group {requested} conflicts with it")
        return "sm2"

    @property
    def base_ot(self) -> Any:
        """The base-OT group module (see :mod:`psi.ot.base_ot`)."""
        from ..ot import base_ot

        return base_ot.SM2_GROUP if self.is_gm else base_ot.RISTRETTO_GROUP


STANDARD = Suite(STANDARD_NAME)
GM = Suite(GM_NAME)
SUITES = {STANDARD_NAME: STANDARD, GM_NAME: GM}
SUITE_NAMES = tuple(SUITES)


def get_suite(name: "str | Suite | None") -> Suite:
    """The suite called ``name`` (``None``: standard); :class:`UsageError` for unknown names."""
    if isinstance(name, Suite):
        return name
    if name is None:
        return STANDARD
    try:
        return SUITES[name]
    except KeyError:
        raise UsageError(f"unknown suite {name!r} (choose from {', '.join(SUITE_NAMES)})") from None


def hello_params(suite: "str | Suite") -> dict[str, str]:
    """The suite's entry in a hello's compared params: nothing for ``standard`` (so its hello
    is byte-for-byte what it was before suites), ``{"suite": name}`` otherwise. A peer that
    sends none is running ``standard`` (:func:`psi.protocols.handshake.check_peer_hello`)."""
    suite = get_suite(suite)
    return {} if suite is STANDARD else {"suite": suite.name}


def checked_name(value: Any) -> str:
    """Validate a suite name read from a file or message."""
    if value is None:
        return STANDARD_NAME
    if not isinstance(value, str) or value not in SUITES:
        raise ValueError(f"unknown suite {value!r}")
    return value

