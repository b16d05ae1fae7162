"""Keyword PIR lookup: the client and one server session as sans-IO state machines.

Message flow (client C, server S; one OPRF round and one PIR round per batch of ids)::

    C -> S  hello            protocol psiq-pir v1, info: number of ids to look up (L)
    S -> C  hello            info: table version, max batch, entries, rows, columns, max lookups
                             (the server first reserves L lookups of the client's quota, or
                             refuses the whole session with code 7 before any OPRF work)
   [C -> S  pir.hint_request                      only when the client lacks this version's hint
    S -> C  pir.hint         params, H, boundaries; checked against the announced version]
    C -> S  pir.oprf         version | k blinded elements r*H1(id)
    S -> C  pir.evaluated    k elements k_S*B          (counted against the client's quota)
    C -> S  pir.query        version | k SimplePIR queries (m uint32 each)
    S -> C  pir.answer       k answers (rows uint32 each)
    ... more batches ...
    C -> S  pir.done

What each party learns. Server: how many ids a client looks up per session (it counts them per
client) and nothing about which ids or which buckets (OPRF blinding; LWE-encrypted queries).
Client: for each of its ids, listed or not and the label; the table size, shape and hint (a
linear image of the whole sealed matrix, which for at most 1024 columns determines it); for
each query one bucket of sealed records, or up to 32 / log2(p) buckets if it deviates from the
query format. Every record opens only with the OPRF output of its id.

Security model: semi-honest server for privacy of the ids (a malicious server could answer with
garbage, which makes the client report "not listed"); the client may be malicious, and every
OPRF evaluation it obtains is one id tested, so the quota is the defence against enumeration.
The server evaluates at most the L ids the client announced (and at most ``max_lookups`` per
session). Everything a peer announces is capped before it is used: the client refuses a table
whose hint or public matrix would exceed :class:`ClientLimits` before asking for the hint, and
checks the hint's dimensions before allocating anything for it; the server bounds the announced
count, the OPRF batch and the query size.
A query or OPRF request naming another table version is refused (code 5) so that a client with
a stale hint cannot silently read wrong buckets.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from psi.crypto.suite import get_suite
from psi.errors import (
    InvalidToken,
    MalformedMessage,
    ParameterMismatch,
    PolicyError,
    StaleVersion,
    UnexpectedMessage,
)
from psi.messages import Message, pack_items, unpack_items
from psi.protocols.base import Party, Role
from psi.protocols.handshake import Hello, check_peer_hello

from . import lwe
from .database import MAX_ROWS, Hint, Table, derive, open_bucket, oprf_for

__all__ = [
    "PROTOCOL",
    "PROTOCOL_VERSION",
    "LookupResult",
    "ClientLimits",
    "PirClient",
    "PirServerSession",
    "MAX_BATCH",
    "DEFAULT_MAX_LOOKUPS",
]

PROTOCOL = "psiq-pir"
PROTOCOL_VERSION = 1
SUITE = "oprf-ristretto255-sha512/simplepir-n1024-q2^32-sigma6.4/chacha20poly1305"
#: The hello's ``suite`` under ``--suite gm`` (psi.crypto.suite): every primitive a national one.
SUITE_GM = "gm/oprf-sm2-sm3/simplepir-n1024-q2^32-sigma6.4-sm4ctr/sm4-gcm"
SUITE_STRINGS = {"standard": SUITE, "gm": SUITE_GM}
MAX_BATCH = 1024
#: Default cap on the ids one session may look up (the daily quota is separate).
DEFAULT_MAX_LOOKUPS = 10_000
_VERSION_BYTES = 32
_COUNT = struct.Struct(">I")

HINT_REQUEST, HINT, OPRF, EVALUATED, QUERY, ANSWER, DONE = (
    "pir.hint_request",
    "pir.hint",
    "pir.oprf",
    "pir.evaluated",
    "pir.query",
    "pir.answer",
    "pir.done",
)


@dataclass(frozen=True)
class LookupResult:
    """One id's outcome: ``label`` is None when the id is not listed."""

    id: bytes
    listed: bool
    label: bytes | None = None


