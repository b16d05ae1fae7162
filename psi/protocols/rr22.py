"""OKVS-based PSI (RR22's OKVS, PaXoS-style OPRF from OT extension): ``--protocol rr22``.

Message flow (client = PSI receiver, learns the result; server = PSI sender)::

    client                                                 server
      hello (size, nonce)                  ───▶ ◀───        hello (size, nonce)
      rr22.base.a  base-OT point A          ───▶
                                            ◀───            rr22.base.b  512 points ‖ code seed
      rr22.okvs    seed ‖ bins ‖ columns    ───▶
      rr22.u       retry counters ‖ U (whole bins + 40 check rows) ───▶   (≤ ``window`` ahead)
                                            ◀───            rr22.ack  the batch's check challenge
      rr22.check   t̃ ‖ w̃ (40 combinations) ───▶            (verified; values only after all)
                                            ◀───            rr22.values  n_S values, shuffled, batched
      rr22.ack     per values batch         ───▶
      rr22.matches positions ‖ evidence (``both``) ───▶

1. Both sides hash every item to 128 bits (:mod:`psi.crypto.batch_hash`: CBC-MAC with AES keyed
   from the session id, all items in a few array calls) and then to a
   76-bit ``h(x)`` (AES under a key from the session and the server's seed).
2. The client encodes ``P' = Encode({(x, h(x))})`` in the RR22 OKVS (:mod:`psi.crypto.okvs`:
   binned 3-hash rows plus a binary dense part, ``≈ 1.35 n_R`` rows at 2^20) under a fresh seed
   chosen after its items are fixed.
3. 512 base OTs (the server is the base-OT *receiver* with secret ``s``), then one OT-extension
   row per OKVS row with the code word ``C(P'_i)`` of the linear [511, 76, ≥171] BCH code
   (:mod:`psi.ot.bch`, shared with KKRT) as the chosen word: the client gets ``t_i``, the server
   ``q_i = t_i ⊕ (C(P'_i) ∧ s)`` — a VOLE over GF(2)^76 with the product ``C(a) ∧ s``
   (PaXoS PSI, Pinkas–Rosulek–Trieu–Yanai 2020; batch by batch in :mod:`psi.ot.vole`, each
   batch its own PRG stream). OKVS and code being GF(2)-linear,
   ``Decode(Q, y) ⊕ (C(h(y)) ∧ s) = Decode(T, y) ⊕ (C(Decode(P', y) ⊕ h(y)) ∧ s)``.
4. Consistency check (OOS17, as libOTe realises it; :mod:`psi.ot.oos`): every batch carries
   40 extra random rows; after the batch the server sends a fresh 16-byte seed, both expand it
   (keyed by session, batch number and seed) into a 40-bit coefficient word ``x_j`` per row,
   the client returns ``t̃_l = t*_l ⊕ ⊕_j x_j[l] t_j`` and ``w̃_l = w*_l ⊕ ⊕_j x_j[l] P'_j``
   (sums over the bit columns, four Russians), and the server checks
   ``t̃_l ⊕ q̃_l = C(w̃_l) ∧ s``. Rows that are not code words fail it; the server sends nothing
   derived from ``s`` before every batch has passed. (Version 1 expanded the seed differently;
   the versions refuse each other at the hello, exit 5.)
5. OPRF: ``F(y) = H(y, Decode(Q, y) ⊕ (C(h(y)) ∧ s))`` (fixed-key AES tweakable hash,
   :mod:`psi.ot.aes_hash`, 16 bytes); for ``x`` in the client's set the client computes it as
   ``H(x, Decode(T, x))``. The server sends ``H'(F(y))`` truncated to
   ``ℓ = ⌈(40 + log2(n_S·n_R))/8⌉`` bytes for all its items in a fresh random order.
6. ``both``: the client sends, for each match, the wire position and the evidence
   ``H''(F(y))`` (16 bytes, another domain of the hash), sorted by evidence; the server
   recomputes the evidence of every claimed position and refuses the whole claim list
   (exit 4) unless all of it matches (one constant-time comparison).

What each party learns: the client the intersection and ``n_S``; the server ``n_R`` (and the
intersection in ``both`` mode). Security: semi-honest base OTs (:mod:`psi.ot.base_ot`); against
a cheating client the BCH code and the check: for ``y`` the client did not program,
``Decode(P', y) ⊕ h(y) ≠ 0`` so ``C(…)`` has weight ≥ 171, of which the check lets at most
about 40 bits of ``s`` leak (failing with probability 1 − 2^-c for c bits). A cheating client
chooses ``P'`` freely and so learns ``F`` at the points where ``Decode(P', ·) = h(·)``: about
``columns ≈ 1.35 n_R`` points of its choice (each point beyond needs 2^76 tries), never the
server's whole set. See docs/SECURITY.md.
"""

