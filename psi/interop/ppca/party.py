"""One party of a PPCA ECDH-PSI session (PPCA 9—2023), as a sans-IO state machine.

Message flow (ranks 0 and 1; ``k0``, ``k1`` their secrets; ``H`` the suite's hash-to-curve)::

    [handshake, unless both sides skip it]
    rank 1 -> rank 0   main #1   HandshakeRequest (suites, formats, truncation, item count, result_to)
    rank 0 -> rank 1   main #1   HandshakeResponse (chosen suite + truncation, or an error code)
    [first stage: both directions at once]
    r -> peer          main #(o+1), #(o+2), ...  "enc" batches: k_r * H(item), then one empty last batch
    [second stage: to every rank that gets the result]
    peer -> receiver   sub #1, #2, ...           "dual.enc": k_peer * (k_r * H(item)) of the receiver's
                                                 items, same batch order, truncated to the tail bytes
    receiver: own item j matches iff its dual value equals one of k_r * (k_peer * H(peer item)),
              computed locally from the peer's "enc" batches.

``o`` is 1 with the handshake and 0 without (SecretFlow 0.9.2's ``bucket_psi(ic_mode=True)``
sends no handshake). ``main`` and ``sub`` are logical channels; :mod:`.link` maps them to the
spec's keys ``{session}:P2P-{n}:{src}->{dst}`` and ``{session}-0:P2P-{n}:...``.

What each party learns: a receiver learns which of its own items are in the intersection
(and the peer's set size); a non-receiver learns only the peer's set size. The masked values
are pseudorandom under DDH (SM2) or the x-only DH assumption on Curve25519 and its twist.
Semi-honest security, as in the spec: a peer that deviates (e.g. re-masks with another key)
can make the receiver's result wrong but learns nothing more from psiq's messages; every value
it sends is validated before psiq multiplies it (see :mod:`.suite`).

The driver asks :meth:`PpcaEcdhParty.wanted` which message it needs next, delivers it with
:meth:`receive`, and sends whatever :meth:`outgoing` returns. Heavy work runs on the injected
:class:`psi.parallel.Executor`.
"""

from __future__ import annotations

import enum
import math
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Sequence

from ...errors import IncompatiblePeer, MalformedMessage, ProtocolStateError, UnexpectedMessage, UsageError
from ...parallel import Executor
from . import codec
from .suite import Suite, generate_secret, mask_items, remask_points, suite_by_triple

__all__ = ["MAIN", "SUB", "PpcaConfig", "PpcaOutcome", "PpcaEcdhParty", "DEFAULT_BATCH", "DEFAULT_TRUNCATION_BITS"]

MAIN, SUB = "main", "sub"
DEFAULT_BATCH = 4096
DEFAULT_TRUNCATION_BITS = 96  # what SecretFlow uses, and psiq's choice without a handshake
MAX_BATCH_COUNT = 1 << 20

Key = tuple[str, int]


class State(enum.Enum):
    HANDSHAKE = "handshake"
    EXCHANGE = "exchange"  # sending own enc, receiving the peer's enc
    DUAL = "dual"  # receiving the peer's dual.enc of own items
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True)
class PpcaConfig:
    """Session settings. ``suites``: what this side accepts (rank 1 proposes them in this order).
    ``result_to``: -1 (both ranks), 0 or 1. ``handshake``: False for peers that send none."""

    rank: int
    suites: tuple[Suite, ...]
    result_to: int = 0
    handshake: bool = True
    batch_size: int = DEFAULT_BATCH
    max_peer_items: int = 100_000_000

    def __post_init__(self) -> None:
        if self.rank not in (0, 1):
            raise UsageError(f"rank must be 0 or 1, not {self.rank}")
        if self.result_to not in (-1, 0, 1):
            raise UsageError(f"result-to must be -1 (all), 0 or 1, not {self.result_to}")
        if not self.suites:
            raise UsageError("no suite to offer")
        if not 1 <= self.batch_size <= MAX_BATCH_COUNT:
            raise UsageError(f"batch size {self.batch_size} out of range")


