"""RSA blind-signature PSI (De Cristofaro–Tsudik), as sans-IO client and server parties.

Message flow (after the handshake, which the caller runs with :meth:`Config.hello_params`)::

    server                                        client
                                           <---   rsa.nonce    32 fresh bytes from the OS
    rsa.key      DER SubjectPublicKeyInfo  --->   validate: size = key_bits, e = 65537, N odd,
                                                  composite, not a perfect power, no factor < 2^20
    rsa.proof    k = 8 e-th roots of H(N, e, nonce, i)  --->  verify all (psi.crypto.rsa_proof):
                                                  x -> x^e permutes Z_N^*, else stop (exit 4)
                                                  before any blinded value leaves
                                           <---   rsa.blinded  <= batch_size values y = H(x) r^e
    sign each y (CRT, checked s^e == y)           (at most `window` batches in flight)
    rsa.signed   one batch of y^d          --->   unblind, verify every signature (RFC 9474
                 ... repeated until all n_c values are signed      Finalize), hash it
    rsa.set      truncated hashes of the server's own signatures, in a random order --->
                                                  match against its own hashes
    (both mode)                            <---   rsa.match   per match: server position and
    check each claim's evidence (constant time)   16-byte evidence, in the aligned order

Values: H(x) is the RFC 9474 RSABSSA-SHA384-PSSZERO-Deterministic encoding of the
domain-separated key (:func:`psi.crypto.blind_rsa.psi_representative`: the first encoding that
is a unit mod N, always the plain one for an honest key); each party's output for a key x is
``SHA-256("psiq/rsa-psi/v1/out\\x00" || sig(x))``, a 32-byte value truncated on the wire to

    L = ceil((40 + log2(n_c * n_s)) / 8) bytes  (at least 5; at most 13 with sets below 2^32),

so the expected number of false matches, n_c * n_s * 2^(-8L), is at most 2^-40.

What each party learns (honest-but-curious peer):

* client — which of its keys are in the intersection (``indices``, ascending in ``receiver``
  mode), the server's set size; the server's hashes reveal nothing about non-matching keys.
* server — the client's set size. In ``both`` mode also the intersection: the client returns the
  matched positions in the *aligned order* (sorted by the full 32-byte output hash, which both
  sides can compute for a common key), so ``client.indices[i]`` and ``server.indices[i]`` are
  the same key. ``cardinality`` mode is refused: the client always learns which keys matched.
* The server's positions on the wire are a fresh random permutation (CSPRNG), kept privately so
  ``both`` mode can map positions back.

Cheating peers:

* server — before blinding, the client requires the permutation proof (soundness 2^-128 per
  session, :mod:`psi.crypto.rsa_proof`); given it, every blinded value is uniform on Z_N^*
  whatever the key (fresh r per value, re-encoding keeps H(x) a unit), so the server's view of
  the client's keys is statistically independent of them. Every returned signature is verified
  before use; a wrong one stops the session (which item it hit is hidden by the blinding). The
  server still chooses its own set (at most the announced size), like any PSI party.
* client — cannot make the server report a key in ``both`` mode that it did not have signed in
  this session: each claim carries ``SHA-256(tag || full output hash)[:16]``
  (:func:`~psi.protocols.rsa_signed_set.match_evidence`), and the server sends only the first
  L <= 13 of the 32 bytes; a bad claim, a repeated or out-of-order one stops the session with
  :class:`~psi.errors.MalformedMessage` (exit 4) and no result. It can still omit matches or
  submit keys it does not own (input choice, bounded by its announced size). With a persisted
  server key, evidence learned in an earlier session remains valid.
* The server's privacy rests on the one-more-RSA assumption in the random-oracle model.

A persisted server key (``key=``/``signed_set=``) lets a client link its queries across sessions;
by default each session draws a fresh key.

Progress phases (``Party.progress``): client ``blind`` (keys blinded, signed and verified) then
``match`` (server hashes received); server ``sign`` (client values signed), ``server-set`` (own
hashes sent, signed on the fly unless a precomputed :class:`SignedSet` is given), ``match``.
Inputs must be unique byte strings (the caller normalises and de-duplicates).
"""