def _version_bytes(version: str) -> bytes:
    return bytes.fromhex(version)


def _split_version(body: bytes, what: str) -> tuple[str, bytes]:
    if len(body) < _VERSION_BYTES:
        raise MalformedMessage(f"{what} message truncated")
    return body[:_VERSION_BYTES].hex(), body[_VERSION_BYTES:]


def _stale(theirs: str, ours: str) -> StaleVersion:
    return StaleVersion(
        f"request built for table version {theirs[:16]}, the server serves {ours[:16]}: "
        "the hint is stale, fetch the new one and retry"
    )


@dataclass(frozen=True)
class ClientLimits:
    """What a client accepts from a server before allocating for it.

    ``max_hint_bytes`` caps the hint (4 * rows * 1024 bytes plus 8 per column);
    ``max_columns`` caps the public matrix A the client expands (4 KiB per column: 2^16 columns
    = 256 MiB) and every query (4 bytes per column per id). The defaults hold any table built
    with ``setup``'s default caps (16 MiB hint, 64 KiB queries) with room to spare.
    """

    max_hint_bytes: int = 64 * 1024 * 1024
    max_columns: int = 1 << 16

    def check(self, rows: int, columns: int) -> None:
        """Raise :class:`MalformedMessage` unless a rows x columns table fits these limits."""
        hint_bytes = 4 * rows * lwe.LWE_DIMENSION + 8 * columns
        if columns > self.max_columns:
            raise MalformedMessage(
                f"server announces a table of {columns} columns, more than this client accepts ({self.max_columns})"
            )
        if hint_bytes > self.max_hint_bytes:
            raise MalformedMessage(
                f"server announces a {hint_bytes}-byte hint, more than this client accepts ({self.max_hint_bytes})"
            )


def _announced_int(info: Mapping[str, Any], name: str, low: int, high: int) -> int:
    value = info.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise MalformedMessage(f"hello field {name!r} is missing or out of range")
    return value


def _own_hello(role: Role, info: dict, settings: Mapping[str, Any] | None, suite: str = "standard") -> Hello:
    return Hello(PROTOCOL, PROTOCOL_VERSION, role, {"suite": SUITE_STRINGS[suite], **dict(settings or {})}, info)


def _suite_name(value: Any) -> str:
    names = {text: name for name, text in SUITE_STRINGS.items()}
    return names.get(value, repr(value)) if isinstance(value, str) else repr(value)


def _check_suite(own: Hello, peer: Hello) -> None:
    """Refuse a peer of another crypto suite (exit 5), naming both suites."""
    ours, theirs = own.params.get("suite"), peer.params.get("suite")
    if ours != theirs:
        raise ParameterMismatch(
            f"suite: this side runs --suite {_suite_name(ours)}, the peer --suite {_suite_name(theirs)}"
            " (a PIR table keeps the suite it was set up under)"
        )


class ClientState(enum.Enum):
    """START -> WAIT_HELLO -> [WAIT_HINT] -> (WAIT_EVALUATED -> WAIT_ANSWER)* -> DONE."""

    START = "start"
    WAIT_HELLO = "wait-hello"
    WAIT_HINT = "wait-hint"
    WAIT_EVALUATED = "wait-evaluated"
    WAIT_ANSWER = "wait-answer"
    DONE = "done"


