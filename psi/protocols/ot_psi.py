"""Pieces the OT-extension PSI protocols (KKRT, :mod:`psi.protocols.kkrt`; RR22,
:mod:`psi.protocols.rr22`) share: option and set-size rules, the value length, spreading
per-item work over the executor, the server's value order and the ``both``-mode claim records.

Each protocol keeps its own messages; these helpers hold only logic that is the same in both.
"""

from __future__ import annotations

import enum
import math
import secrets
from concurrent.futures import Future
from typing import Any, Callable, Sequence

import numpy as np

from ..crypto.suite import get_suite
from ..errors import MalformedMessage, UsageError
from ..messages import Message
from ..ot.session import HelloState
from ..parallel import Executor
from .base import PsiOutcome, PsiParty, Reveal, Role

__all__ = ["SIGMA", "MAX_ITEMS", "MIN_PIECE", "check_options", "check_set_sizes", "sigma_value_bytes", "done_future",
           "scatter", "secure_permutation", "pack_claims", "parse_claims", "OtPsiParty"]

SIGMA = 40  # statistical security: false matches, consistency checks
MAX_ITEMS = 1 << 31
MIN_PIECE = 1 << 13  # below ~2 pieces of this many items, per-item work stays in-process


def check_options(name: str, reveal: Reveal, batch_field: str, batch: int, window: int) -> None:
    """The agreed batch size lies in ``8..2^22``, the local window is ≥ 1, no cardinality mode."""
    if Reveal(reveal) is Reveal.CARDINALITY:
        raise UsageError(f"{name} does not offer cardinality mode (use the ECDH protocol)")
    if not 8 <= batch <= 1 << 22 or window < 1:
        raise UsageError(f"{name} {batch_field} must be in 8..2^22 and window at least 1")


def check_set_sizes(name: str, own_size: int, peer_size: int) -> None:
    """Both set sizes lie in ``0..2^31`` (usage error otherwise)."""
    if own_size > MAX_ITEMS or not 0 <= peer_size <= MAX_ITEMS:
        raise UsageError(f"set size out of range for {name}")


def sigma_value_bytes(server_size: int, client_size: int) -> int:
    """``⌈(σ + log2(n_S·n_R)) / 8⌉``: bytes per value for a false-match chance ≤ 2^-σ over all
    ``n_S·n_R`` pairs of uniformly random values (a protocol may need more, see KKRT)."""
    return math.ceil((SIGMA + math.log2(max(1, server_size) * max(1, client_size))) / 8)


def done_future(value: Any) -> "Future[Any]":
    """A future that already holds ``value``."""
    fut: Future[Any] = Future()
    fut.set_result(value)
    return fut


def scatter(executor: Executor, fn: Callable[[Any], Any], items: Sequence[Any]) -> "list[Future[Any]]":
    """``executor.scatter`` for inputs worth shipping out; small ones run here at once."""
    if executor.workers == 1 or len(items) < 2 * MIN_PIECE:
        return [done_future(fn(items))]
    return executor.scatter(fn, items)


def secure_permutation(count: int) -> np.ndarray:
    """A uniform permutation of ``range(count)`` from OS randomness (sort of 64-bit keys from
    ``secrets``; drawn again in the rare case of equal keys, so ties never bias it)."""
    while True:
        keys = np.frombuffer(secrets.token_bytes(8 * count), dtype=np.uint64)
        order = np.argsort(keys)  # ties are redrawn below, so the sort need not be stable
        if count < 2 or (np.diff(keys[order]) != 0).all():
            return order


def has_repeats(rows: np.ndarray) -> bool:
    """Whether an integer array holds some value twice (a sort, not ``np.unique``: a hash table
    in numpy 2.4, ~50x slower)."""
    if rows.size < 2:
        return False
    ordered = np.sort(rows)
    return not (ordered[1:] != ordered[:-1]).all()


def pack_claims(positions: np.ndarray, evidence: np.ndarray) -> bytes:
    """``both`` mode: one record per claimed match, the wire position (4 bytes, big endian) and
    its evidence."""
    claims = np.empty((positions.size, 4 + evidence.shape[1]), dtype=np.uint8)
    claims[:, :4] = np.asarray(positions).astype(">u4").view(np.uint8).reshape(-1, 4)
    claims[:, 4:] = evidence
    return claims.tobytes()


def parse_claims(body: bytes, kind: str, evidence_bytes: int, limit: int, positions: int) -> tuple[np.ndarray, np.ndarray]:
    """The records of :func:`pack_claims`: ``(positions int64, evidence uint8 (n, evidence_bytes))``.

    Refuses (:class:`MalformedMessage`) a body that is not whole records, more than ``limit``
    claims, or a position ``≥ positions``.
    """
    record = 4 + evidence_bytes
    if len(body) % record or len(body) // record > limit:
        raise MalformedMessage(f"{kind} has a bad length")
    claims = np.frombuffer(body, dtype=np.uint8).reshape(-1, record)
    wire = claims[:, :4].copy().view(">u4").reshape(-1).astype(np.int64)
    if wire.size and wire.max() >= positions:
        raise MalformedMessage(f"{kind} holds an out-of-range position")
    return wire, claims[:, 4:]


class OtPsiParty(PsiParty):
    """How a KKRT or RR22 party starts and ends: checks the set sizes, sends its hello (name,
    version, ``config.hello_params()``, own size), accepts the peer's (same parameters, the
    announced size) and finishes with an outcome. ``states`` is the protocol's state enum, with
    ``HELLO`` and ``DONE`` members."""

    def __init__(self, name: str, version: int, states: type[enum.Enum], items: Sequence[bytes], config: Any,
                 peer_size: int, executor: Executor, role: Role) -> None:
        super().__init__()
        check_set_sizes(name, len(items), peer_size)
        self._items = items
        self._config = config
        self._reveal = Reveal(config.reveal)
        self._peer_size = peer_size
        self._executor = executor
        self._states = states
        self._suite = get_suite(getattr(config, "suite", None))  # psi.crypto.suite: every primitive of the run
        self._hello = HelloState(name, version, role, config.hello_params(), {"size": len(items)}, self._suite)
        self._state = states.HELLO  # type: ignore[attr-defined]
        self._set_phase("hello")
        self._send(self._hello.own_message.kind, self._hello.own_message.body)

    def _accept_hello(self, message: Message) -> None:
        self._hello.accept(message)
        self._hello.check_peer_size(self._peer_size)
        self._session = self._hello.session

    def _send_window(self, kind: str, rows: Any, step: int, batches: int) -> None:
        """Send ``rows`` in messages of ``step`` rows, keeping at most ``config.window`` of them
        unacknowledged (``self._sent`` / ``self._acked`` count messages)."""
        while self._sent < batches and self._sent - self._acked < self._config.window:
            chunk = rows[self._sent * step : (self._sent + 1) * step]
            self._send(kind, chunk.tobytes())
            self._advance(chunk.shape[0])
            self._sent += 1

    def _done(self, outcome: PsiOutcome) -> None:
        self._outcome = outcome
        self._state = self._states.DONE  # type: ignore[attr-defined]
        self._finish()