from __future__ import annotations

import enum
import functools
import hmac
import secrets
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..crypto import batch_hash, okvs
from ..errors import MalformedMessage
from ..messages import Message
from ..ot import bch, oos
from ..ot.aes_hash import TweakHash, derive_key
from ..ot.base_ot import BaseOtReceiver, BaseOtSender
from ..crypto.suite import STANDARD, Suite, get_suite, hello_params as suite_params

from ..ot import vole
from ..ot.bitmatrix import transpose
from ..parallel import Executor
from .base import PsiOutcome, Reveal, Role
from .ot_psi import SIGMA, check_options, pack_claims, parse_claims, scatter
from .ot_psi import OtPsiParty, has_repeats, secure_permutation, sigma_value_bytes

__all__ = ["NAME", "VERSION", "Config", "Client", "Server", "value_bytes", "WIDTH"]

NAME = "rr22"
VERSION = 2  # 2: OOS17 check with psi.ot.oos's challenge expansion and answer layout (1: rr22's own)
WIDTH = 512  # bits per OKVS value and OT-extension row
EVIDENCE_BYTES = 16
CHECKS = oos.S  # OOS17 consistency checks per batch (40: statistical security 2^-40)
_CHECK_BYTES = oos.RESPONSE_BYTES  # CHECKS × (64-byte t̃ ‖ 10-byte w̃)
_HIGH_MASK = np.uint64((1 << (bch.DIMENSION - 64)) - 1)
_WORDS = WIDTH // 64
_DOMAIN_OPRF, _DOMAIN_WIRE, _DOMAIN_EVIDENCE = 0x52, 0x53, 0x54


@dataclass(frozen=True)
class Config:
    """``batch_rows``: OKVS rows per correction batch (whole bins; agreed); ``window`` local."""

    reveal: Reveal = Reveal.RECEIVER
    batch_rows: int = 1 << 17
    window: int = 4
    suite: str = "standard"  # psi.crypto.suite: gm = SM3 hashes, SM4 PRG/π/OKVS rows, SM2 base OT

    def __post_init__(self) -> None:
        check_options(NAME, self.reveal, "batch_rows", self.batch_rows, self.window)
        get_suite(self.suite)

    def hello_params(self) -> dict:
        return {
            "reveal": Reveal(self.reveal).value,
            "batch_rows": self.batch_rows,
            "width": WIDTH,
            "sigma": SIGMA,
            "okvs": f"rr22-w3-binary-dense-bin{okvs.BIN_SIZE}",
            "code": "bch-511-76",
            "checks": f"oos17-v2-s{CHECKS}",
            **suite_params(self.suite),
        }


def value_bytes(server_size: int, client_size: int) -> int:
    """``ℓ``: bytes of each server value on the wire (false match ≤ 2^-40 overall)."""
    return sigma_value_bytes(server_size, client_size)


class _State(enum.Enum):
    HELLO = "hello"
    BASE = "base"
    OKVS = "okvs"
    CORRECTIONS = "corrections"
    VALUES = "values"
    MATCHES = "matches"
    DONE = "done"
# Client: HELLO → BASE → CORRECTIONS → VALUES → DONE.  Server: HELLO → BASE → OKVS →
# CORRECTIONS → VALUES [→ MATCHES in both mode] → DONE.  Any error → failed (Party base).


# -- per-item work, top-level so the executor can ship it to workers ---------------------------