@dataclass
class PpcaOutcome:
    """``indices``: own item positions in the intersection, ordered by their shared tag (the
    truncated dual value, which a psiq peer sorts by too, so two psiq receivers list the
    intersection in the same order); None when this rank gets no result."""

    indices: list[int] | None
    suite: str
    peer_items: int
    truncation_bits: int
    details: dict[str, Any] = field(default_factory=dict)


class PpcaEcdhParty:
    """See the module docstring. Items are the raw key bytes (SecretFlow joins composite keys with ",")."""

    def __init__(self, config: PpcaConfig, items: Sequence[bytes], executor: Executor | None = None) -> None:
        self.config = config
        self._items = items
        self._executor = executor or Executor(workers=1)
        self._peer = 1 - config.rank
        self._state = State.HANDSHAKE if config.handshake else State.EXCHANGE
        self._outbox: list[tuple[Key, bytes]] = []
        self._suite: Suite | None = None if config.handshake else config.suites[0]
        self._bits = DEFAULT_TRUNCATION_BITS
        self._offset = 1 if config.handshake else 0
        self._declared_peer_items: int | None = None
        self._own_counts: list[int] = []
        self._enc_received = 0
        self._pending: list[Future[bytes]] = []
        self._dual_sent = 0
        self._peer_items = 0
        self._dual_received: list[bytes] = []
        self._dual_index = 0
        self._sent_own = False
        self._secret: bytes | None = None
        self._outcome: PpcaOutcome | None = None
        self._error: BaseException | None = None
        self._refusal: list[tuple[Key, bytes]] = []
        self._peer_tags: set[bytes] = set()
        self._width = 0
        if config.handshake and config.rank == 1:
            request = codec.encode_request(1, list(config.suites), len(items), config.result_to)
            self._outbox.append(((MAIN, 1), request))

    # -- public API ---------------------------------------------------------------------------
    @property
    def suite(self) -> Suite | None:
        return self._suite

    @property
    def finished(self) -> bool:
        return self._state is State.DONE and not self._outbox

    def wanted(self) -> Key | None:
        """The next message this party waits for, or None when it waits for nothing."""
        self._check()
        if self._state is State.HANDSHAKE:
            return (MAIN, 1)
        if self._state is State.EXCHANGE:
            return (MAIN, self._offset + 1 + self._enc_received)
        if self._state is State.DUAL:
            return (SUB, 1 + self._dual_index)
        return None

    def outgoing(self) -> list[tuple[Key, bytes]]:
        """Messages to send now, in order (drains the queue)."""
        self._check()
        try:
            if self._state in (State.EXCHANGE, State.DUAL, State.DONE) and not self._sent_own:
                self._send_own()
        except BaseException as err:
            self._fail(err)
            raise
        out, self._outbox = self._outbox, []
        return out

    def receive(self, key: Key, data: bytes) -> None:
        """Consume the message for ``key`` (which must be :meth:`wanted`)."""
        self._check()
        if key != self.wanted():
            self._fail(UnexpectedMessage(f"message {key} while waiting for {self.wanted()}"))
        try:
            if self._state is State.HANDSHAKE:
                self._on_handshake(data)
            elif self._state is State.EXCHANGE:
                self._on_enc(data)
            elif self._state is State.DUAL:
                self._on_dual(data)
        except BaseException as err:
            self._fail(err)
            raise

    def result(self) -> PpcaOutcome:
        self._check()
        if self._outcome is None:
            raise ProtocolStateError("result() before the session finished")
        return self._outcome

    # -- handshake ----------------------------------------------------------------------------
    def _on_handshake(self, data: bytes) -> None:
        if self.config.rank == 1:
            self._suite, self._bits = codec.parse_response(data, list(self.config.suites), self.config.result_to)
        else:
            self._answer_request(data)
        if self._bits != -1 and self._bits % 8:
            raise IncompatiblePeer(f"truncation to {self._bits} bits is not a whole number of bytes")
        self._state = State.EXCHANGE

    def _answer_request(self, data: bytes) -> None:
        if not codec.looks_like_handshake(data):
            raise IncompatiblePeer("peer sent no handshake (its first message is a cipher batch);"
                                   " SecretFlow's bucket_psi(ic_mode=True) does that: run psiq with --no-handshake")
        try:
            proposal = codec.parse_request(data, self._peer)
            accepted = {s.triple: s for s in self.config.suites}
            chosen = next((accepted[t] for t in proposal.suites if t in accepted), None)
            if chosen is None:
                raise codec.HandshakeRefused(
                    f"peer proposed only suites psiq does not accept here: {proposal.describe()}"
                    f" (psiq accepts {', '.join(s.name for s in self.config.suites)})", codec.UNSUPPORTED_PARAMS)
            if proposal.point_formats and chosen.point_format not in proposal.point_formats:
                raise codec.HandshakeRefused(
                    f"peer's point formats {proposal.point_formats} do not include {chosen.point_format}"
                    f" for {chosen.name}", codec.UNSUPPORTED_PARAMS)
            if proposal.result_to != self.config.result_to:
                raise codec.HandshakeRefused(
                    f"peer asks for the result on {_who(proposal.result_to)}, psiq was started with"
                    f" --result-to {_who(self.config.result_to)}", codec.UNSUPPORTED_PARAMS)
            if proposal.item_count > self.config.max_peer_items:
                raise codec.HandshakeRefused(f"peer declares {proposal.item_count} items, more than the cap"
                                             f" {self.config.max_peer_items}", codec.HANDSHAKE_REFUSED)
        except codec.HandshakeRefused as refused:
            self._refusal = [((MAIN, 1), codec.encode_refusal(refused.code, str(refused)))]
            raise
        self._suite = chosen
        self._declared_peer_items = proposal.item_count
        self._bits = truncation_bits(len(self._items), proposal.item_count, chosen) if proposal.truncation else -1
        response = codec.encode_response(chosen, self._bits, self.config.result_to, len(self._items))
        self._outbox.append(((MAIN, 1), response))

    # -- first stage --------------------------------------------------------------------------
    def _send_own(self) -> None:
        suite = self._require_suite()
        self._secret = generate_secret(suite.name)
        size = self.config.batch_size
        batches = [self._items[i : i + size] for i in range(0, len(self._items), size)]
        masked = self._executor.map(mask_items, [(suite.name, self._secret, list(b)) for b in batches])
        for index, (batch, blob) in enumerate(zip(batches, masked)):
            self._own_counts.append(len(batch))
            self._outbox.append(((MAIN, self._offset + 1 + index),
                                 codec.encode_batch("enc", index, False, len(batch), blob)))
        closing = len(batches)
        self._outbox.append(((MAIN, self._offset + 1 + closing), codec.encode_batch("enc", closing, True, 0, b"")))
        self._sent_own = True

    def _on_enc(self, data: bytes) -> None:
        suite = self._require_suite()
        if not self._sent_own:
            self._send_own()
        index = self._enc_received
        batch = codec.parse_batch(data, "enc", index, suite.point_size, MAX_BATCH_COUNT)
        self._peer_items += batch.count
        limit = self._declared_peer_items if self._declared_peer_items is not None else self.config.max_peer_items
        if self._peer_items > limit:
            raise MalformedMessage(f"peer sent more than {limit} items"
                                   + (" (the count it declared in the handshake)" if self._declared_peer_items
                                      is not None else " (--max-peer-size)"))
        self._enc_received += 1
        if batch.count:  # re-mask in the background while the next batches arrive
            self._pending.append(self._executor.submit(remask_points, (suite.name, self._secret, batch.data,
                                                                       self._tail())))
        self._collect_remasked(wait=batch.last)
        if batch.last:
            if self._declared_peer_items is not None and self._peer_items != self._declared_peer_items:
                raise MalformedMessage(f"peer sent {self._peer_items} items but declared"
                                       f" {self._declared_peer_items} in the handshake")
            self._end_second_stage()

    # -- second stage -------------------------------------------------------------------------
    def _tail(self) -> int:
        return 0 if self._bits == -1 else self._bits // 8

    def _collect_remasked(self, wait: bool) -> None:
        """Take finished re-maskings in batch order: queue them for the peer as "dual.enc" if it
        gets the result, keep their tags if this rank does. ``wait``: take all, blocking."""
        suite = self._require_suite()
        width = self._tail() or suite.point_size
        while self._pending and (wait or self._pending[0].done()):
            blob = self._pending.pop(0).result()  # a peer value that failed validation raises here
            if self.config.result_to in (-1, self._peer):
                self._outbox.append(((SUB, 1 + self._dual_sent),
                                     codec.encode_batch("dual.enc", self._dual_sent, False, len(blob) // width, blob)))
                self._dual_sent += 1
            if self.config.result_to in (-1, self.config.rank):
                self._peer_tags.update(blob[i : i + width] for i in range(0, len(blob), width))
        self._width = width

    def _end_second_stage(self) -> None:
        suite = self._require_suite()
        if self.config.result_to in (-1, self._peer):
            self._outbox.append(((SUB, 1 + self._dual_sent),
                                 codec.encode_batch("dual.enc", self._dual_sent, True, 0, b"")))
        if self.config.result_to in (-1, self.config.rank):
            self._state = State.DUAL
        else:
            self._outcome = PpcaOutcome(None, suite.name, self._peer_items, self._bits)
            self._state = State.DONE

    def _on_dual(self, data: bytes) -> None:
        suite = self._require_suite()
        index = self._dual_index
        expected = self._own_counts[index] if index < len(self._own_counts) else 0
        batch = codec.parse_batch(data, "dual.enc", index, self._width, expected)
        if batch.count != expected:
            raise MalformedMessage(f"dual.enc batch {index}: {batch.count} values for {expected} items")
        if batch.last != (index == len(self._own_counts)):
            raise MalformedMessage(f"dual.enc batch {index}: last-batch flag {batch.last} does not match"
                                   f" the {len(self._own_counts)} batches sent")
        self._dual_received.append(batch.data)
        self._dual_index += 1
        if batch.last:
            self._match(suite)

    def _match(self, suite: Suite) -> None:
        width, tags, found = self._width, self._peer_tags, []
        position = 0
        for blob in self._dual_received:
            for i in range(0, len(blob), width):
                tag = blob[i : i + width]
                if tag in tags:
                    found.append((tag, position))
                position += 1
        found.sort()
        self._outcome = PpcaOutcome([p for _, p in found], suite.name, self._peer_items, self._bits,
                                    {"intersection": len(found)})
        self._peer_tags = set()
        self._state = State.DONE

    # -- helpers ------------------------------------------------------------------------------
    def _require_suite(self) -> Suite:
        if self._suite is None:  # pragma: no cover - states guarantee it
            raise ProtocolStateError("no suite agreed yet")
        return self._suite

    def _check(self) -> None:
        if self._state is State.FAILED:
            raise ProtocolStateError(f"session already failed: {self._error}") from self._error

    def _fail(self, err: BaseException) -> None:
        self._outbox = []
        self._state, self._error = State.FAILED, err
        raise err

    def pending_refusal(self) -> list[tuple[Key, bytes]]:
        """After a refused handshake: the HandshakeResponse carrying the spec's error code, for
        the driver to send before it exits (so the peer learns why)."""
        out, self._refusal = self._refusal, []
        return out


def truncation_bits(own: int, peer: int, suite: Suite) -> int:
    """The spec's bound ceil(log2 nA) + ceil(log2 nB) + 30, at least 96 (SecretFlow's fixed
    length), rounded up to whole bytes and at most the whole point."""
    need = math.ceil(math.log2(max(own, 2))) + math.ceil(math.log2(max(peer, 2))) + 30
    bits = max(DEFAULT_TRUNCATION_BITS, -(-need // 8) * 8)
    return min(bits, 8 * suite.point_size)


def _who(result_to: int) -> str:
    return "both ranks (-1)" if result_to == -1 else f"rank {result_to}"


def suite_of(triple: tuple[int, int, int]) -> Suite | None:
    return suite_by_triple(*triple)