class PirClient(Party):
    """Looks up ``ids`` (normalised bytes). ``hints`` maps versions to already cached hints.

    ``settings`` (e.g. the key normalisation) must equal the server's, compared in the hello.
    """

    def __init__(
        self,
        ids: Sequence[bytes],
        *,
        hints: Mapping[str, Hint] | None = None,
        batch_size: int = MAX_BATCH,
        settings: Mapping[str, Any] | None = None,
        limits: ClientLimits | None = None,
        suite: str = "standard",
    ) -> None:
        super().__init__()
        self._suite = get_suite(suite)
        self._oprf = oprf_for(self._suite)
        if not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size must be in 1..{MAX_BATCH}")
        self._ids = [bytes(i) for i in ids]
        if any(not i for i in self._ids):
            raise ValueError("an id is empty (refused before anything is sent or charged)")
        self._limits = limits or ClientLimits()
        self._hints = dict(hints or {})
        self._batch_size = batch_size
        self._state = ClientState.START
        self._hint: Hint | None = None
        self.fetched_hint: Hint | None = None
        self.server_info: dict = {}
        self._results: list[LookupResult] = []
        self._next = 0
        self._blinds: list[bytes] = []
        self._outputs: list[bytes] = []
        self._query_state: lwe.QueryState | None = None
        self._version = ""
        self._announced = (0, 0)
        self._hello = _own_hello(Role.CLIENT, {"lookups": len(self._ids)}, settings, self._suite.name)

    @property
    def state(self) -> ClientState:
        return self._state

    @property
    def hint(self) -> Hint | None:
        return self._hint

    def result(self) -> list[LookupResult]:
        self._require_finished()
        return list(self._results)

    def _produce(self) -> None:
        if self._state is ClientState.START:
            hello = self._hello.to_message()
            self._send(hello.kind, hello.body)
            self._state = ClientState.WAIT_HELLO
            self._set_phase("hello")

    def _handle(self, message: Message) -> None:
        state = self._state
        if state is ClientState.WAIT_HELLO:
            peer = Hello.from_message(message)
            _check_suite(self._hello, peer)
            check_peer_hello(self._hello, peer)
            version = peer.info.get("table_version")
            batch = peer.info.get("max_batch", MAX_BATCH)
            if not isinstance(version, str) or len(version) != 2 * _VERSION_BYTES:
                raise MalformedMessage("server hello lacks a valid table version")
            try:
                bytes.fromhex(version)
            except ValueError:
                raise MalformedMessage("server hello has a bad table version") from None
            if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
                raise MalformedMessage("server hello has a bad max_batch")
            rows = _announced_int(peer.info, "rows", 1, MAX_ROWS)
            columns = _announced_int(peer.info, "columns", 1, 1 << 21)
            self._batch_size = min(self._batch_size, batch)
            self.server_info = dict(peer.info)
            self._version = version
            if version in self._hints:
                self._hint = self._hints[version]
                self._check_hint_suite()
                self._next_batch()
                return
            self._limits.check(rows, columns)  # before asking for (and receiving) the hint
            self._announced = (rows, columns)
            self._send(HINT_REQUEST)
            self._state = ClientState.WAIT_HINT
            self._set_phase("hint")
        elif state is ClientState.WAIT_HINT and message.kind == HINT:
            rows, columns = self._announced
            self._hint = Hint.from_bytes(message.body, self._version, expected_shape=(rows, columns))
            self._check_hint_suite()
            self.fetched_hint = self._hint
            self._next_batch()
        elif state is ClientState.WAIT_EVALUATED and message.kind == EVALUATED:
            self._on_evaluated(message.body)
        elif state is ClientState.WAIT_ANSWER and message.kind == ANSWER:
            self._on_answer(message.body)
        else:
            raise self._unexpected(message, state.value)

    def _check_hint_suite(self) -> None:
        """A table is one suite for good: its hint must name ours (the hello already did)."""
        assert self._hint is not None
        if self._hint.params.suite != self._suite.name:
            raise ParameterMismatch(
                f"the server's table was set up under suite {self._hint.params.suite!r}; this side runs {self._suite.name!r}"
            )

    def _next_batch(self) -> None:
        if self._next >= len(self._ids):
            self._send(DONE)
            self._state = ClientState.DONE
            self._finish()
            return
        batch = self._ids[self._next : self._next + self._batch_size]
        self._set_phase("oprf", len(self._ids))
        self._done_units = self._next
        blinded = []
        self._blinds = []
        for ident in batch:
            r, b = self._oprf.blind(ident)
            self._blinds.append(r)
            blinded.append(b)
        self._send(OPRF, _version_bytes(self._version) + pack_items(blinded, self._oprf.ELEMENT_SIZE))
        self._state = ClientState.WAIT_EVALUATED

    def _on_evaluated(self, body: bytes) -> None:
        assert self._hint is not None
        k = len(self._blinds)
        blob = unpack_items(body, self._oprf.ELEMENT_SIZE, exact_count=k)
        batch = self._ids[self._next : self._next + k]
        self._outputs = [
            self._oprf.finalize(ident, r, blob[i * 32 : (i + 1) * 32]) for i, (ident, r) in enumerate(zip(batch, self._blinds))
        ]
        self._blinds = []
        columns = [self._hint.bucket_of(derive(self._hint.params.salt, out, self._suite)[0]) for out in self._outputs]
        self._set_phase("pir", len(self._ids))
        self._done_units = self._next
        queries, self._query_state = lwe.make_queries(self._hint.params.lwe, columns, self._hint.a_matrix())
        body_out = _version_bytes(self._version) + _COUNT.pack(k) + queries.astype("<u4").tobytes()
        self._send(QUERY, body_out)
        self._state = ClientState.WAIT_ANSWER

    def _on_answer(self, body: bytes) -> None:
        assert self._hint is not None and self._query_state is not None
        params = self._hint.params
        k = len(self._outputs)
        if len(body) != 4 + 4 * k * params.rows or _COUNT.unpack_from(body)[0] != k:
            raise MalformedMessage("answer length does not match the queries")
        answers = np.frombuffer(body, dtype="<u4", offset=4).reshape(k, params.rows).astype(np.uint32)
        digits = lwe.recover(params.lwe, self._hint.hint, answers, self._query_state)
        batch = self._ids[self._next : self._next + k]
        for ident, output, column in zip(batch, self._outputs, digits):
            try:
                label = open_bucket(params, column, output)
            except InvalidToken:
                label = None  # opaque: reported outward as "not listed"
            self._results.append(LookupResult(ident, label is not None, label))
        self._next += k
        self._advance(k)
        self._outputs, self._query_state = [], None
        self._next_batch()


