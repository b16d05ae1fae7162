"""KKRT16 PSI: a batched OPRF from 1-out-of-∞ OT extension, with cuckoo hashing.

Message flow (client = PSI receiver, learns the result; server = PSI sender)::

    client                                               server
      hello (size, nonce)                  ───▶ ◀───       hello (size, nonce)
      kkrt.base.a  A ‖ cuckoo seed ‖ bins  ───▶
                                           ◀───           kkrt.base.b  512 points ‖ code seed
      kkrt.u  corrections, ``batch_size`` bins each ───▶   (≤ ``window`` unacknowledged)
                                           ◀───           kkrt.ack  per batch
                                           ◀───           kkrt.values  3·n_S OPRF values, batched
      kkrt.ack  per values batch           ───▶
      kkrt.matches  (``both`` only)        ───▶

1. Both sides pre-hash every item to 128 bits (BLAKE2b keyed with the session id). The client
   cuckoo-hashes its digests into ``m = ceil(e·n_R)`` bins with three hash functions and no
   stash (``e = (40 + log2 n_R + 256)/240``; :mod:`psi.cuckoo`), re-seeding on failure.
2. 512 base OTs (the server is the base-OT *receiver* with secret ``s``), then one OT-extension
   row per bin with the pseudorandom code ``C`` of width 512 (:mod:`psi.ot.extension`): for the
   item ``x`` placed in bin ``b`` by hash function ``h`` the client obtains
   ``F(b, x‖h) = H(b, t_b)``; the server can evaluate ``F(b, y‖h) = H(b, q_b ⊕ (C(y‖h) ∧ s))``
   for any ``y``. ``H`` is the fixed-key-AES tweakable hash of :mod:`psi.ot.aes_hash` with the bin
   number as tweak.
3. For each hash function ``h`` the server sends ``F(h_h(y), y‖h)`` for all its items, truncated
   to ``ℓ = ⌈(40 + log2(n_S·n_R))/8⌉`` bytes, in a fresh random order per ``h``. The client
   looks up each of its items in the list for the hash function that placed it.
4. ``both``: the client sends the wire positions of the matched server values, sorted by the
   matched OPRF value (pseudorandom, known to both, independent of either input order); both
   sides list their matched indices in that order.

What each party learns: the client the intersection and ``n_S``; the server ``n_R`` (and the
intersection in ``both`` mode). Security: semi-honest (KKRT16 with the base OTs of
:mod:`psi.ot.base_ot`); a false match needs a collision of ℓ-byte values (probability below
2^-40 overall). ``cardinality`` mode is not offered: the client learns matched positions.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import math
import mmap
import os
import secrets
import weakref
from concurrent.futures import Future
from dataclasses import dataclass
from multiprocessing import shared_memory
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import MalformedMessage, UsageError
from ..messages import Message
from ..ot.aes_hash import TweakHash, derive_key
from ..ot.base_ot import POINT_BYTES, BaseOtReceiver, BaseOtSender
from ..ot.extension import ExtensionReceiver, ExtensionSender, PseudorandomCode, padded_rows
from ..ot.session import HelloState
from ..parallel import Executor
from .. import cuckoo
from .base import PsiOutcome, PsiParty, Reveal, Role

__all__ = ["NAME", "VERSION", "Config", "Client", "Server", "value_bytes"]

NAME = "kkrt"
VERSION = 1
CODE_WIDTH = 512
SIGMA = 40
MAX_ITEMS = 1 << 31
_DOMAIN = 0x4B  # hash-tweak domain byte for KKRT OPRF outputs
_MIN_PIECE = 1 << 13  # below ~2 pieces of this many items, per-item work stays in-process


@dataclass(frozen=True)
class Config:
    """Options both sides must agree on (``batch_size``) or that stay local (``window``)."""

    reveal: Reveal = Reveal.RECEIVER
    batch_size: int = 1 << 16
    window: int = 4

    def __post_init__(self) -> None:
        if Reveal(self.reveal) is Reveal.CARDINALITY:
            raise UsageError("kkrt does not offer cardinality mode (use the ECDH protocol)")
        if not 8 <= self.batch_size <= 1 << 22 or self.window < 1:
            raise UsageError("kkrt batch_size must be in 8..2^22 and window at least 1")

    def hello_params(self) -> dict:
        return {
            "reveal": Reveal(self.reveal).value,
            "batch_size": self.batch_size,
            "code_width": CODE_WIDTH,
            "sigma": SIGMA,
            "hashes": cuckoo.HASHES,
        }


def value_bytes(server_size: int, client_size: int) -> int:
    """``ℓ``: bytes of each OPRF value on the wire."""
    return math.ceil((SIGMA + math.log2(max(1, server_size) * max(1, client_size))) / 8)


class _State(enum.Enum):
    HELLO = "hello"
    BASE = "base"
    OPRF = "oprf"
    VALUES = "values"
    MATCHES = "matches"
    DONE = "done"
# Client: HELLO → BASE → OPRF → VALUES → DONE.  Server: HELLO → BASE → OPRF → VALUES
# [→ MATCHES in both mode] → DONE.  Any error → failed (Party base).


# -- work cut by rows, run on the executor (top-level, picklable; bit-identical to one piece) --


def _digest_piece(items: Sequence[bytes], key: bytes) -> np.ndarray:
    """BLAKE2b-128 of each item keyed with ``key``: ``uint8 (len(items), 16)``."""
    blake = hashlib.blake2b
    joined = b"".join([blake(item, digest_size=16, key=key).digest() for item in items])
    return np.frombuffer(joined, dtype=np.uint8).reshape(len(items), 16)


def _digest_key(session: bytes) -> bytes:
    return derive_key(b"kkrt-item-digest", session, size=32)


def _digests(items: Sequence[bytes], session: bytes) -> np.ndarray:
    return _digest_piece(items, _digest_key(session))


def _done_future(value: Any) -> "Future[Any]":
    fut: Future[Any] = Future()
    fut.set_result(value)
    return fut


def _scatter(executor: Executor, fn: Callable[[Any], Any], items: Sequence[Any]) -> "list[Future[Any]]":
    """``executor.scatter`` for inputs worth shipping out; small ones run here at once."""
    if executor.workers == 1 or len(items) < 2 * _MIN_PIECE:
        return [_done_future(fn(items))]
    return executor.scatter(fn, items)


def _gather(futures: "list[Future[np.ndarray]]", axis: int = 0) -> np.ndarray:
    parts = [fut.result() for fut in futures]
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=axis)


def _client_batch(
    inputs: np.ndarray, *, keys0: np.ndarray, keys1: np.ndarray, offset: int, code_key: bytes, session: bytes, start: int, width: int
) -> tuple[np.ndarray, bytes]:
    """One correction batch from scratch: (OPRF values of its bins, wire ``U``)."""
    ext = ExtensionReceiver(keys0, keys1, offset)
    t_rows, wire = ext.extend_codewords(PseudorandomCode(code_key, CODE_WIDTH).encode(inputs))
    return TweakHash(session).hash_rows(t_rows, start, out_bytes=width, domain=_DOMAIN), wire


def _server_values(
    digests: np.ndarray,
    *,
    q: "np.ndarray | tuple[str, tuple[int, int]]",
    cuckoo_seed: bytes,
    bins: int,
    code_key: bytes,
    secret: bytes,
    session: bytes,
    width: int,
    step: int,
) -> np.ndarray:
    """``uint8 (HASHES, len(digests), width)``: the server's OPRF values of these items.

    ``q`` is the extension matrix, or (name, shape) of a shared-memory block holding it.
    """
    shm = None
    if isinstance(q, tuple):
        shm = _attach(q[0], q[1][0] * q[1][1])
        q = np.frombuffer(shm, dtype=np.uint8, count=q[1][0] * q[1][1]).reshape(q[1])
    try:
        n = digests.shape[0]
        indices = cuckoo.bin_indices(digests, cuckoo_seed, bins)
        code = PseudorandomCode(code_key, CODE_WIDTH)
        hasher = TweakHash(session)
        mask = np.frombuffer(secret, dtype=np.uint8)[None, :]
        values = np.empty((cuckoo.HASHES, n, width), dtype=np.uint8)
        for h in range(cuckoo.HASHES):
            for start in range(0, n, step):
                stop = min(start + step, n)
                idx = indices[start:stop, h]
                rows = code.encode(_code_inputs(digests[start:stop], h))
                rows &= mask
                rows ^= q[idx]
                values[h, start:stop] = hasher.hash_rows(rows, 0, out_bytes=width, domain=_DOMAIN, indices=idx)
        return values
    finally:
        if shm is not None:
            del q
            shm.close()


def _attach(name: str, size: int) -> "mmap.mmap":
    """Map the parent's shared block read-only, without registering it with a resource tracker
    (``SharedMemory(name=...)`` does in 3.11, and a worker's tracker then reports a leak)."""
    import _posixshmem

    fd = _posixshmem.shm_open("/" + name, os.O_RDONLY, mode=0o600)
    try:
        return mmap.mmap(fd, size, prot=mmap.PROT_READ)
    finally:
        os.close(fd)


def _release_shm(shm: shared_memory.SharedMemory) -> None:
    try:
        shm.unlink()
    except FileNotFoundError:  # pragma: no cover - already gone
        pass
    try:
        shm.close()
    except BufferError:  # pragma: no cover - a view is still alive; the mapping goes at exit
        pass


def _code_inputs(digests: np.ndarray, hash_index: np.ndarray | int) -> np.ndarray:
    """``x‖h``: the digest with the hash-function number folded into its last byte."""
    out = digests.copy()
    out[:, 15] ^= (np.asarray(hash_index, dtype=np.uint8) + 1) * 0x51
    return out


def _check_items(items: Sequence[bytes], peer_size: int) -> None:
    if len(items) > MAX_ITEMS or not 0 <= peer_size <= MAX_ITEMS:
        raise UsageError("set size out of range for kkrt")


class _Common(PsiParty):
    def __init__(self, items: Sequence[bytes], config: Config, peer_size: int, executor: Executor, role: Role) -> None:
        super().__init__()
        _check_items(items, peer_size)
        self._items = items
        self._config = config
        self._reveal = Reveal(config.reveal)
        self._peer_size = peer_size
        self._executor = executor
        self._hello = HelloState(NAME, VERSION, role, config.hello_params(), {"size": len(items)})
        self._state = _State.HELLO
        self._set_phase("hello")
        self._send(self._hello.own_message.kind, self._hello.own_message.body)

    def _accept_hello(self, message: Message) -> None:
        self._hello.accept(message)
        self._hello.check_peer_size(self._peer_size)
        self._session = self._hello.session
        self._hash = TweakHash(self._session)

    def _done(self, outcome: PsiOutcome) -> None:
        self._outcome = outcome
        self._state = _State.DONE
        self._finish()


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
        elif state is _State.OPRF and message.kind == "kkrt.ack" and not message.body and self._acked < self._sent:
            self._acked += 1
            self._advance(1)
            if self._acked == self._batches:
                self._enter_values()
        elif state is _State.VALUES and message.kind == "kkrt.values":
            self._take_values(message.body)
        else:
            raise self._unexpected(message, state.value)

    def _start(self) -> None:
        self._set_phase("cuckoo")
        key = _digest_key(self._session)
        digests = _gather(_scatter(self._executor, functools.partial(_digest_piece, key=key), self._items))
        self._table = cuckoo.build(digests)
        bins = self._table.bins
        inputs = np.frombuffer(secrets.token_bytes(16 * bins), dtype=np.uint8).reshape(bins, 16).copy()
        occupied = self._table.table >= 0
        owners = self._table.table[occupied]
        inputs[occupied] = _code_inputs(digests[owners], self._table.which[owners])
        self._inputs = inputs
        self._base = BaseOtSender(CODE_WIDTH, self._session)
        body = self._base.first_message() + self._table.seed + bins.to_bytes(4, "big")
        self._send("kkrt.base.a", body)
        self._state = _State.BASE
        self._set_phase("base-ot")

    def _base_done(self, body: bytes) -> None:
        if len(body) != CODE_WIDTH * POINT_BYTES + 16:
            raise MalformedMessage("kkrt.base.b has the wrong length")
        keys0, keys1 = self._base.finish(body[: CODE_WIDTH * POINT_BYTES])
        code_key = derive_key(b"kkrt-code", self._session, body[-16:])
        self._oprf = np.empty((self._table.bins, self._width), dtype=np.uint8)
        self._batches = -(-self._table.bins // self._config.batch_size)
        self._sent = self._acked = 0
        # Several workers: every batch is expanded from scratch in a worker (the PRG streams
        # are started at the batch's offset), a few batches ahead of the flow-control window.
        self._parallel = self._executor.workers > 1 and self._table.bins >= 2 * _MIN_PIECE
        if self._parallel:
            self._batch_fn = functools.partial(
                _client_batch, keys0=keys0, keys1=keys1, code_key=code_key, session=self._session, width=self._width
            )
            self._pending: dict[int, Future] = {}
            self._submitted = 0
        else:
            self._ext = ExtensionReceiver(keys0, keys1)
            self._code = PseudorandomCode(code_key, CODE_WIDTH)
        self._state = _State.OPRF
        self._set_phase("oprf", self._batches)

    def _produce(self) -> None:
        if self._state is not _State.OPRF:
            return
        size = self._config.batch_size
        if self._parallel:
            ahead = self._config.window + self._executor.workers
            stride = padded_rows(size) // 8  # PRG bytes per stream per full batch
            while self._submitted < self._batches and self._submitted < self._sent + ahead:
                k = self._submitted
                start, stop = k * size, min((k + 1) * size, self._table.bins)
                self._pending[k] = self._executor.submit(
                    functools.partial(self._batch_fn, offset=k * stride, start=start), self._inputs[start:stop]
                )
                self._submitted += 1
        while self._sent < self._batches and self._sent - self._acked < self._config.window:
            start = self._sent * size
            stop = min(start + size, self._table.bins)
            if self._parallel:
                self._oprf[start:stop], wire = self._pending.pop(self._sent).result()
            else:
                t_rows, wire = self._ext.extend_codewords(self._code.encode(self._inputs[start:stop]))
                self._oprf[start:stop] = self._hash.hash_rows(t_rows, start, out_bytes=self._width, domain=_DOMAIN)
            self._send("kkrt.u", wire)
            self._sent += 1

    def _enter_values(self) -> None:
        self._inputs = None
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
            self._lookups.append([self._executor.submit(_lookup_block, *piece) for piece in pieces])

    def _match(self) -> None:
        self._set_phase("match")
        table = self._table
        self._submit_lookups()  # every block has arrived: all are submitted now
        assert self._mine is not None and len(self._lookups) == cuckoo.HASHES
        mine = self._mine
        blocks = [fut.result() for futures in self._lookups for fut in futures]
        matched = np.concatenate([b[0] for b in blocks])
        wire = np.concatenate([b[1] for b in blocks])
        if self._reveal is Reveal.BOTH:
            order = _value_order(mine[matched])
            matched, wire = matched[order], wire[order]
            self._send("kkrt.matches", wire.astype(">u4").tobytes())
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
            key = _digest_key(self._session)
            self._digest_futures = _scatter(self._executor, functools.partial(_digest_piece, key=key), self._items)
            self._state = _State.BASE
            self._set_phase("base-ot")
        elif state is _State.BASE and message.kind == "kkrt.base.a":
            self._base(message.body)
        elif state is _State.OPRF and message.kind == "kkrt.u":
            self._correction(message.body)
        elif state is _State.VALUES and message.kind == "kkrt.ack" and not message.body and self._acked < self._sent:
            self._acked += 1
            if self._acked == self._batches:
                self._after_values()
        elif state is _State.MATCHES and message.kind == "kkrt.matches":
            self._matches(message.body)
        else:
            raise self._unexpected(message, state.value)

    def _base(self, body: bytes) -> None:
        if len(body) != POINT_BYTES + 20:
            raise MalformedMessage("kkrt.base.a has the wrong length")
        bins = int.from_bytes(body[-4:], "big")
        if bins != cuckoo.table_size(self._n_client):
            raise MalformedMessage("peer's cuckoo table size does not match its set size")
        self._bins, self._cuckoo_seed = bins, body[POINT_BYTES : POINT_BYTES + 16]
        secret = np.frombuffer(secrets.token_bytes(CODE_WIDTH), dtype=np.uint8) & 1
        reply, keys = BaseOtReceiver(secret, self._session).reply(body[:POINT_BYTES])
        code_seed = secrets.token_bytes(16)
        self._ext = ExtensionSender(keys, secret)
        self._code_key = derive_key(b"kkrt-code", self._session, code_seed)
        shape = (bins, CODE_WIDTH // 8)
        self._shm = None
        if self._executor.workers > 1 and self._n >= 2 * _MIN_PIECE:
            # q lives in shared memory so the value workers read it without a copy
            name = "psiq-kkrt-" + os.urandom(8).hex()  # not ``secrets``: keep its draws as single-core
            self._shm = shared_memory.SharedMemory(name=name, create=True, size=bins * (CODE_WIDTH // 8))
            self._shm_release = weakref.finalize(self, _release_shm, self._shm)
            self._q = np.ndarray(shape, dtype=np.uint8, buffer=self._shm.buf)
        else:
            self._q = np.empty(shape, dtype=np.uint8)
        self._received = 0
        self._corrections = -(-bins // self._config.batch_size)
        self._send("kkrt.base.b", reply + code_seed)
        self._state = _State.OPRF
        self._set_phase("oprf", self._corrections)

    def _correction(self, body: bytes) -> None:
        size = self._config.batch_size
        start = self._received * size
        stop = min(start + size, self._bins)
        self._q[start:stop] = self._ext.extend(stop - start, body)
        self._received += 1
        self._advance(1)
        self._send("kkrt.ack")
        if self._received == self._corrections:
            self._compute_values()

    def _compute_values(self) -> None:
        self._set_phase("values")
        digests = _gather(self._digest_futures)
        self._digest_futures = []
        rng = np.random.default_rng(secrets.randbits(128))
        step = self._config.batch_size
        q_ref = self._q if self._shm is None else (self._shm.name, self._q.shape)
        fn = functools.partial(
            _server_values,
            q=q_ref,
            cuckoo_seed=self._cuckoo_seed,
            bins=self._bins,
            code_key=self._code_key,
            secret=self._ext.secret.tobytes(),
            session=self._session,
            width=self._width,
            step=step,
        )
        values = _gather(_scatter(self._executor, fn, digests), axis=1) if self._n else np.empty((cuckoo.HASHES, 0, self._width), dtype=np.uint8)
        self._q = None
        if self._shm is not None:
            self._shm = None
            self._shm_release()
        self._perms = [rng.permutation(self._n) for _ in range(cuckoo.HASHES)]
        self._wire = np.concatenate([values[h][self._perms[h]] for h in range(cuckoo.HASHES)])
        self._sent = self._acked = 0
        self._batches = -(-self._wire.shape[0] // step)
        self._state = _State.VALUES
        self._set_phase("values", self._wire.shape[0])
        if self._batches == 0:
            self._after_values()

    def _produce(self) -> None:
        if self._state is not _State.VALUES:
            return
        step = self._config.batch_size
        while self._sent < self._batches and self._sent - self._acked < self._config.window:
            chunk = self._wire[self._sent * step : (self._sent + 1) * step]
            self._send("kkrt.values", chunk.tobytes())
            self._advance(chunk.shape[0])
            self._sent += 1

    def _after_values(self) -> None:
        self._wire = None
        if self._reveal is Reveal.BOTH:
            self._state = _State.MATCHES
            self._set_phase("matches")
        else:
            self._done(PsiOutcome(None, None, {"protocol": NAME}))

    def _matches(self, body: bytes) -> None:
        limit = min(self._n, self._n_client)
        if len(body) % 4 or len(body) // 4 > limit:
            raise MalformedMessage("kkrt.matches has a bad length")
        wire = np.frombuffer(body, dtype=">u4").astype(np.int64)
        if wire.size and wire.max() >= cuckoo.HASHES * self._n:
            raise MalformedMessage("kkrt.matches holds an out-of-range position")
        h, pos = np.divmod(wire, max(self._n, 1))
        perms = np.stack(self._perms) if self._n else np.zeros((cuckoo.HASHES, 0), dtype=np.int64)
        items = perms[h, pos] if wire.size else np.zeros(0, dtype=np.int64)
        if np.unique(items).size != items.size:
            raise MalformedMessage("kkrt.matches names one item twice")
        indices = items.tolist()
        self._done(PsiOutcome(indices, len(indices), {"protocol": NAME}))


def _lookup_block(
    query_ids: np.ndarray, queries: np.ndarray, table: np.ndarray, table_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Worker entry point: (item ids, wire positions) of the queries found among ``table``
    (``table_ids``: each table row's position on the wire)."""
    q_idx, s_idx = _lookup(queries, table)
    return query_ids[q_idx], table_ids[s_idx]


def _lookup(queries: np.ndarray, table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (query row, table row) of equal byte rows; table rows are unique w.h.p."""
    if queries.shape[0] == 0 or table.shape[0] == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    width = table.shape[1]
    head = min(width, 8)

    def key(rows: np.ndarray) -> np.ndarray:
        padded = np.zeros((rows.shape[0], 8), dtype=np.uint8)
        padded[:, :head] = rows[:, :head]
        return padded.view(np.uint64).reshape(-1)

    table_keys = key(table)
    order = np.argsort(table_keys, kind="stable")
    sorted_keys = table_keys[order]
    query_keys = key(queries)
    left = np.searchsorted(sorted_keys, query_keys, "left")
    right = np.searchsorted(sorted_keys, query_keys, "right")
    hit = np.nonzero(right > left)[0]
    q_out: list[int] = []
    s_out: list[int] = []
    single = hit[right[hit] - left[hit] == 1]
    candidates = order[left[single]]
    same = (queries[single] == table[candidates]).all(axis=1)
    for q in hit[right[hit] - left[hit] > 1].tolist():  # 64-bit prefix collisions: rare
        for s in order[left[q] : right[q]].tolist():
            if bytes(queries[q]) == bytes(table[s]):
                q_out.append(q)
                s_out.append(s)
    return (
        np.concatenate([single[same], np.asarray(q_out, dtype=np.int64)]),
        np.concatenate([candidates[same], np.asarray(s_out, dtype=np.int64)]),
    )


def _value_order(values: np.ndarray) -> np.ndarray:
    """Order of rows sorted lexicographically by their bytes."""
    if values.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    return np.lexsort(values.T[::-1])
