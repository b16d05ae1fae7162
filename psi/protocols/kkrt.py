"""KKRT16 PSI: a batched OPRF from 1-out-of-∞ OT extension, with cuckoo hashing, made
robust against a malicious client with the OOS17 check.

Message flow (client = PSI receiver, learns the result; server = PSI sender)::

    client                                               server
      hello (size, nonce)                  ───▶ ◀───       hello (size, nonce)
      kkrt.base.a  A ‖ cuckoo seed ‖ bins  ───▶
                                           ◀───           kkrt.base.b  512 points
      kkrt.u  corrections, ``batch_size`` bins + 40 check rows each ───▶  (≤ ``window`` open)
                                           ◀───           kkrt.challenge  16-byte seed per batch
      kkrt.check  40 × 74-byte answer per batch ───▶      (verified before any value is computed)
                                           ◀───           kkrt.values  3·n_S OPRF values, batched
      kkrt.ack  per values batch           ───▶
      kkrt.matches  (``both`` only)        ───▶           positions ‖ 8-byte evidence each

1. Both sides pre-hash every item to 192 bits (BLAKE2b keyed with the session id). The client
   cuckoo-hashes its digests into ``m = ceil(e·n_R)`` bins with three hash functions and no
   stash (``e = (40 + log2 n_R + 256)/240``; :mod:`psi.cuckoo`), re-seeding on failure. Bins use
   permutation-based hashing, so the code input of an item placed by hash function ``h`` is
   only ``d_R ‖ h`` (76 bits) and the bin determines the rest of the digest.
2. 512 base OTs (the server is the base-OT *receiver* with secret ``Δ``), then one OT-extension
   row per bin with the linear [511, 76] BCH code ``C`` (:mod:`psi.ot.bch`): for the item in bin
   ``b`` with code input ``w`` the client obtains ``F(b, w) = H(b, t_b)``; the server can evaluate
   ``F(b, w') = H(b, q_b ⊕ (C(w') ∧ Δ))`` for any ``w'``. ``H`` is the fixed-key-AES tweakable
   hash of :mod:`psi.ot.aes_hash` with the bin number as tweak. Every correction batch ends with
   40 check rows; after a batch has arrived the server sends a fresh challenge and verifies the
   client's answer (:mod:`psi.ot.oos`); a client whose rows are not code words is stopped with
   :class:`~psi.ot.oos.CheatingDetected` before the server computes a single OPRF value.
3. For each hash function ``h`` the server sends ``F(bin_h(y), d_R(y)‖h)`` for all its items,
   truncated to ``ℓ`` bytes (:func:`value_bytes`), in a fresh random order per ``h`` (drawn from
   the OS). The client looks up each of its items in the list for the hash function that placed it.
4. ``both``: the client sends, per match, the wire position of the server value and the second
   output block of the same hash (its first 8 bytes; never sent by the server, so only a client whose
   bin holds that item's code input can compute it), sorted by the matched OPRF value; the
   server recomputes each block and refuses the whole claim (exit 4, nothing written) on any
   mismatch, then lists its matched indices in that order.

What each party learns: the client the intersection and ``n_S``; the server ``n_R`` (and the
intersection in ``both`` mode). A false match needs two items with the same digest in a bin or a
collision of ℓ-byte values: below 2^-40 per session (:func:`false_match_log2`). Malicious client:
caught by the check except with probability 2^-40; it still chooses freely what to put in each
bin (one OPRF query per bin, ``≈1.32·n_R`` queries instead of ``n_R``), so it can test that many
candidates of its choice. Malicious server: not covered (it picks its set freely, can send
garbage so the client misses matches, and may lie about its own "both" output); it learns
nothing about the client's items from the OT. ``cardinality`` mode is not offered: the client
learns matched positions.
"""

from __future__ import annotations

import enum
import functools
import hmac
import math
import os
import secrets
import weakref
from concurrent.futures import Future
from dataclasses import dataclass
from multiprocessing import shared_memory
from typing import Any, Sequence

import numpy as np

