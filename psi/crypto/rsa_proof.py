"""Proof that an RSA public key (N, e) makes x -> x^e a permutation of Z_N^*.

Why a PSI client needs it: blinding hides a value m only if r -> r^e is onto Z_N^*. If the
prime e divides p - 1 for a prime p | N, the e-th powers form a subgroup of index e mod p and
``z = m * r^e`` keeps m's class: ``z^((p-1)/e) = m^((p-1)/e) (mod p)``. With eight 256-bit
primes p = 1 (mod 65537) that is 8 * 16 = 128 bits of fingerprint per blinded value, enough for
a server to recognise every key it can guess. Such a modulus passes every cheap check
(:func:`psi.crypto.rsa_keys.validate_public_numbers`): size, e, parity, small factors.

The proof (Goldberg, Reyzin, Sagga, Baldimtsi, ePrint 2018/057, the e-th-root part, in the
Z_N^* form of their Claim 4.5), interactive with a fresh client nonce:

1. client -> server: 32 random bytes from the OS (:func:`new_nonce`), before the server proves;
2. both derive ``rho_i`` for i = 0..k-1 (:func:`challenges`): SHAKE-256 of the domain tag, the
   DER public key, the nonce and i, expanded to |N| + 128 bits and reduced mod N (statistical
   distance from uniform below 2^-128);
3. server -> client: ``sigma_i = rho_i^d mod N`` (:func:`prove`, the CRT signing path with its
   fault check);
4. client (:func:`verify`): every ``rho_i`` in Z_N^* (gcd with N is 1), 0 < sigma_i < N, and
   ``sigma_i^e = rho_i (mod N)`` for all i (one gmpy2 batch call), which makes each sigma_i a
   unit too.

Soundness. If x -> x^e is not a permutation of Z_N^*, its kernel has at least e elements (e is
prime), so its image is a subgroup of index >= e: each uniform ``rho_i`` in Z_N^* has an e-th
root with probability <= 1/e. With k = ceil(128 / log2 e) = 8 roots for e = 65537 a cheating
server passes with probability <= e^-8 < 2^-128 per session (plus the 2^-128 distance of the
reduction). Because the nonce arrives before the proof and is hashed with the key, a proof
cannot be replayed from another session. The proof says nothing about the number of prime
factors; :mod:`psi.crypto.blind_rsa` handles the one case left (an encoded key that shares a
factor with N) by re-encoding, so blinded values stay uniform on Z_N^*.

Cost (2048-bit N, measured as CPU time on the shared 2-core development machine at load ~15):
the server's 8 CRT private operations 14 ms (1.8 ms each there; ~0.8 ms each unloaded, see
:mod:`psi.crypto.rsa_keys`), the client's verification 0.3-0.7 ms (challenges 0.06 ms); 8 * 256
bytes and one extra one-way message (the nonce) on the wire.
"""

from __future__ import annotations

import hashlib
import math
import secrets
from typing import Sequence

import gmpy2

from ..errors import MalformedMessage
from .rsa_keys import RsaKey, RsaPublicKey, sign_batch

__all__ = [
    "NONCE_BYTES",
    "SOUNDNESS_BITS",
    "PROOF_TAG",
    "proof_size",
    "new_nonce",
    "challenges",
    "prove",
    "verify",
    "PermutationProofError",
]

NONCE_BYTES = 32
SOUNDNESS_BITS = 128
PROOF_TAG = b"psiq/rsa-permutation-proof/v1\x00"
_EXTRA_BITS = 128


class PermutationProofError(MalformedMessage):
    """The server's key failed its permutation proof (a protocol violation by the server)."""


def proof_size(e: int) -> int:
    """k = ceil(128 / log2 e): the number of e-th roots for 2^-128 soundness (8 for 65537)."""
    if e < 3:
        raise ValueError("public exponent must be an odd prime >= 3")
    return math.ceil(SOUNDNESS_BITS / math.log2(e))


def new_nonce() -> bytes:
    """A fresh 32-byte client nonce from the OS."""
    return secrets.token_bytes(NONCE_BYTES)


def challenges(public: RsaPublicKey, nonce: bytes, count: int | None = None) -> list[gmpy2.mpz]:
    """The values rho_0..rho_{k-1} whose e-th roots the server must return (both sides derive them)."""
    if len(nonce) != NONCE_BYTES:
        raise ValueError("the proof nonce must be 32 bytes")
    k = proof_size(public.e) if count is None else count
    der = public.to_der()
    n = gmpy2.mpz(public.n)
    width = (public.n.bit_length() + _EXTRA_BITS + 7) // 8
    prefix = PROOF_TAG + len(der).to_bytes(4, "big") + der + nonce
    out = []
    for i in range(k):
        stream = hashlib.shake_256(prefix + i.to_bytes(4, "big")).digest(width)
        out.append(gmpy2.mpz.from_bytes(stream, "big") % n)
    return out


def prove(key: RsaKey, nonce: bytes) -> list[bytes]:
    """The server's proof for ``nonce``: kLen-byte e-th roots of :func:`challenges`."""
    public = key.public
    rhos = challenges(public, nonce)
    return [int(s).to_bytes(public.size, "big") for s in sign_batch(key.crt_params(), [int(r) for r in rhos])]


def verify(public: RsaPublicKey, nonce: bytes, roots: Sequence[bytes]) -> None:
    """Check the server's proof; raise :class:`PermutationProofError` naming what failed.

    ``public`` must already have passed :func:`~psi.crypto.rsa_keys.validate_public_numbers`.
    """
    k = proof_size(public.e)
    if len(roots) != k:
        raise PermutationProofError(f"the server sent {len(roots)} roots in its key proof, {k} are required")
    n = gmpy2.mpz(public.n)
    rhos = challenges(public, nonce, k)
    sigmas = []
    for rho, root in zip(rhos, roots):
        if len(root) != public.size:
            raise PermutationProofError("a root in the server's key proof has the wrong length")
        sigma = gmpy2.mpz.from_bytes(bytes(root), "big")
        if not 0 < sigma < n:
            raise PermutationProofError("a root in the server's key proof is not a unit modulo N (out of range)")
        # rho must be a unit: modulo a prime it shares with N it has a root whatever e is. With
        # rho a unit and sigma^e = rho below, sigma is a unit too (no separate gcd needed).
        if gmpy2.gcd(rho, n) != 1:  # probability < 2^-1000 for an honest key (it factors N)
            raise PermutationProofError("a proof challenge shares a factor with the server's modulus")
        sigmas.append(sigma)
    powers = gmpy2.powmod_base_list(sigmas, public.e, n)
    if any(power != rho for power, rho in zip(powers, rhos)):
        raise PermutationProofError(
            "the server's RSA key failed its permutation proof (x -> x^e may not be one-to-one); "
            "no blinded value was sent"
        )