def _digest_piece(items: Sequence[bytes], key: bytes, suite: Suite = STANDARD) -> np.ndarray:
    if not suite.is_gm:  # AES CBC-MAC over whole arrays (psi.crypto.batch_hash); suites arrive pickled in workers
        return batch_hash.keyed_digests(items, key)
    joined = suite.keyed_digests(items, key, 16)  # gm: SM3, one digest per item
    return np.frombuffer(joined, dtype=np.uint8).reshape(len(items), 16)


def _tweaks(digests: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(digests[:, :8]).view(np.uint64).reshape(-1)


def _oprf(decoded: np.ndarray, digests: np.ndarray, session: bytes, suite: Suite = STANDARD) -> np.ndarray:
    """``F = H(x, value)``: ``uint8 (n, 16)`` from 512-bit decoded values."""
    rows = np.ascontiguousarray(decoded).view(np.uint8).reshape(-1, WIDTH // 8)
    return TweakHash(session, suite).hash_rows(rows, 0, out_bytes=16, domain=_DOMAIN_OPRF, indices=_tweaks(digests))


def _second_hash(oprf: np.ndarray, digests: np.ndarray, session: bytes, domain: int, size: int,
                 chunk: int = 1 << 18, suite: Suite = STANDARD) -> np.ndarray:
    """``H'(F)`` truncated to ``size`` bytes, ``chunk`` rows at a time (the hash's temporaries
    are several times its input: bounded at 2^24 items)."""
    out = np.empty((oprf.shape[0], size), dtype=np.uint8)
    hasher = TweakHash(session, suite)
    for lo in range(0, oprf.shape[0], chunk):
        out[lo : lo + chunk] = hasher.hash_rows(oprf[lo : lo + chunk], 0, out_bytes=size, domain=domain,
                                                indices=_tweaks(digests[lo : lo + chunk]))
    return out


def _item_hash(code_key: bytes, digests: np.ndarray, suite: Suite = STANDARD) -> np.ndarray:
    """``h(x)``: 76 bits per item (``uint64 (n, 2)``), AES under a key from the server's seed."""
    out = np.zeros((digests.shape[0], 2), dtype=np.uint64)
    if digests.shape[0]:
        out[:] = okvs.ecb_rows(code_key, digests, suite).view(np.uint64).reshape(-1, 2)
        out[:, 1] &= _HIGH_MASK
    return out


def _client_batch(digests: np.ndarray, bins: np.ndarray, *, nb: int, batch: int, params: okvs.Params,
                  seed: bytes, code_key: bytes, keys0: np.ndarray, keys1: np.ndarray,
                  session: bytes, suite: Suite = STANDARD) -> tuple[bytes, bytes, np.ndarray, np.ndarray]:
    """Encode one batch's ``nb`` bins (``bins``: each key's bin within the batch), extend their rows (and ``CHECKS`` random
    rows for the consistency check), decode at own items.

    Returns (retry counters, wire ``U``, own OPRF values ``uint8 (n, 16)``, the messages ``P'``
    of every row, check rows included, kept for the check). ``T`` is not returned: the check
    regenerates its columns from the seeds (:func:`_client_check`).
    """
    table, counters, cols, masks = okvs.encode(digests, bins, _item_hash(code_key, digests, suite), nb, seed, params, suite)
    rows = nb * params.cols_per_bin
    messages = np.empty((rows + CHECKS, 2), dtype=np.uint64)
    messages[:rows] = table.reshape(rows, 2)
    messages[rows:] = oos.random_words(CHECKS)
    t_rows, wire = vole.receiver_batch(keys0, keys1, batch, bch.code().encode(messages), suite)
    t_words = np.ascontiguousarray(t_rows[:rows]).view(np.uint64).reshape(nb, params.cols_per_bin, _WORDS)
    decoded = okvs.decode(t_words, bins, cols, masks, params)
    return counters.tobytes(), wire, _oprf(decoded, digests, session, suite), messages


def _client_check(messages: np.ndarray, challenge: bytes, *, keys0: np.ndarray, batch: int, session: bytes,
                  suite: Suite = STANDARD) -> bytes:
    """The client's ``rr22.check`` answer for one batch (:func:`psi.ot.oos.receiver_response`):
    ``t̃_l ‖ w̃_l`` for the ``CHECKS`` combinations of :func:`psi.ot.oos.challenge_words`.

    ``T``'s columns are the seeds' PRG stream for the batch (``T = G_b(k^0)``), so they are
    regenerated here rather than kept from the batch: ``messages`` (``uint64 (rows + CHECKS, 2)``)
    is all the batch leaves behind.
    """
    rows = messages.shape[0] - CHECKS
    t_cols = vole.receiver_columns(keys0, batch, rows + CHECKS, suite)
    return oos.receiver_response(t_cols, messages, oos.challenge_words(session, batch, challenge, rows, suite))


def _server_batch(digests: np.ndarray, bins: np.ndarray, wire: bytes, *, counters: np.ndarray, nb: int,
                  batch: int, challenge: bytes, params: okvs.Params, seed: bytes, code_key: bytes, keys: np.ndarray,
                  secret_bits: np.ndarray, session: bytes, width: int,
                  suite: Suite = STANDARD) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The server's OPRF values at its items in these bins (``F`` 16 bytes, wire ``ℓ`` bytes)
    and its side of the consistency check (``q̃``, ``uint8 (CHECKS, 64)``)."""
    rows = nb * params.cols_per_bin
    q_cols = vole.sender_columns(keys, secret_bits, batch, rows + CHECKS, wire, suite)
    q_check = oos.sender_expected(q_cols, oos.challenge_words(session, batch, challenge, rows, suite))
    q_words = transpose(q_cols)[:rows].view(np.uint64).reshape(nb, params.cols_per_bin, _WORDS)
    cols, masks = okvs.rows_of(digests, bins, seed, counters, params, suite)
    decoded = okvs.decode(q_words, bins, cols, masks, params)
    code = bch.code().encode(_item_hash(code_key, digests, suite)).view(np.uint64)
    code &= np.packbits(secret_bits, bitorder="little").view(np.uint64)[None, :]
    decoded ^= code
    oprf = _oprf(decoded, digests, session, suite)
    return oprf, _second_hash(oprf, digests, session, _DOMAIN_WIRE, width, suite=suite), q_check


# -- the parties --------------------------------------------------------------------------------


class _Common(OtPsiParty):
    def __init__(self, items: Sequence[bytes], config: Config, peer_size: int, executor: Executor, role: Role) -> None:
        super().__init__(NAME, VERSION, _State, items, config, peer_size, executor, role)

    def _accept_hello(self, message: Message) -> None:
        super()._accept_hello(message)
        key = derive_key(b"rr22-item-digest", self._session, suite=self._suite)
        fn = functools.partial(_digest_piece, key=key, suite=self._suite)
        self._digest_futures = scatter(self._executor, fn, self._items)

    def _digests(self) -> np.ndarray:
        parts = [f.result() for f in self._digest_futures]
        self._digest_futures = []
        if not parts:
            return np.zeros((0, 16), dtype=np.uint8)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _layout(self, digests: np.ndarray, seed: bytes) -> None:
        """Bin every own item; ``_order`` sorts items by bin, ``_starts[b]`` is bin b's first."""
        params = self._params
        bins = okvs.bin_of(digests, seed, params.bins, self._suite)
        order = np.argsort(bins.astype(np.uint16) if params.bins <= 1 << 16 else bins, kind="stable")  # radix sort
        self._order = order.astype(np.uint32) if self._n < 1 << 32 else order  # 4 bytes an item kept
        self._sorted_digests = digests[order]
        del order
        self._starts = np.concatenate([[0], np.cumsum(np.bincount(bins, minlength=params.bins))])
        self._bins_per_batch = max(1, self._config.batch_rows // params.cols_per_bin)
        self._batches = -(-params.bins // self._bins_per_batch)

    def _release(self) -> None:
        """Drop the per-item arrays once the outcome is known (the caller writes its output
        while this party object may still be referenced)."""
        for name in ("_sorted_digests", "_order", "_own", "_values", "_oprf", "_perm", "_wire", "_kept", "_pending"):
            if hasattr(self, name):
                setattr(self, name, None)

    def _batch_bins(self, first: int, nb: int) -> np.ndarray:
        """Each sorted item's bin within the batch whose bins are ``first .. first+nb-1``."""
        return np.repeat(np.arange(nb, dtype=np.int64), np.diff(self._starts[first : first + nb + 1]))

    def _batch_slice(self, k: int) -> tuple[int, int, slice]:
        first = k * self._bins_per_batch
        last = min(first + self._bins_per_batch, self._params.bins)
        return first, last - first, slice(int(self._starts[first]), int(self._starts[last]))


class Client(_Common):
    """The PSI receiver: learns which of its items the server also holds."""

    def __init__(self, items: Sequence[bytes], config: Config, *, peer_size: int, executor: Executor) -> None:
        super().__init__(items, config, peer_size, executor, Role.CLIENT)
        self._n, self._n_server = len(items), peer_size
        self._width = value_bytes(peer_size, len(items))
        self._params = okvs.params_for(len(items))

    def _handle(self, message: Message) -> None:
        state = self._state
        if state is _State.HELLO:
            self._accept_hello(message)
            self._base = BaseOtSender(WIDTH, self._session, self._suite)
            self._send("rr22.base.a", self._base.first_message())
            self._state = _State.BASE
            self._set_phase("base-ot")
        elif state is _State.BASE and message.kind == "rr22.base.b":
            self._base_done(message.body)
        elif state is _State.CORRECTIONS and message.kind == "rr22.ack" and self._acked < self._sent:
            self._answer_challenge(message.body)
        elif state is _State.VALUES and message.kind == "rr22.values":
            self._take_values(message.body)
        else:
            raise self._unexpected(message, state.value)

    def _base_done(self, body: bytes) -> None:
        point_bytes = self._suite.base_ot.point_bytes
        if len(body) != WIDTH * point_bytes + 16:
            raise MalformedMessage("rr22.base.b has the wrong length")
        keys0, keys1 = self._base.finish(body[: WIDTH * point_bytes])
        code_key = derive_key(b"rr22-code", self._session, body[-16:], suite=self._suite)
        self._set_phase("okvs-hash")
        digests = self._digests()
        while True:  # a seed under which some bin is over capacity is replaced (≤ 2^-42)
            seed = secrets.token_bytes(16)
            self._layout(digests, seed)
            if self._n == 0 or np.diff(self._starts).max() <= self._params.capacity:
                break
        self._send("rr22.okvs", seed + self._params.bins.to_bytes(4, "big") + self._params.total.to_bytes(4, "big"))
        self._batch_fn = functools.partial(_client_batch, params=self._params, seed=seed, code_key=code_key,
                                           keys0=keys0, keys1=keys1, session=self._session, suite=self._suite)
        self._own = np.empty((self._n, 16), dtype=np.uint8)  # OPRF values, in bin order
        self._pending: dict[int, Future] = {}
        self._kept: dict[int, np.ndarray] = {}  # P' (and check words) of sent batches until checked
        self._check_fn = functools.partial(_client_check, keys0=keys0, session=self._session, suite=self._suite)
        self._submitted = self._sent = self._acked = 0
        self._state = _State.CORRECTIONS
        self._set_phase("okvs-ot", self._batches)

    def _produce(self) -> None:
        if self._state is not _State.CORRECTIONS:
            return
        ahead = self._config.window + self._executor.workers
        while self._submitted < self._batches and self._submitted < self._sent + ahead:
            k = self._submitted
            first, nb, items = self._batch_slice(k)
            bins = self._batch_bins(first, nb)
            self._pending[k] = self._executor.submit(
                functools.partial(self._batch_fn, nb=nb, batch=k), self._sorted_digests[items], bins)
            self._submitted += 1
        while self._sent < self._batches and self._sent - self._acked < self._config.window:
            _first, _nb, items = self._batch_slice(self._sent)
            counters, wire, own, messages = self._pending.pop(self._sent).result()
            self._own[items] = own
            self._kept[self._sent] = messages
            self._send("rr22.u", counters + wire)
            self._sent += 1

    def _answer_challenge(self, body: bytes) -> None:
        """The server's challenge for the next unacknowledged batch: answer the OOS17 check."""
        if len(body) != 16:
            raise MalformedMessage("rr22.ack: the check challenge has the wrong length")
        k = self._acked
        self._send("rr22.check", self._check_fn(self._kept.pop(k), body, batch=k))
        self._acked += 1
        self._advance(1)
        if self._acked == self._batches:
            self._enter_values()

    def _enter_values(self) -> None:
        self._values = np.empty((self._n_server, self._width), dtype=np.uint8)
        self._filled = 0
        self._state = _State.VALUES
        self._set_phase("values", self._n_server)
        if self._n_server == 0:
            self._match()

    def _take_values(self, body: bytes) -> None:
        step = max(1, self._config.batch_rows)
        expected = min(step, self._n_server - self._filled)
        if len(body) != expected * self._width:
            raise MalformedMessage("rr22.values batch has the wrong length")
        self._values[self._filled : self._filled + expected] = np.frombuffer(body, dtype=np.uint8).reshape(expected, self._width)
        self._filled += expected
        self._advance(expected)
        self._send("rr22.ack")
        if self._filled == self._n_server:
            self._match()

    def _match(self) -> None:
        self._set_phase("match")
        digests = self._sorted_digests
        mine = _second_hash(self._own, digests, self._session, _DOMAIN_WIRE, self._width, suite=self._suite)
        own_rows, wire_rows = _lookup(mine, self._values)
        if has_repeats(own_rows):  # an honest server's values for distinct items collide below 2^-40
            raise MalformedMessage("rr22.values match one item more than once (repeated values)")
        self._values = mine = None
        if self._reveal is Reveal.BOTH:
            evidence = _second_hash(self._own[own_rows], digests[own_rows], self._session, _DOMAIN_EVIDENCE, EVIDENCE_BYTES,
                                    suite=self._suite)
            # an order independent of either input order (the server follows the message order)
            order = np.argsort(np.ascontiguousarray(evidence[:, :8]).view(np.uint64).reshape(-1), kind="stable")
            own_rows, wire_rows, evidence = own_rows[order], wire_rows[order], evidence[order]
            self._send("rr22.matches", pack_claims(wire_rows, evidence))
            indices = self._order[own_rows].tolist()
        else:
            indices = np.sort(self._order[own_rows]).tolist()
        self._release()
        self._done(PsiOutcome(indices, len(indices), {"protocol": NAME, "okvs_rows": self._params.total,
                                                           "value_bytes": self._width}))


class Server(_Common):
    """The PSI sender: answers with OPRF values; learns the match only in ``both`` mode."""

    def __init__(self, items: Sequence[bytes], config: Config, *, peer_size: int, executor: Executor) -> None:
        super().__init__(items, config, peer_size, executor, Role.SERVER)
        self._n, self._n_client = len(items), peer_size
        self._width = value_bytes(len(items), peer_size)
        self._params = okvs.params_for(peer_size)

    def _handle(self, message: Message) -> None:
        state = self._state
        if state is _State.HELLO:
            self._accept_hello(message)
            self._state = _State.BASE
            self._set_phase("base-ot")
        elif state is _State.BASE and message.kind == "rr22.base.a":
            self._base(message.body)
        elif state is _State.OKVS and message.kind == "rr22.okvs":
            self._okvs(message.body)
        elif state is _State.CORRECTIONS and message.kind == "rr22.u" and self._received < self._batches:
            self._correction(message.body)
        elif state is _State.CORRECTIONS and message.kind == "rr22.check" and self._checked < self._received:
            self._check(message.body)
        elif state is _State.VALUES and message.kind == "rr22.ack" and not message.body and self._acked < self._sent:
            self._acked += 1
            if self._acked == self._value_batches:
                self._after_values()
        elif state is _State.MATCHES and message.kind == "rr22.matches":
            self._matches(message.body)
        else:
            raise self._unexpected(message, state.value)

    def _base(self, body: bytes) -> None:
        if len(body) != self._suite.base_ot.point_bytes:
            raise MalformedMessage("rr22.base.a has the wrong length")
        self._secret_bits = np.frombuffer(secrets.token_bytes(WIDTH), dtype=np.uint8) & 1
        self._masked = bch.code().masked(np.packbits(self._secret_bits, bitorder="little"))  # C(·) ∧ s
        reply, self._keys = BaseOtReceiver(self._secret_bits, self._session, self._suite).reply(body)
        code_seed = secrets.token_bytes(16)
        self._code_key = derive_key(b"rr22-code", self._session, code_seed, suite=self._suite)
        self._send("rr22.base.b", reply + code_seed)
        self._state = _State.OKVS
        self._set_phase("okvs")

    def _okvs(self, body: bytes) -> None:
        if len(body) != 24:
            raise MalformedMessage("rr22.okvs has the wrong length")
        seed = body[:16]
        bins, columns = int.from_bytes(body[16:20], "big"), int.from_bytes(body[20:24], "big")
        if bins != self._params.bins:
            raise MalformedMessage(f"rr22.okvs: bins {bins} does not match the peer's set size ({self._params.bins} expected)")
        if columns != self._params.total:
            raise MalformedMessage(f"rr22.okvs: columns {columns} does not match the peer's set size"
                                   f" ({self._params.total} expected)")
        self._layout(self._digests(), seed)
        self._batch_fn = functools.partial(_server_batch, params=self._params, seed=seed, code_key=self._code_key,
                                           keys=self._keys, secret_bits=self._secret_bits, session=self._session,
                                           width=self._width, suite=self._suite)
        self._futures: list[Future] = []
        self._received = self._checked = 0
        self._state = _State.CORRECTIONS
        self._set_phase("okvs-ot", self._batches)

    def _correction(self, body: bytes) -> None:
        k = self._received
        first, nb, items = self._batch_slice(k)
        expected = nb + (nb * self._params.cols_per_bin + CHECKS) * WIDTH // 8
        if len(body) != expected:
            raise MalformedMessage(f"rr22.u: OKVS batch {k} has {len(body)} bytes, {expected} expected")
        counters = np.frombuffer(body[:nb], dtype=np.uint8)
        if counters.size and counters.max() >= okvs.MAX_RETRIES:
            raise MalformedMessage(f"rr22.u: bin retry counter out of range (0..{okvs.MAX_RETRIES - 1})")
        bins = self._batch_bins(first, nb)
        challenge = secrets.token_bytes(16)  # drawn after the batch's rows are fixed
        fn = functools.partial(self._batch_fn, counters=counters.copy(), nb=nb, batch=k,
                               challenge=challenge)
        if self._executor.workers > 1 and k >= self._executor.workers:  # bound the work in flight
            self._futures[k - self._executor.workers].result()
        self._futures.append(self._executor.submit(fn, self._sorted_digests[items], bins, body[nb:]))
        self._received += 1
        self._advance(1)
        self._send("rr22.ack", challenge)

    def _check(self, body: bytes) -> None:
        """OOS17 check of one batch: ``t̃_l ⊕ q̃_l = C(w̃_l) ∧ s`` for every challenge ``l``.

        A client whose rows are not all codewords of the BCH code fails it (except with
        probability about 2^-c for c bits of ``s`` learned); nothing derived from ``s`` leaves
        this side before every batch has passed.
        """
        k = self._checked
        if len(body) != _CHECK_BYTES:
            raise MalformedMessage(f"rr22.check: batch {k} has {len(body)} bytes, {_CHECK_BYTES} expected")
        answer = np.frombuffer(body, dtype=np.uint8).reshape(CHECKS, _CHECK_BYTES // CHECKS)
        w_sum = np.zeros((CHECKS, 16), dtype=np.uint8)
        w_sum[:, : oos.WORD_BYTES] = answer[:, WIDTH // 8 :]
        q_sum = self._futures[k].result()[2]
        oos.verify_sums(answer[:, : WIDTH // 8], q_sum, w_sum.view(np.uint64), self._masked, f"rr22.check: batch {k}")
        self._checked += 1
        if self._checked == self._batches:
            self._compute_values()

    def _compute_values(self) -> None:
        self._set_phase("values")
        results = [f.result()[:2] for f in self._futures]
        self._futures = []
        if results:
            self._oprf = np.concatenate([r[0] for r in results])
            wire = np.concatenate([r[1] for r in results])
        else:
            self._oprf, wire = np.zeros((0, 16), dtype=np.uint8), np.zeros((0, self._width), dtype=np.uint8)
        self._perm = secure_permutation(self._n)
        self._wire = _Permuted(wire, self._perm)  # wire position i holds sorted item perm[i]
        step = self._config.batch_rows
        self._value_batches = -(-self._n // step)
        self._sent = self._acked = 0
        self._state = _State.VALUES
        self._set_phase("values", self._n)
        if self._value_batches == 0:
            self._after_values()

    def _produce(self) -> None:
        if self._state is not _State.VALUES:
            return
        self._send_window("rr22.values", self._wire, self._config.batch_rows, self._value_batches)

    def _after_values(self) -> None:
        self._wire = None
        if self._reveal is Reveal.BOTH:
            self._state = _State.MATCHES
            self._set_phase("matches")
        else:
            self._release()
            self._done(PsiOutcome(None, None, {"protocol": NAME}))

    def _matches(self, body: bytes) -> None:
        wire, evidence = parse_claims(body, "rr22.matches", EVIDENCE_BYTES, min(self._n, self._n_client), self._n)
        if has_repeats(wire):
            raise MalformedMessage("rr22.matches names one item twice")
        rows = self._perm[wire]
        expected = _second_hash(self._oprf[rows], self._sorted_digests[rows], self._session, _DOMAIN_EVIDENCE, EVIDENCE_BYTES,
                                suite=self._suite)
        if not hmac.compare_digest(expected.tobytes(), evidence.tobytes()):
            raise MalformedMessage("rr22.matches: match evidence does not verify (the peer claims items it did not match)")
        indices = self._order[rows].tolist()
        self._release()
        self._done(PsiOutcome(indices, len(indices), {"protocol": NAME}))


class _Permuted:
    """``data[perm]`` gathered slice by slice as the values are sent (no second full copy)."""

    def __init__(self, data: np.ndarray, perm: np.ndarray) -> None:
        self.data, self.perm = data, perm

    def __getitem__(self, part: slice) -> np.ndarray:
        return self.data[self.perm[part]]


def _lookup(queries: np.ndarray, table: np.ndarray, chunk: int = 1 << 20) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (query row, table row) of equal byte rows (table rows are unique w.h.p.).

    Each side becomes one sorted ``uint64`` array of ``key << bits | row`` (``key``: the first 8
    bytes, ``bits``: enough for either side's row numbers), so 8 bytes an item hold both the
    sort key and the row; sorted queries are searched in chunks (each search starts where the
    last ended). Rows whose shortened keys collide are compared in full, a few passes over the
    rare longer spans."""
    empty = np.zeros(0, dtype=np.int64)
    if queries.shape[0] == 0 or table.shape[0] == 0:
        return empty, empty
    bits = np.uint64(max(queries.shape[0], table.shape[0], 2) - 1).item().bit_length()
    shift, low = np.uint64(bits), np.uint64((1 << bits) - 1)
    head = min(table.shape[1], 8)

    def keyed(rows: np.ndarray) -> np.ndarray:
        packed = np.zeros((rows.shape[0], 8), dtype=np.uint8)
        packed[:, :head] = rows[:, :head]
        out = packed.view(np.uint64).reshape(-1)
        out <<= shift
        out |= np.arange(rows.shape[0], dtype=np.uint64)
        out.sort()
        return out

    sorted_table = keyed(table)
    sorted_queries = keyed(queries)
    q_out: list[np.ndarray] = []
    s_out: list[np.ndarray] = []
    for lo in range(0, sorted_queries.size, chunk):
        prefix = sorted_queries[lo : lo + chunk] >> shift
        left = np.searchsorted(sorted_table, prefix << shift, "left")
        hit = np.flatnonzero((sorted_table[np.minimum(left, sorted_table.size - 1)] >> shift) == prefix)
        left = left[hit]
        span = np.searchsorted(sorted_table, (prefix[hit] << shift) | low, "right") - left
        q_all = (sorted_queries[lo : lo + chunk][hit] & low).astype(np.int64)
        for extra in range(int(span.max(initial=0))):  # shortened-key collisions: a few passes
            live = np.flatnonzero(span > extra)
            q_rows = q_all[live]
            t_rows = (sorted_table[left[live] + extra] & low).astype(np.int64)
            same = (queries[q_rows] == table[t_rows]).all(axis=1)
            q_out.append(q_rows[same])
            s_out.append(t_rows[same])
    if not q_out:
        return empty, empty
    return np.concatenate(q_out), np.concatenate(s_out)