from ..crypto.suite import get_suite, hello_params as suite_params
from ..errors import MalformedMessage
from ..messages import Message
from ..ot import bch, oos
from ..ot.aes_hash import TweakHash
from ..ot.base_ot import BaseOtReceiver, BaseOtSender
from ..ot.bitmatrix import transpose
from ..ot.extension import ExtensionReceiver, ExtensionSender, padded_rows
from ..parallel import Executor
from .. import cuckoo
from .base import PsiOutcome, Reveal, Role
from . import kkrt_work
from .ot_psi import MIN_PIECE as _MIN_PIECE, SIGMA, check_options, done_future as _done_future
from .ot_psi import OtPsiParty, has_repeats, pack_claims, parse_claims, scatter as _scatter, secure_permutation, sigma_value_bytes

__all__ = ["NAME", "VERSION", "Config", "Client", "Server", "value_bytes", "false_match_log2", "secure_permutation"]

NAME = "kkrt"
VERSION = 2  # 2: BCH code, phasing, OOS17 check, evidence in "both" (1: pseudorandom code)
CODE_WIDTH = bch.WIDTH
EVIDENCE_BYTES = 8  # per claimed match: an online guess passes with probability 2^-64, and the first wrong one aborts


@dataclass(frozen=True)
class Config:
    """Options both sides must agree on (``batch_size``) or that stay local (``window``)."""

    reveal: Reveal = Reveal.RECEIVER
    batch_size: int = 1 << 16
    window: int = 4
    suite: str = "standard"  # psi.crypto.suite: gm = SM3 hashes, SM4 PRG/π, SM2 base OT

    def __post_init__(self) -> None:
        check_options(NAME, self.reveal, "batch_size", self.batch_size, self.window)
        get_suite(self.suite)

    def hello_params(self) -> dict:
        return {
            "reveal": Reveal(self.reveal).value,
            "batch_size": self.batch_size,
            "code_width": CODE_WIDTH,
            "code": "bch-511-76",
            "check": f"oos17-s{oos.S}",
            "phasing_bits": cuckoo.PHASE_BITS,
            "sigma": SIGMA,
            "hashes": cuckoo.HASHES,
            **suite_params(self.suite),
        }


def false_match_log2(server_size: int, client_size: int, width: int) -> float:
    """log2 of the bound on the chance of any false match in a session.

    Each client item is compared with the ``n_S`` server values of its hash function:
    ``n_S·n_R`` pairs. A pair of distinct items matches if their ``width``-byte values collide
    (``2^-8ℓ``) or if they share bin, hash function and ``d_R`` — which with phasing means equal
    192-bit digests placed in ``m`` bins, ``1/(m·2^74)``.
    """
    pairs = max(1, server_size) * max(1, client_size)
    bins = cuckoo.table_size(client_size)
    return math.log2(pairs * 2.0 ** (-8 * width) + pairs / (bins * 2.0**cuckoo.PHASE_BITS))


def value_bytes(server_size: int, client_size: int) -> int:
    """``ℓ``: bytes of each OPRF value on the wire, the fewest with a false-match bound ≤ 2^-40."""
    width = sigma_value_bytes(server_size, client_size)
    while false_match_log2(server_size, client_size, width) > -SIGMA:
        width += 1
    return width


class _State(enum.Enum):
    HELLO = "hello"
    BASE = "base"
    OPRF = "oprf"
    VALUES = "values"
    MATCHES = "matches"
    DONE = "done"
# Client: HELLO → BASE → OPRF → VALUES → DONE.  Server: HELLO → BASE → OPRF → VALUES
# [→ MATCHES in both mode] → DONE.  Any error → failed (Party base).


# -- spreading work over the executor (the work itself: psi.protocols.kkrt_work) --


def _gather(futures: "list[Future[np.ndarray]]", axis: int = 0) -> np.ndarray:
    parts = [fut.result() for fut in futures]
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=axis)


class _Common(OtPsiParty):
    def __init__(self, items: Sequence[bytes], config: Config, peer_size: int, executor: Executor, role: Role) -> None:
        super().__init__(NAME, VERSION, _State, items, config, peer_size, executor, role)

    def _accept_hello(self, message: Message) -> None:
        super()._accept_hello(message)
        self._hash = TweakHash(self._session, self._suite)