class ServerState(enum.Enum):
    """WAIT_HELLO -> READY (hint, oprf, query any number of times) -> DONE."""

    WAIT_HELLO = "wait-hello"
    READY = "ready"
    DONE = "done"


class PirServerSession(Party):
    """Serves one client connection from ``table``.

    The client's hello announces how many ids it will look up (L). The session refuses L above
    ``max_lookups`` (code 7), then calls ``reserve(L)``, which may raise
    :class:`~psi.errors.QuotaExceeded` to refuse the whole session before any OPRF work.
    ``charge(k)`` is called before ``k`` OPRF evaluations (and may raise too); a client that asks
    for more evaluations than it announced is refused (code 4) before anything is evaluated.
    """

    def __init__(
        self,
        table: Table,
        *,
        charge: Callable[[int], None] | None = None,
        reserve: Callable[[int], None] | None = None,
        max_batch: int = MAX_BATCH,
        max_lookups: int = DEFAULT_MAX_LOOKUPS,
        settings: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not 1 <= max_batch <= MAX_BATCH:
            raise ValueError(f"max_batch must be in 1..{MAX_BATCH}")
        if max_lookups < 0:
            raise ValueError("max_lookups must be non-negative")
        self._table = table
        self._charge = charge
        self._reserve = reserve
        self._max_batch = max_batch
        self._max_lookups = max_lookups
        self.announced = 0
        self._state = ServerState.WAIT_HELLO
        self._granted = 0
        self._hints_sent = 0
        self.evaluations = 0
        self.queries = 0
        self._hello = _own_hello(
            Role.SERVER,
            {"table_version": table.version, "max_batch": max_batch, "entries": table.params.entries,
             "rows": table.params.rows, "columns": table.params.columns, "max_lookups": max_lookups},
            settings,
            table.params.suite,  # a table is one suite for good (set at setup)
        )
        self._oprf = oprf_for(table.params.suite)

    @property
    def state(self) -> ServerState:
        return self._state

    def result(self) -> dict:
        self._require_finished()
        return {"evaluations": self.evaluations, "queries": self.queries, "table_version": self._table.version}

    def _handle(self, message: Message) -> None:
        if self._state is ServerState.WAIT_HELLO:
            peer = Hello.from_message(message)
            _check_suite(self._hello, peer)
            check_peer_hello(self._hello, peer)
            lookups = peer.info.get("lookups")
            if isinstance(lookups, bool) or not isinstance(lookups, int) or lookups < 0:
                raise MalformedMessage("client hello lacks a valid 'lookups' count")
            if lookups > self._max_lookups:
                raise PolicyError(
                    f"this session asks for {lookups} lookups; the service allows at most "
                    f"{self._max_lookups} per session: split the input"
                )
            if self._reserve is not None:
                self._reserve(lookups)  # the whole session fits the quota, or nothing runs
            self.announced = lookups
            message_out = self._hello.to_message()
            self._send(message_out.kind, message_out.body)
            self._state = ServerState.READY
            self._set_phase("serve")
            return
        if self._state is not ServerState.READY:
            raise self._unexpected(message, self._state.value)
        kind = message.kind
        if kind == HINT_REQUEST:
            if message.body or self._hints_sent >= 2:
                raise UnexpectedMessage("hint requested again or with a body")
            self._hints_sent += 1
            self._send(HINT, self._table.hint_blob())
        elif kind == OPRF:
            self._on_oprf(message.body)
        elif kind == QUERY:
            self._on_query(message.body)
        elif kind == DONE:
            if message.body:
                raise MalformedMessage("done message has a body")
            self._state = ServerState.DONE
            self._finish()
        else:
            raise self._unexpected(message, self._state.value)

    def _check_version(self, version: str) -> None:
        if version != self._table.version:
            raise _stale(version, self._table.version)

    def _on_oprf(self, body: bytes) -> None:
        if self._granted:
            raise UnexpectedMessage("OPRF request before the previous batch was queried")
        version, rest = _split_version(body, "OPRF")
        self._check_version(version)
        blob = unpack_items(rest, self._oprf.ELEMENT_SIZE, max_count=self._max_batch)
        k = len(blob) // self._oprf.ELEMENT_SIZE
        if k == 0:
            raise MalformedMessage("OPRF request with no elements")
        if self.evaluations + k > self.announced:
            raise MalformedMessage(
                f"OPRF request for {k} ids goes beyond the {self.announced} lookups announced "
                f"({self.evaluations} already evaluated)"
            )
        elements = [self._oprf.decode_element(blob[i * 32 : (i + 1) * 32]) for i in range(k)]
        if self._charge is not None:
            self._charge(k)
        self._send(EVALUATED, pack_items(self._table.evaluate_blinded(elements), self._oprf.ELEMENT_SIZE))
        self.evaluations += k
        self._granted = k

    def _on_query(self, body: bytes) -> None:
        version, rest = _split_version(body, "query")
        self._check_version(version)
        if len(rest) < 4:
            raise MalformedMessage("query message truncated")
        (k,) = _COUNT.unpack_from(rest)
        columns = self._table.params.columns
        if not 1 <= k <= self._granted:
            raise MalformedMessage(f"{k} queries, but {self._granted} ids were evaluated for this batch")
        if len(rest) != 4 + 4 * k * columns:
            raise MalformedMessage(f"query length does not match {k} x {columns} uint32 values")
        queries = np.frombuffer(rest, dtype="<u4", offset=4).reshape(k, columns).astype(np.uint32)
        answers = self._table.answer(queries)
        self._send(ANSWER, _COUNT.pack(k) + answers.astype("<u4").tobytes())
        self.queries += k
        self._granted = 0

