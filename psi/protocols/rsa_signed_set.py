"""The RSA PSI server's own signed set: output hashes, evidence, shuffled order, cache format.

Split from :mod:`psi.protocols.rsa` (which re-exports the public names). For a key x with
signature s = sig(x) (:func:`psi.crypto.blind_rsa.sign_psi_batch`, the same value a client
obtains by blinding) the PSI output is ``SHA-256("psiq/rsa-psi/v1/out\\x00" || s)`` (32 bytes,
:func:`output_hash`); the wire carries only its first L bytes. In ``both`` mode each claimed
match carries :func:`match_evidence` of the full output hash, which a client can compute only
from the signature itself (see :mod:`psi.protocols.rsa`).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
import struct
from typing import Iterable, Sequence

import numpy as np

from ..crypto.blind_rsa import sign_psi_batch
from ..crypto.rsa_keys import CrtParams, RsaKey
from ..errors import InputError
from ..parallel import Executor, split

__all__ = [
    "OUTPUT_TAG",
    "EVIDENCE_TAG",
    "FULL_HASH",
    "EVIDENCE_BYTES",
    "SignedSet",
    "sign_own_set",
    "signed_set_cache_key",
    "output_hash",
    "match_evidence",
    "random_permutation",
]

OUTPUT_TAG = b"psiq/rsa-psi/v1/out\x00"
EVIDENCE_TAG = b"psiq/rsa-psi/v2/match-evidence\x00"
FULL_HASH = 32
EVIDENCE_BYTES = 16


def output_hash(signature: bytes) -> bytes:
    """The 32-byte PSI output for one (unblinded) signature."""
    return hashlib.sha256(OUTPUT_TAG + signature).digest()


def match_evidence(full_output_hash: bytes) -> bytes:
    """16-byte evidence for a claimed match: a second-domain hash of the full output hash.

    The server sends only the first L <= 13 bytes of each output hash, so without the signature
    the other >= 19 bytes, and hence this value, are unpredictable (one-more-RSA, random oracle).
    """
    return hashlib.sha256(EVIDENCE_TAG + bytes(full_output_hash)).digest()[:EVIDENCE_BYTES]


def evidence_matches(full_output_hash: bytes, claimed: bytes) -> bool:
    """Constant-time comparison of a claimed evidence with the one recomputed from our hash."""
    return hmac.compare_digest(match_evidence(full_output_hash), claimed)


def sign_own_items(params: CrtParams, items: Sequence[bytes]) -> bytes:
    """Full output hashes of the server's own items, back to back (a worker function)."""
    return b"".join(output_hash(s) for s in sign_psi_batch(params, items))


_SET_MAGIC = b"psiq-rsa-signed-set\x00"
_SET_HEADER = struct.Struct(">20sB32sIB")


def random_permutation(count: int) -> np.ndarray:
    """A uniformly random permutation of range(count) drawn from the OS CSPRNG."""
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    keys = np.frombuffer(secrets.token_bytes(8 * count), dtype=np.uint64)
    return np.argsort(keys, kind="stable").astype(np.int64)


class SignedSet:
    """The server's own signature hashes (full 32 bytes) in wire order, and the permutation.

    ``order[w]`` is the position in the server's input list of the item sent at wire position
    ``w``. Truncation to the session's L happens per session, so one cached set serves every
    peer size. Serialise with :meth:`to_bytes`; cache under :func:`signed_set_cache_key`.
    """

    __slots__ = ("key_fingerprint", "_hashes", "order")

    def __init__(self, key_fingerprint: bytes, hashes: bytes, order: np.ndarray) -> None:
        if len(key_fingerprint) != 32 or len(hashes) != FULL_HASH * len(order):
            raise ValueError("inconsistent signed set")
        self.key_fingerprint = bytes(key_fingerprint)
        self._hashes = bytes(hashes)
        self.order = np.asarray(order, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.order)

    def full_hash(self, position: int) -> bytes:
        return self._hashes[position * FULL_HASH : (position + 1) * FULL_HASH]

    def truncated(self, start: int, stop: int, length: int) -> bytes:
        """Wire positions [start, stop) truncated to ``length`` bytes each, back to back."""
        rows = np.frombuffer(self._hashes, dtype=np.uint8, count=(stop - start) * FULL_HASH, offset=start * FULL_HASH)
        return rows.reshape(-1, FULL_HASH)[:, :length].tobytes()

    def to_bytes(self) -> bytes:
        header = _SET_HEADER.pack(_SET_MAGIC, 1, self.key_fingerprint, len(self.order), FULL_HASH)
        return header + self._hashes + self.order.astype(">u4").tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> "SignedSet":
        """Parse a cached set; :class:`InputError` if it is damaged or not a signed set."""
        if len(data) < _SET_HEADER.size:
            raise InputError("signed-set file is truncated")
        magic, version, fingerprint, count, hash_len = _SET_HEADER.unpack_from(data, 0)
        if magic != _SET_MAGIC or version != 1 or hash_len != FULL_HASH:
            raise InputError("not a psiq RSA signed-set file (or an unsupported version)")
        if len(data) != _SET_HEADER.size + count * (FULL_HASH + 4):
            raise InputError("signed-set file length does not match its header")
        start = _SET_HEADER.size + count * FULL_HASH
        hashes = data[_SET_HEADER.size : start]
        order = np.frombuffer(data, dtype=">u4", count=count, offset=start).astype(np.int64)
        if count and not np.array_equal(np.sort(order), np.arange(count)):
            raise InputError("signed-set file holds an invalid permutation")
        return cls(fingerprint, hashes, order)


def signed_set_cache_key(key_fingerprint: bytes, items: Iterable[bytes]) -> str:
    """Hex SHA-256 naming a cached :class:`SignedSet`: key fingerprint + the exact item list."""
    digest = hashlib.sha256(b"psiq/rsa-signed-set/v1\x00" + bytes(key_fingerprint))
    count = 0
    for item in items:
        digest.update(len(item).to_bytes(4, "big"))
        digest.update(item)
        count += 1
    digest.update(count.to_bytes(8, "big"))
    return digest.hexdigest()


def sign_own_set(
    items: Sequence[bytes],
    key: RsaKey,
    executor: Executor,
    *,
    batch_size: int = 4096,
    on_progress=None,
) -> SignedSet:
    """Sign and hash the server's own items in a fresh random order (the precomputation).

    ``on_progress(done, total)`` is called after each batch when given.
    """
    order = random_permutation(len(items))
    wire = [items[i] for i in order]
    params = key.crt_params()
    chunks = split(wire, batch_size) if wire else []
    out = bytearray()
    for done, blob in enumerate(executor.imap(functools.partial(sign_own_items, params), chunks), 1):
        out += blob
        if on_progress is not None:
            on_progress(min(done * batch_size, len(items)), len(items))
    return SignedSet(key.fingerprint(), bytes(out), order)