class Client(_Common):
    """The PSI receiver: learns which of its items the server also holds."""

    def __init__(self, items: Sequence[bytes], config: Config, *, peer_size: int, executor: Executor) -> None:
        super().__init__(items, config, peer_size, executor, Role.CLIENT)
        self._n, self._n_server = len(items), peer_size
        self._width = value_bytes(peer_size, len(items))

    def _handle(self, message: Message) -> None:
        state = self._state
        if state is _State.HELLO:
            self._accept_hello(message)
            self._start()
        elif state is _State.BASE and message.kind == "kkrt.base.b":
            self._base_done(message.body)
        elif state is _State.OPRF and message.kind == "kkrt.challenge" and self._acked < self._sent:
            self._answer_challenge(message.body)
        elif state is _State.VALUES and message.kind == "kkrt.values":
            self._take_values(message.body)
        else:
            raise self._unexpected(message, state.value)

    def _start(self) -> None:
        self._set_phase("cuckoo")
        key = kkrt_work.digest_key(self._session, self._suite)
        digests = _gather(_scatter(self._executor, functools.partial(kkrt_work.digest_piece, key=key, suite=self._suite), self._items))
        self._table = cuckoo.build(digests, suite=self._suite)
        bins = self._table.bins
        inputs = oos.random_words(bins)  # empty bins: random code inputs
        occupied = self._table.table >= 0
        owners = self._table.table[occupied]
        inputs[occupied] = cuckoo.code_inputs(digests[owners], self._table.which[owners])
        self._inputs = inputs
        self._batches = -(-bins // self._config.batch_size)
        self._check_words = oos.random_words(oos.S * self._batches)  # the check rows' random words
        self._base = BaseOtSender(CODE_WIDTH, self._session, self._suite)
        body = self._base.first_message() + self._table.seed + bins.to_bytes(4, "big")
        self._send("kkrt.base.a", body)
        self._state = _State.BASE
        self._set_phase("base-ot")

    def _base_done(self, body: bytes) -> None:
        if len(body) != CODE_WIDTH * self._suite.base_ot.point_bytes:
            raise MalformedMessage("kkrt.base.b has the wrong length")
        keys0, keys1 = self._base.finish(body)
        self._oprf = np.empty((self._table.bins, self._width), dtype=np.uint8)
        both = self._reveal is Reveal.BOTH
        self._evidence = np.empty((self._table.bins, EVIDENCE_BYTES), dtype=np.uint8) if both else None
        self._out_bytes = 16 + EVIDENCE_BYTES if both else self._width
        self._sent = self._acked = self._answered = 0
        self._unchecked: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # batch → (T columns, code inputs)
        self._answers: dict[int, Future] = {}  # batch → check answer being computed by a worker
        # Several workers: every batch is expanded from scratch in a worker (the PRG streams
        # are started at the batch's offset), a few batches ahead of the flow-control window.
        self._parallel = self._executor.workers > 1 and self._table.bins >= 2 * _MIN_PIECE
        if self._parallel:
            self._batch_fn = functools.partial(
                kkrt_work.client_batch, keys0=keys0, keys1=keys1, session=self._session, out_bytes=self._out_bytes,
                suite=self._suite,
            )
            # the check answer is computed in a worker too, from the batch's T columns expanded
            # again there (cheaper than shipping them back and forth)
            self._check_fn = functools.partial(kkrt_work.client_check, keys0=keys0, session=self._session, suite=self._suite)
            self._pending: dict[int, Future] = {}
            self._submitted = 0
        else:
            self._ext = ExtensionReceiver(keys0, keys1, suite=self._suite)
        self._state = _State.OPRF
        self._set_phase("oprf", self._batches)

    def _batch_inputs(self, k: int) -> np.ndarray:
        size = self._config.batch_size
        start, stop = k * size, min((k + 1) * size, self._table.bins)
        return np.concatenate([self._inputs[start:stop], self._check_words[k * oos.S : (k + 1) * oos.S]])

    def _produce(self) -> None:
        if self._state is not _State.OPRF:
            return
        while self._answered in self._answers:  # check answers, in batch order
            self._send_answer(self._answers.pop(self._answered).result())
            if self._state is not _State.OPRF:
                return
        size = self._config.batch_size
        if self._parallel:
            ahead = self._config.window + self._executor.workers
            stride = padded_rows(size + oos.S) // 8  # PRG bytes per stream per full batch
            while self._submitted < self._batches and self._submitted < self._sent + ahead:
                k = self._submitted
                self._pending[k] = self._executor.submit(
                    functools.partial(self._batch_fn, offset=k * stride, start=k * size), self._batch_inputs(k)
                )
                self._submitted += 1
        while self._sent < self._batches and self._sent - self._acked < self._config.window:
            k = self._sent
            start = k * size
            stop = min(start + size, self._table.bins)
            inputs = self._batch_inputs(k)
            if self._parallel:
                hashed, wire = self._pending.pop(k).result()
                t_cols = None
            else:
                t_rows, wire, t_cols = self._ext.extend_codewords(bch.code().encode(inputs), columns=True)
                hashed = self._hash.hash_rows(t_rows[: stop - start], start, out_bytes=self._out_bytes, domain=kkrt_work.DOMAIN)
            self._oprf[start:stop] = hashed[:, : self._width]
            if self._evidence is not None:
                self._evidence[start:stop] = hashed[:, 16 : 16 + EVIDENCE_BYTES]
            self._unchecked[k] = (t_cols, inputs)
            self._send("kkrt.u", wire)
            self._sent += 1

    def _answer_challenge(self, seed: bytes) -> None:
        k = self._acked
        t_cols, inputs = self._unchecked.pop(k)
        self._acked += 1
        if self._parallel:
            stride = padded_rows(self._config.batch_size + oos.S) // 8
            self._answers[k] = self._executor.submit(functools.partial(self._check_fn, offset=k * stride, batch=k, seed=seed), inputs)
        else:
            words = oos.challenge_words(self._session, k, seed, inputs.shape[0] - oos.S, self._suite)
            self._send_answer(oos.receiver_response(t_cols, inputs, words))

    def _send_answer(self, answer: bytes) -> None:
        self._send("kkrt.check", answer)
        self._answered += 1
        self._advance(1)
        if self._answered == self._batches:
            self._enter_values()

    def _enter_values(self) -> None:
        self._inputs = self._check_words = None
        self._values = np.empty((cuckoo.HASHES * self._n_server, self._width), dtype=np.uint8)
        self._filled = 0
        self._mine: np.ndarray | None = None  # each item's OPRF value (its own bin), once needed
        self._lookups: list[list[Future]] = []  # per hash function, as soon as its block has arrived
        self._state = _State.VALUES
        self._set_phase("values", self._values.shape[0])
        if self._values.shape[0] == 0:
            self._match()

    def _take_values(self, body: bytes) -> None:
        expected = min(self._config.batch_size, self._values.shape[0] - self._filled)
        if len(body) != expected * self._width:
            raise MalformedMessage("kkrt.values batch has the wrong length")
        chunk = np.frombuffer(body, dtype=np.uint8).reshape(expected, self._width)
        self._values[self._filled : self._filled + expected] = chunk
        self._filled += expected
        self._advance(expected)
        self._send("kkrt.ack")
        self._submit_lookups()
        if self._filled == self._values.shape[0]:
            self._match()

    def _submit_lookups(self) -> None:
        """Match each hash function's block of server values in a worker as soon as it is
        complete, so the matching overlaps the server computing the later blocks."""
        n = self._n_server
        while len(self._lookups) < cuckoo.HASHES and (len(self._lookups) + 1) * n <= self._filled:
            h = len(self._lookups)
            if self._mine is None:
                self._mine = self._oprf[self._table.bin_of()]
            query_ids = np.nonzero(self._table.which == h)[0]
            queries, server = self._mine[query_ids], self._values[h * n : (h + 1) * n]
            parts = self._executor.workers if n >= 2 * _MIN_PIECE else 1
            if parts == 1:
                pieces = [(query_ids, queries, server, np.arange(h * n, (h + 1) * n))]
            else:  # one lookup per worker, values split by their first byte (the last block is
                # matched after everything has arrived, so it should not run on one core)
                q_part, s_part = queries[:, 0].astype(np.int64) * parts // 256, server[:, 0].astype(np.int64) * parts // 256
                pieces = []
                for p in range(parts):
                    q_sel, s_rows = q_part == p, np.flatnonzero(s_part == p)
                    pieces.append((query_ids[q_sel], queries[q_sel], server[s_rows], s_rows + h * n))
            self._lookups.append([self._executor.submit(kkrt_work.lookup_block, *piece) for piece in pieces])

    def _match(self) -> None:
        self._set_phase("match")
        table = self._table
        self._submit_lookups()  # every block has arrived: all are submitted now
        assert self._mine is not None and len(self._lookups) == cuckoo.HASHES
        mine = self._mine
        blocks = [fut.result() for futures in self._lookups for fut in futures]
        matched = np.concatenate([b[0] for b in blocks])
        wire = np.concatenate([b[1] for b in blocks])
        if has_repeats(matched):  # an honest server's values for distinct items collide below 2^-40
            raise MalformedMessage("kkrt.values match one item more than once (repeated values)")
        if self._reveal is Reveal.BOTH:
            order = kkrt_work.value_order(mine[matched])
            matched, wire = matched[order], wire[order]
            evidence = self._evidence[table.bin_of()[matched]]
            self._send("kkrt.matches", pack_claims(wire, evidence))
        else:
            matched = np.sort(matched)
        indices = matched.tolist()
        self._done(PsiOutcome(indices, len(indices), {"protocol": NAME, "bins": table.bins, "value_bytes": self._width}))


class Server(_Common):
    """The PSI sender: answers with OPRF values; learns the match only in ``both`` mode."""

    def __init__(self, items: Sequence[bytes], config: Config, *, peer_size: int, executor: Executor) -> None:
        super().__init__(items, config, peer_size, executor, Role.SERVER)
        self._n, self._n_client = len(items), peer_size
        self._width = value_bytes(len(items), peer_size)

    def _handle(self, message: Message) -> None:
        state = self._state
        if state is _State.HELLO:
            self._accept_hello(message)
            # pre-hash in the background (workers) while the base OTs and corrections run
            key = kkrt_work.digest_key(self._session, self._suite)
            self._digest_futures = _scatter(self._executor, functools.partial(kkrt_work.digest_piece, key=key, suite=self._suite),
                                            self._items)
            self._state = _State.BASE
            self._set_phase("base-ot")
        elif state is _State.BASE and message.kind == "kkrt.base.a":
            self._base(message.body)
        elif state is _State.OPRF and message.kind == "kkrt.u" and self._received < self._corrections:
            self._correction(message.body)
        elif state is _State.OPRF and message.kind == "kkrt.check" and self._checked < self._received:
            self._check(message.body)
        elif state is _State.VALUES and message.kind == "kkrt.ack" and not message.body and self._acked < self._sent:
            self._acked += 1
            if self._acked == self._batches:
                self._after_values()
        elif state is _State.MATCHES and message.kind == "kkrt.matches":
            self._matches(message.body)
        else:
            raise self._unexpected(message, state.value)

    def _base(self, body: bytes) -> None:
        point_bytes = self._suite.base_ot.point_bytes
        if len(body) != point_bytes + 20:
            raise MalformedMessage("kkrt.base.a has the wrong length")
        bins = int.from_bytes(body[-4:], "big")
        if bins != cuckoo.table_size(self._n_client):
            raise MalformedMessage("peer's cuckoo table size does not match its set size")
        self._bins, self._cuckoo_seed = bins, body[point_bytes : point_bytes + 16]
        secret = np.frombuffer(secrets.token_bytes(CODE_WIDTH), dtype=np.uint8) & 1
        reply, keys = BaseOtReceiver(secret, self._session, self._suite).reply(body[:point_bytes])
        self._ext = ExtensionSender(keys, secret, suite=self._suite)
        self._masked = bch.code().masked(self._ext.secret)  # C(·) ∧ Δ
        shape = (bins, CODE_WIDTH // 8)
        self._shm = None
        if self._executor.workers > 1 and self._n >= 2 * _MIN_PIECE:
            # q lives in shared memory so the value workers read it without a copy
            name = "psiq-kkrt-" + os.urandom(8).hex()  # not ``secrets``: keep its draws as single-core
            self._shm = shared_memory.SharedMemory(name=name, create=True, size=bins * (CODE_WIDTH // 8))
            self._shm_release = weakref.finalize(self, kkrt_work.release_shm, self._shm)
            self._q = np.ndarray(shape, dtype=np.uint8, buffer=self._shm.buf)
        else:
            self._q = np.empty(shape, dtype=np.uint8)
        self._received = self._checked = 0
        self._expected: dict[int, Future] = {}  # batch → q̃ awaiting the client's answer
        self._corrections = -(-bins // self._config.batch_size)
        self._send("kkrt.base.b", reply)
        self._state = _State.OPRF
        self._set_phase("oprf", self._corrections)

    def _correction(self, body: bytes) -> None:
        size = self._config.batch_size
        start = self._received * size
        stop = min(start + size, self._bins)
        q_cols = self._ext.extend_columns(stop - start + oos.S, body)
        self._q[start:stop] = transpose(q_cols)[: stop - start]
        # the batch's rows are fixed now: only then draw its challenge
        seed = secrets.token_bytes(oos.SEED_BYTES)
        words = oos.challenge_words(self._session, self._received, seed, stop - start, self._suite)
        if self._shm is not None:  # several workers: combine there, the next batch's rows meanwhile here
            self._expected[self._received] = self._executor.submit(oos.sender_expected, q_cols, words)
        else:
            self._expected[self._received] = _done_future(oos.sender_expected(q_cols, words))
        self._received += 1
        self._send("kkrt.challenge", seed)

    def _check(self, body: bytes) -> None:
        oos.verify(self._expected.pop(self._checked).result(), body, self._masked)
        self._checked += 1
        self._advance(1)
        if self._checked == self._corrections:  # every row is consistent: values may leave now
            self._compute_values()

    def _compute_values(self) -> None:
        self._set_phase("values")
        digests = _gather(self._digest_futures)
        self._digest_futures = []
        step = self._config.batch_size
        q_ref = self._q if self._shm is None else (self._shm.name, self._q.shape)
        fn = functools.partial(
            kkrt_work.server_values,
            q=q_ref,
            cuckoo_seed=self._cuckoo_seed,
            bins=self._bins,
            masked_tables=self._masked.tables,
            session=self._session,
            width=self._width,
            step=step,
            suite=self._suite,
        )
        values = _gather(_scatter(self._executor, fn, digests), axis=1) if self._n else np.empty((cuckoo.HASHES, 0, self._width), dtype=np.uint8)
        if self._reveal is Reveal.BOTH:
            self._digests = digests  # with q: to recompute the evidence of claimed matches
        else:
            self._release_q()
        self._perms = [secure_permutation(self._n) for _ in range(cuckoo.HASHES)]
        self._wire = np.concatenate([values[h][self._perms[h]] for h in range(cuckoo.HASHES)])
        self._sent = self._acked = 0
        self._batches = -(-self._wire.shape[0] // step)
        self._state = _State.VALUES
        self._set_phase("values", self._wire.shape[0])
        if self._batches == 0:
            self._after_values()

    def _release_q(self) -> None:
        self._q = None
        if self._shm is not None:
            self._shm = None
            self._shm_release()

    def _produce(self) -> None:
        if self._state is not _State.VALUES:
            return
        self._send_window("kkrt.values", self._wire, self._config.batch_size, self._batches)

    def _after_values(self) -> None:
        self._wire = None
        if self._reveal is Reveal.BOTH:
            self._state = _State.MATCHES
            self._set_phase("matches")
        else:
            self._done(PsiOutcome(None, None, {"protocol": NAME}))

    def _matches(self, body: bytes) -> None:
        """Accept the client's claimed matches only if each carries the right evidence."""
        wire, evidence = parse_claims(body, "kkrt.matches", EVIDENCE_BYTES, min(self._n, self._n_client),
                                      cuckoo.HASHES * self._n)
        h, pos = np.divmod(wire, max(self._n, 1))
        perms = np.stack(self._perms) if self._n else np.zeros((cuckoo.HASHES, 0), dtype=np.int64)
        items = perms[h, pos] if wire.size else np.zeros(0, dtype=np.int64)
        if has_repeats(items):
            raise MalformedMessage("kkrt.matches names one item twice")
        if items.size:
            digests = self._digests[items]
            bins = cuckoo.bin_indices(digests, self._cuckoo_seed, self._bins, self._suite)[np.arange(items.size), h]
            rows = kkrt_work.server_rows(self._q, self._masked, digests, bins, h)
            expected = self._hash.hash_rows(rows, 0, out_bytes=16 + EVIDENCE_BYTES, domain=kkrt_work.DOMAIN, indices=bins)
            if not hmac.compare_digest(expected[:, 16 : 16 + EVIDENCE_BYTES].tobytes(), evidence.tobytes()):
                raise MalformedMessage("kkrt.matches claims an item the client did not match (bad evidence)")
        self._digests = None
        self._release_q()
        indices = items.tolist()
        self._done(PsiOutcome(indices, len(indices), {"protocol": NAME}))