from __future__ import annotations

import enum
import functools
from collections import deque
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..crypto import rsa_proof
from ..crypto.blind_rsa import VARIANT, blind_psi_batch, finalize_psi_batch
from ..crypto.rsa_keys import ALLOWED_BITS, CrtParams, RsaKey, RsaPublicKey, sign_batch
from ..errors import MalformedMessage, ProtocolStateError, UsageError
from ..messages import Message, pack_items, unpack_items
from ..parallel import Executor, split_even
from .base import PsiOutcome, PsiParty, Reveal
from .rsa_signed_set import (
    EVIDENCE_BYTES,
    FULL_HASH,
    SignedSet,
    evidence_matches,
    match_evidence,
    output_hash,
    random_permutation,
    sign_own_items,
    sign_own_set,
    signed_set_cache_key,
)

__all__ = [
    "NAME",
    "VERSION",
    "Config",
    "Client",
    "Server",
    "SignedSet",
    "sign_own_set",
    "signed_set_cache_key",
    "truncation_length",
    "output_hash",
    "match_evidence",
]

NAME = "rsa"
#: 2: the client's nonce and the server's permutation proof before blinding; coprime encoding;
#: evidence with each claimed match in ``both`` mode.
VERSION = 2

KIND_NONCE = "rsa.nonce"
KIND_KEY = "rsa.key"
KIND_PROOF = "rsa.proof"
KIND_BLINDED = "rsa.blinded"
KIND_SIGNED = "rsa.signed"
KIND_SET = "rsa.set"
KIND_MATCH = "rsa.match"

MAX_BATCH_ITEMS = 1 << 16
MAX_SET_SIZE = (1 << 32) - 1
TRUNCATION_RULE = "sha256, ceil((40+log2(nc*ns))/8) bytes"
#: One claimed match on the wire: server position (u32 big-endian) then the evidence.
CLAIM_BYTES = 4 + EVIDENCE_BYTES


def truncation_length(n_client: int, n_server: int) -> int:
    """Smallest L with n_c * n_s * 2^(-8L) <= 2^-40, i.e. ceil((40 + log2(n_c*n_s)) / 8)."""
    product = max(1, n_client * n_server)
    # (product - 1).bit_length() == ceil(log2(product)); the ceiling of the sum is unchanged.
    return min(FULL_HASH, -(-(40 + (product - 1).bit_length()) // 8))


@dataclass(frozen=True)
class Config:
    """Options of one RSA PSI session (keyword arguments, both sides).

    ``reveal`` is RECEIVER or BOTH; ``key_bits`` the server key size; ``batch_size`` items per
    message; ``window`` blinded batches the client keeps in flight (memory and socket buffers
    hold about window * batch_size * key_bits/4 bytes).
    """

    reveal: Reveal = Reveal.RECEIVER
    key_bits: int = 2048
    batch_size: int = 4096
    window: int = 4

    def __post_init__(self) -> None:
        try:
            reveal = Reveal(self.reveal)
        except ValueError:
            raise UsageError(f"unknown reveal mode {self.reveal!r}") from None
        object.__setattr__(self, "reveal", reveal)
        if reveal is Reveal.CARDINALITY:
            raise UsageError(
                "RSA PSI cannot reveal only the cardinality: the client learns which of its keys matched; "
                "use another protocol for cardinality mode"
            )
        if self.key_bits not in ALLOWED_BITS:
            raise UsageError(f"key_bits must be one of {', '.join(map(str, ALLOWED_BITS))}")
        if not 1 <= self.batch_size <= MAX_BATCH_ITEMS:
            raise UsageError(f"batch_size must be between 1 and {MAX_BATCH_ITEMS}")
        if self.window < 1:
            raise UsageError("window must be at least 1")

    def hello_params(self) -> dict:
        """Settings both sides must agree on (compared in the handshake)."""
        return {
            "reveal": self.reveal.value,
            "key_bits": self.key_bits,
            "variant": VARIANT,
            "hash_trunc": TRUNCATION_RULE,
        }


# -- worker functions (top-level so they pickle) ----------------------------------------------


def _blind_items(public_numbers: tuple[int, int], items: Sequence[bytes]) -> tuple[bytes, list[int]]:
    blinded, invs = blind_psi_batch(public_numbers, items)
    return b"".join(blinded), invs


def _finalize_items(public_numbers: tuple[int, int], batch: Sequence[tuple[bytes, bytes, int]]) -> bytes:
    return b"".join(output_hash(s) for s in finalize_psi_batch(public_numbers, batch))


def _sign_blinded(params: CrtParams, blob: bytes) -> bytes:
    k_len = (params[0].bit_length() + 7) // 8
    values = [blob[i : i + k_len] for i in range(0, len(blob), k_len)]
    return b"".join(sign_batch(params, values))


# -- parties ----------------------------------------------------------------------------------


def _check_items(items: Sequence[bytes], peer_size: int) -> None:
    if len(items) > MAX_SET_SIZE or not 0 <= peer_size <= MAX_SET_SIZE:
        raise UsageError("set sizes are limited to 2^32 - 1 items")


class _ClientState(enum.Enum):
    """SEND_NONCE -> WAIT_KEY -> WAIT_PROOF -> EXCHANGE -> RECEIVE_SET -> DONE (any -> failed)."""

    SEND_NONCE = "send-nonce"
    WAIT_KEY = "wait-key"
    WAIT_PROOF = "wait-proof"
    EXCHANGE = "exchange"
    RECEIVE_SET = "receive-set"
    DONE = "done"


class Client(PsiParty):
    """The party that learns the intersection; sends blinded values, matches the server's hashes."""

    def __init__(self, items: Sequence[bytes], config: Config, *, peer_size: int, executor: Executor) -> None:
        super().__init__()
        _check_items(items, peer_size)
        self._items = items
        self._config = config
        self._peer_size = peer_size
        self._executor = executor
        self._state = _ClientState.SEND_NONCE
        self._trunc = truncation_length(len(items), peer_size)
        self._nonce = rsa_proof.new_nonce()
        self._candidate: RsaPublicKey | None = None  # the key before its proof is checked
        self._public: RsaPublicKey | None = None  # set only once the proof verified
        self._next_start = 0
        self._in_flight: deque[tuple[int, int, list[int]]] = deque()
        self._full = bytearray(FULL_HASH * len(items))
        self._index: dict[bytes, int] = {}
        self._collisions: dict[bytes, list[int]] = {}
        self._matched: dict[int, int] = {}  # client index -> server wire position
        self._set_received = 0

    # -- sending ---------------------------------------------------------------------------------
    def _produce(self) -> None:
        if self._state is _ClientState.SEND_NONCE:
            self._send(KIND_NONCE, self._nonce)
            self._state = _ClientState.WAIT_KEY
        if self._state is not _ClientState.EXCHANGE:
            return
        public = self._key()
        n_items = len(self._items)
        while len(self._in_flight) < self._config.window and self._next_start < n_items:
            start = self._next_start
            batch = self._items[start : start + self._config.batch_size]
            results = self._executor.map(
                functools.partial(_blind_items, public.numbers), split_even(batch, self._executor.workers)
            )
            blob = b"".join(r[0] for r in results)
            invs = [inv for r in results for inv in r[1]]
            self._send(KIND_BLINDED, pack_items(blob, public.size))
            self._in_flight.append((start, len(batch), invs))
            self._next_start = start + len(batch)

    # -- receiving -------------------------------------------------------------------------------
    def _handle(self, message: Message) -> None:
        if self._state is _ClientState.WAIT_KEY and message.kind == KIND_KEY:
            self._on_key(message.body)
        elif self._state is _ClientState.WAIT_PROOF and message.kind == KIND_PROOF:
            self._on_proof(message.body)
        elif self._state is _ClientState.EXCHANGE and message.kind == KIND_SIGNED and self._in_flight:
            self._on_signed(message.body)
        elif self._state is _ClientState.RECEIVE_SET and message.kind == KIND_SET:
            self._on_set(message.body)
        else:
            raise self._unexpected(message, self._state.value)

    def _on_key(self, body: bytes) -> None:
        self._candidate = RsaPublicKey.from_der(body, bits=self._config.key_bits)
        self._state = _ClientState.WAIT_PROOF

    def _on_proof(self, body: bytes) -> None:
        candidate = self._candidate
        if candidate is None:  # pragma: no cover - the state machine orders key before proof
            raise ProtocolStateError("the server's key has not arrived")
        k = rsa_proof.proof_size(candidate.e)
        blob = unpack_items(body, candidate.size, exact_count=k)
        roots = [blob[i * candidate.size : (i + 1) * candidate.size] for i in range(k)]
        rsa_proof.verify(candidate, self._nonce, roots)
        self._public = candidate
        self._state = _ClientState.EXCHANGE
        self._set_phase("blind", len(self._items))
        if not self._items:
            self._start_receiving_set()

    def _key(self) -> RsaPublicKey:
        if self._public is None:
            raise ProtocolStateError("the server's key has not arrived")
        return self._public

    def _on_signed(self, body: bytes) -> None:
        public = self._key()
        start, count, invs = self._in_flight.popleft()
        k = public.size
        blob = unpack_items(body, k, exact_count=count)
        batch = [
            (self._items[start + i], blob[i * k : (i + 1) * k], invs[i]) for i in range(count)
        ]
        results = self._executor.map(
            functools.partial(_finalize_items, public.numbers), split_even(batch, self._executor.workers)
        )
        hashes = b"".join(results)
        self._full[start * FULL_HASH : (start + count) * FULL_HASH] = hashes
        trunc = self._trunc
        index, collisions = self._index, self._collisions
        for i in range(count):
            t = hashes[i * FULL_HASH : i * FULL_HASH + trunc]
            if t in index:
                collisions.setdefault(t, []).append(start + i)
            else:
                index[t] = start + i
        self._advance(count)
        if self._next_start >= len(self._items) and not self._in_flight:
            self._start_receiving_set()

    def _start_receiving_set(self) -> None:
        self._state = _ClientState.RECEIVE_SET
        self._set_phase("match", self._peer_size)
        if self._peer_size == 0:
            self._complete()

    def _on_set(self, body: bytes) -> None:
        remaining = self._peer_size - self._set_received
        blob = unpack_items(body, self._trunc, max_count=min(remaining, MAX_BATCH_ITEMS))
        trunc = self._trunc
        count = len(blob) // trunc
        if count == 0:
            raise MalformedMessage("empty batch of server hashes")
        index, matched = self._index, self._matched
        base = self._set_received
        for i in range(count):
            t = blob[i * trunc : (i + 1) * trunc]
            c = index.get(t)
            if c is None:
                continue
            for candidate in [c, *self._collisions.get(t, ())]:
                if candidate not in matched:  # pair each server position with one client key
                    matched[candidate] = base + i
                    break
        self._set_received += count
        self._advance(count)
        if self._set_received == self._peer_size:
            self._complete()

    def _complete(self) -> None:
        full = self._full
        pairs = list(self._matched.items())
        details = {
            "key_fingerprint": self._public.fingerprint_hex() if self._public else None,
            "hash_bytes": self._trunc,
            "peer_size": self._peer_size,
        }
        if self._config.reveal is Reveal.BOTH:
            pairs.sort(key=lambda p: full[p[0] * FULL_HASH : (p[0] + 1) * FULL_HASH])
            claims = b"".join(
                w.to_bytes(4, "big") + match_evidence(full[c * FULL_HASH : (c + 1) * FULL_HASH]) for c, w in pairs
            )
            self._send(KIND_MATCH, pack_items(claims, CLAIM_BYTES))
            indices = [c for c, _w in pairs]
        else:
            indices = sorted(c for c, _w in pairs)
        self._outcome = PsiOutcome(indices, len(indices), details)
        self._state = _ClientState.DONE
        self._finish()



class _ServerState(enum.Enum):
    """WAIT_NONCE -> SIGN -> SEND_SET -> (both: WAIT_MATCH) -> DONE (any -> failed on error)."""

    WAIT_NONCE = "wait-nonce"
    SIGN = "sign"
    SEND_SET = "send-set"
    WAIT_MATCH = "wait-match"
    DONE = "done"


class Server(PsiParty):
    """The signing party: signs the client's blinded values and sends its own hashed set.

    Without ``key`` a fresh key of ``config.key_bits`` is drawn for this session. ``signed_set``
    (from :func:`sign_own_set` or a cache) must belong to ``key`` and ``items``; without it the
    server signs its set during the session and exposes it as :attr:`signed_set` afterwards.
    """

    def __init__(
        self,
        items: Sequence[bytes],
        config: Config,
        *,
        peer_size: int,
        executor: Executor,
        key: RsaKey | None = None,
        signed_set: SignedSet | None = None,
    ) -> None:
        super().__init__()
        _check_items(items, peer_size)
        if key is None:
            if signed_set is not None:
                raise UsageError("a precomputed signed set needs the key it was signed with")
            key = RsaKey.generate(config.key_bits)
        elif key.bits != config.key_bits:
            raise UsageError(f"the server key has {key.bits} bits but key_bits is {config.key_bits}")
        if signed_set is not None:
            if signed_set.key_fingerprint != key.fingerprint():
                raise UsageError("the precomputed signed set was made with another key")
            if len(signed_set) != len(items):
                raise UsageError("the precomputed signed set does not match the input size")
        self._items = items
        self._config = config
        self._peer_size = peer_size
        self._executor = executor
        self._key = key
        self._params = key.crt_params()
        self._n = key.public.n
        self._k_len = key.public.size
        self._trunc = truncation_length(peer_size, len(items))
        self._state = _ServerState.WAIT_NONCE
        self._signed_received = 0
        self._signed_set = signed_set
        self._order = signed_set.order if signed_set is not None else None
        self._own_hashes = bytearray()
        self._set_sent = 0

    @property
    def public_key(self) -> RsaPublicKey:
        return self._key.public

    @property
    def signed_set(self) -> SignedSet | None:
        """The server's signed set, once computed (for the caller to cache)."""
        return self._signed_set

    # -- sending ---------------------------------------------------------------------------------
    def _produce(self) -> None:
        if self._state is _ServerState.SEND_SET:
            self._send_set_batch()

    def _start_sending_set(self) -> None:
        self._state = _ServerState.SEND_SET
        self._set_phase("server-set", len(self._items))
        if self._order is None:
            self._order = random_permutation(len(self._items))

    def _wire_order(self) -> np.ndarray:
        if self._order is None:
            raise ProtocolStateError("the server's wire order is not drawn yet")
        return self._order

    def _send_set_batch(self) -> None:
        total = len(self._items)
        if self._set_sent < total:
            start = self._set_sent
            stop = min(total, start + self._config.batch_size)
            if self._signed_set is not None:
                blob = self._signed_set.truncated(start, stop, self._trunc)
            else:
                wire_items = [self._items[i] for i in self._wire_order()[start:stop]]
                results = self._executor.map(
                    functools.partial(sign_own_items, self._params), split_even(wire_items, self._executor.workers)
                )
                full = b"".join(results)
                self._own_hashes += full
                rows = np.frombuffer(full, dtype=np.uint8).reshape(-1, FULL_HASH)
                blob = rows[:, : self._trunc].tobytes()
            self._send(KIND_SET, pack_items(blob, self._trunc))
            self._set_sent = stop
            self._advance(stop - start)
        if self._set_sent >= total:
            if self._signed_set is None:
                self._signed_set = SignedSet(self._key.fingerprint(), bytes(self._own_hashes), self._wire_order())
                self._own_hashes = bytearray()
            if self._config.reveal is Reveal.BOTH:
                self._state = _ServerState.WAIT_MATCH
                self._set_phase("match", 0)
            else:
                self._complete(None)

    # -- receiving -------------------------------------------------------------------------------
    def _handle(self, message: Message) -> None:
        if self._state is _ServerState.WAIT_NONCE and message.kind == KIND_NONCE:
            self._on_nonce(message.body)
        elif self._state is _ServerState.SIGN and message.kind == KIND_BLINDED:
            self._on_blinded(message.body)
        elif self._state is _ServerState.WAIT_MATCH and message.kind == KIND_MATCH:
            self._on_match(message.body)
        else:
            raise self._unexpected(message, self._state.value)

    def _on_nonce(self, body: bytes) -> None:
        if len(body) != rsa_proof.NONCE_BYTES:
            raise MalformedMessage(f"the client's proof nonce must be {rsa_proof.NONCE_BYTES} bytes")
        self._send(KIND_KEY, self._key.public.to_der())
        self._send(KIND_PROOF, pack_items(rsa_proof.prove(self._key, bytes(body)), self._k_len))
        self._state = _ServerState.SIGN
        self._set_phase("sign", self._peer_size)
        if self._peer_size == 0:
            self._start_sending_set()

    def _on_blinded(self, body: bytes) -> None:
        remaining = self._peer_size - self._signed_received
        k = self._k_len
        blob = unpack_items(body, k, max_count=min(remaining, MAX_BATCH_ITEMS))
        count = len(blob) // k
        if count == 0:
            raise MalformedMessage("empty batch of blinded values")
        n = self._n
        for i in range(count):
            y = int.from_bytes(blob[i * k : (i + 1) * k], "big")
            if not 0 < y < n:
                raise MalformedMessage("blinded value out of range (must be 0 < y < N)")
        per_worker = -(-count // self._executor.workers)
        pieces = [blob[i * k : (i + per_worker) * k] for i in range(0, count, per_worker)]
        signed = b"".join(self._executor.map(functools.partial(_sign_blinded, self._params), pieces))
        self._send(KIND_SIGNED, pack_items(signed, k))
        self._signed_received += count
        self._advance(count)
        if self._signed_received == self._peer_size:
            self._start_sending_set()
            self._send_set_batch()

    def _on_match(self, body: bytes) -> None:
        """Accept the client's claims only if each names a distinct position, in the aligned
        order, with the evidence only a holder of that key's signature can compute."""
        if self._signed_set is None:
            raise ProtocolStateError("the server's set is not complete")
        total = len(self._items)
        blob = unpack_items(body, CLAIM_BYTES, max_count=min(total, self._peer_size))
        signed_set = self._signed_set
        positions: list[int] = []
        previous = b""
        valid = True
        for i in range(len(blob) // CLAIM_BYTES):
            claim = blob[i * CLAIM_BYTES : (i + 1) * CLAIM_BYTES]
            w = int.from_bytes(claim[:4], "big")
            if w >= total:
                raise MalformedMessage("a claimed match names a position outside the server's set")
            h = signed_set.full_hash(w)
            if h <= previous:  # strictly increasing full hashes: the aligned order, no repeats
                raise MalformedMessage("matched positions are repeated or not in the aligned order")
            previous = h
            valid &= evidence_matches(h, claim[4:])
            positions.append(w)
        if not valid:
            raise MalformedMessage("the client claimed matches it cannot prove (wrong match evidence)")
        order = signed_set.order
        self._complete([int(order[w]) for w in positions])

    def _complete(self, indices: list[int] | None) -> None:
        details = {
            "key_fingerprint": self._key.public.fingerprint_hex(),
            "hash_bytes": self._trunc,
            "peer_size": self._peer_size,
        }
        self._outcome = PsiOutcome(indices, None if indices is None else len(indices), details)
        self._state = _ServerState.DONE
        self._finish()

