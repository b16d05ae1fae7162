"""ECDH (commutative-encryption) PSI with a compressed server set, as sans-IO state machines.

Message flow (after the shared ``hello`` handshake, which the API layer runs and which gives
each side ``peer_size``; ``H`` = hash-to-group, ``a`` = client key, ``b`` = server key)::

    client                                            server
      ecdh.query      {count: m}                ->                       (m distinct items)
      ecdh.blinded    [H(x)^a] x batch_size     ->                       (<= window in flight)
                                                <-  ecdh.set        {filter, count, bytes}
                                                <-  ecdh.set-chunk  filter of H(y)^b (chunks)
                                                <-  ecdh.evaluated  [H(x)^ab] per batch
      (unblind: (H(x)^ab)^(1/a) = H(x)^b, test against the filter)
      ecdh.matches    sorted fingerprints       ->                       (reveal=both only)

Design: the client *unblinds* instead of re-encrypting the server's set (OpenMined's design),
so the server's set travels as a filter (raw / bloom / gcs, :mod:`psi.crypto.filters`) rather
than as group elements, and costs the client nothing per server element. Scalar
multiplications: client ``2 m`` (blind, unblind), server ``m + n`` (the ``n`` is once per key:
with a prepared set it is paid once across sessions). That ``2m + m (+ n)`` is the floor of
this design; the alternative (client raises every ``H(y)^b`` to ``a``) costs ``n`` more client
multiplications and sends ``n`` full elements. Unblinding needs scalar inverses, which exist in
all three groups (for x25519 see :mod:`psi.crypto.groups`).

What each party learns:

* ``receiver`` — the client learns which of its items are in the server's set (and the
  server's distinct-set size); the server learns only the client's distinct-set size.
* ``both`` — additionally the client returns fingerprints of the matched ``H(x)^b``, sorted;
  the server maps them to its own items. Both ``indices`` lists are in that sorted order, so
  ``client.indices[i]`` and ``server.indices[i]`` hold the same key (first occurrence of each
  distinct matched key on both sides).
* ``cardinality`` — the server shuffles ``H(x)^ab`` across the whole set before returning it,
  so the client learns only the count of its distinct items in the intersection; the server
  learns nothing (no count either).

Sizes leak on both sides (distinct counts). Duplicates are removed before anything is sent, so
multiplicities do not leak; in ``receiver`` mode every position of a matched item is reported.

Security: semi-honest parties; privacy rests on DDH / one-more-DH in the random-oracle model
(``H`` is a hash-to-group with the domain tag ``psiq-ecdh-v1-<group>``). Fresh secret keys per
session, except a server that loads a persisted key with a :class:`PreparedSet` (unbalanced
mode): then the same ``H(y)^b`` go to every client, so clients can link sessions and see set
changes, and each evaluation a client obtains is one more one-more-DH query; the outcome says
so (``details["persisted_key"]``). Every received element is validated (length, canonical,
group membership, not identity/low order) in the worker before it is multiplied; counts are
checked against the announced sizes. A false positive of the filter (expected number at most
``2^-fpr_bits`` per session) would report one extra match.

Group choice (measured, see :mod:`psi.crypto.groups`): per multiplication x25519 ≈ 32 µs,
ristretto255 ≈ 43 µs, p256 ≈ 72 µs (p256 hash-to-curve a further 88 µs, pure Python); x25519
is the default. Server set at 10^5 x 10^5, 2^-40: gcs 7.4 bytes/element (auto's choice), raw
10.0, bloom 10.3.

Client states: ``START -> RUNNING -> DONE``. Server states: ``START -> SERVING [->
AWAIT_MATCHES (both)] -> DONE``. Any exception moves a party to the failed state.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
import struct
from dataclasses import dataclass
from functools import partial
from typing import Any, Sequence

from ..crypto import filters
from ..crypto.groups import (
    DEFAULT_GROUP,
    GROUP_NAMES,
    get_group,
    hash_and_multiply_batch,
    multiply_batch,
)
from ..errors import InputError, MalformedMessage, UsageError
from ..messages import Message, pack_items, pack_json, unpack_items, unpack_json
from ..parallel import Executor, split
from .base import Party, PsiOutcome, Reveal

__all__ = [
    "NAME",
    "VERSION",
    "Config",
    "Client",
    "Server",
    "ServerKey",
    "PreparedSet",
    "prepare_server_set",
    "input_digest",
]

NAME = "ecdh"
VERSION = 1

QUERY = "ecdh.query"
BLINDED = "ecdh.blinded"
EVALUATED = "ecdh.evaluated"
SET = "ecdh.set"
SET_CHUNK = "ecdh.set-chunk"
MATCHES = "ecdh.matches"
CHUNK_BYTES = 8 * 1024 * 1024
COMPRESSIONS = ("auto",) + filters.FILTER_KINDS


def _dst(group: str) -> bytes:
    return f"psiq-ecdh-v{VERSION}-{group}".encode("ascii")


@dataclass(frozen=True)
class Config:
    """ECDH-PSI settings; everything in :meth:`hello_params` must match the peer's."""

    reveal: Reveal = Reveal.RECEIVER
    group: str = DEFAULT_GROUP
    compression: str = "auto"
    fpr_bits: int = 40
    batch_size: int = 8192
    window: int = 4

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "reveal", Reveal(self.reveal))
        except ValueError:
            raise UsageError(f"unknown reveal mode {self.reveal!r}") from None
        if self.group not in GROUP_NAMES:
            raise UsageError(f"unknown group {self.group!r}; choose one of {', '.join(GROUP_NAMES)}")
        if self.compression not in COMPRESSIONS:
            raise UsageError(f"unknown compression {self.compression!r}; choose one of {', '.join(COMPRESSIONS)}")
        if not isinstance(self.fpr_bits, int) or not 8 <= self.fpr_bits <= 96:
            raise UsageError("fpr_bits must be an integer between 8 and 96")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise UsageError("batch_size must be a positive integer")
        if not isinstance(self.window, int) or self.window < 1:
            raise UsageError("window must be a positive integer")

    def hello_params(self) -> dict[str, Any]:
        return {
            "reveal": self.reveal.value,
            "group": self.group,
            "compression": self.compression,
            "fpr_bits": self.fpr_bits,
        }


# -- keys and prepared sets (unbalanced mode) -------------------------------------------------
_KEY_MAGIC = b"PSQKEY1\n"


class ServerKey:
    """A persisted server secret for one group. The scalar is never a public attribute."""

    __slots__ = ("group", "_scalar")

    def __init__(self, group: str, scalar: bytes) -> None:
        get_group(group).check_scalar(scalar)
        self.group = group
        self._scalar = bytes(scalar)

    @classmethod
    def generate(cls, group: str = DEFAULT_GROUP) -> "ServerKey":
        return cls(group, get_group(group).generate_scalar())

    @property
    def fingerprint(self) -> str:
        """Hex id of the key (domain-separated hash; reveals nothing about the scalar)."""
        tag = b"psiq-ecdh-key-fingerprint\x00" + self.group.encode() + b"\x00"
        return hashlib.sha256(tag + self._scalar).hexdigest()[:32]

    def to_bytes(self) -> bytes:
        name = self.group.encode("ascii")
        return _KEY_MAGIC + bytes([len(name)]) + name + self._scalar

    @classmethod
    def from_bytes(cls, data: bytes) -> "ServerKey":
        if not data.startswith(_KEY_MAGIC) or len(data) < len(_KEY_MAGIC) + 1:
            raise InputError("not a psiq ECDH key file")
        name_len = data[len(_KEY_MAGIC)]
        start = len(_KEY_MAGIC) + 1
        try:
            group = data[start : start + name_len].decode("ascii")
        except UnicodeDecodeError:
            raise InputError("key file names an unknown group") from None
        if group not in GROUP_NAMES:
            raise InputError(f"key file names an unknown group {group!r}")
        scalar = data[start + name_len :]
        try:
            return cls(group, scalar)
        except UsageError as err:
            raise InputError(f"key file holds an invalid key: {err}") from None

    def __repr__(self) -> str:
        return f"ServerKey(group={self.group!r}, fingerprint={self.fingerprint!r})"


def input_digest(items: Sequence[bytes]) -> bytes:
    """SHA-256 over the items in order (length-prefixed): ties a prepared set to its input."""
    h = hashlib.sha256(b"psiq-ecdh-input-digest\x00" + struct.pack(">Q", len(items)))
    for item in items:
        h.update(struct.pack(">I", len(item)))
        h.update(item)
    return h.digest()


_PREP_MAGIC = b"PSQPREP1"


@dataclass(frozen=True, eq=False)
class PreparedSet:
    """The server's encrypted set ``H(y)^b`` (input order) under a persisted :class:`ServerKey`.

    File format (:meth:`to_bytes`): ``"PSQPREP1" | header length u32 | JSON header |
    elements``; the header holds protocol, version, group, key fingerprint, count, element
    size and the input digest. The key itself is *not* in the file: pass it to
    :meth:`from_bytes`, which checks the fingerprint.
    """

    key: ServerKey
    count: int
    digest: bytes
    elements: bytes

    @property
    def group(self) -> str:
        return self.key.group

    def to_bytes(self) -> bytes:
        header = pack_json(
            {
                "protocol": NAME,
                "version": VERSION,
                "group": self.group,
                "key_fingerprint": self.key.fingerprint,
                "count": self.count,
                "element_size": get_group(self.group).element_size,
                "input_digest": self.digest.hex(),
            }
        )
        return _PREP_MAGIC + struct.pack(">I", len(header)) + header + self.elements

    @classmethod
    def from_bytes(cls, data: bytes, key: ServerKey) -> "PreparedSet":
        if not data.startswith(_PREP_MAGIC) or len(data) < len(_PREP_MAGIC) + 4:
            raise InputError("not a psiq prepared-set file")
        (header_len,) = struct.unpack_from(">I", data, len(_PREP_MAGIC))
        start = len(_PREP_MAGIC) + 4
        if header_len > 64 * 1024 or len(data) < start + header_len:
            raise InputError("prepared-set header is truncated or too large")
        try:
            header = unpack_json(data[start : start + header_len], max_size=64 * 1024)
            group, count = header["group"], header["count"]
            size, digest = header["element_size"], bytes.fromhex(header["input_digest"])
            fingerprint = header["key_fingerprint"]
            ok = header["protocol"] == NAME and header["version"] == VERSION
        except (MalformedMessage, KeyError, TypeError, ValueError):
            raise InputError("prepared-set header is malformed") from None
        if not ok:
            raise InputError("prepared set was made for another protocol or version")
        if group != key.group or not hmac.compare_digest(str(fingerprint), key.fingerprint):
            raise InputError("prepared set was made with another key")
        if not isinstance(count, int) or count < 0 or size != get_group(group).element_size:
            raise InputError("prepared-set header is malformed")
        elements = data[start + header_len :]
        if len(elements) != count * size or len(digest) != 32:
            raise InputError("prepared-set length does not match its header")
        return cls(key, count, digest, bytes(elements))


def prepare_server_set(
    items: Sequence[bytes], group: str, key: ServerKey, executor: Executor, *, batch_size: int = 8192
) -> PreparedSet:
    """Encrypt the server's items once under ``key`` for reuse across sessions."""
    if key.group != group:
        raise UsageError(f"key is for group {key.group!r}, not {group!r}")
    items = _check_items(items)
    work = partial(hash_and_multiply_batch, group, _dst(group), key._scalar)
    parts = executor.map(work, split(items, batch_size))
    elements = b"".join(b"".join(part) for part in parts)
    return PreparedSet(key, len(items), input_digest(items), elements)


# -- helpers ----------------------------------------------------------------------------------
def _check_items(items: Sequence[bytes]) -> Sequence[bytes]:
    for item in items:
        if not isinstance(item, (bytes, bytearray)):
            raise InputError("PSI items must be bytes")
    return items


def _distinct(items: Sequence[bytes]) -> tuple[list[bytes], list[list[int]]]:
    """Distinct items in first-seen order, and every position of each."""
    where: dict[bytes, list[int]] = {}
    for position, item in enumerate(items):
        where.setdefault(bytes(item), []).append(position)
    return list(where), list(where.values())


def _check_peer_size(peer_size: int) -> int:
    if not isinstance(peer_size, int) or peer_size < 0:
        raise UsageError("peer_size must be a non-negative integer")
    return peer_size


def _filter_kind(config: Config, n_set: int, n_query: int) -> str:
    if config.compression != "auto":
        return config.compression
    return filters.choose_filter(n_set, n_query, config.fpr_bits)


class _ClientState(enum.Enum):
    START = "start"
    RUNNING = "running"
    DONE = "done"


class _ServerState(enum.Enum):
    START = "start"
    SERVING = "serving"
    AWAIT_MATCHES = "await-matches"
    DONE = "done"


# -- client -----------------------------------------------------------------------------------
class Client(Party):
    """The party that starts the session and (in receiver/both mode) learns the intersection."""

    def __init__(self, items: Sequence[bytes], config: Config, *, peer_size: int, executor: Executor) -> None:
        super().__init__()
        self._config = config
        self._peer_size = _check_peer_size(peer_size)
        self._executor = executor
        self._group = get_group(config.group)
        self._distinct, self._positions = _distinct(_check_items(items))
        self._batches = split(self._distinct, config.batch_size)
        self._scalar = self._group.generate_scalar()
        self._inverse = self._group.invert_scalar(self._scalar)
        self._state = _ClientState.START
        self._sent = 0  # batches sent
        self._received = 0  # evaluated elements received
        self._evaluated_messages = 0
        self._pending: list[bytes] = []  # evaluated blobs not yet unblinded
        self._keys: list[bytes] = []  # unblinded fingerprints, in received order
        self._set_info: dict[str, Any] | None = None
        self._set_parts: list[bytes] = []
        self._set_received = 0
        self._filter: filters.SetFilter | None = None
        self._outcome: PsiOutcome | None = None

    @property
    def _m(self) -> int:
        return len(self._distinct)

    def result(self) -> PsiOutcome:
        self._require_finished()
        assert self._outcome is not None
        return self._outcome

    # -- sending -----------------------------------------------------------------------------
    def _produce(self) -> None:
        if self._state is _ClientState.START:
            self._send(QUERY, pack_json({"count": self._m}))
            self._state = _ClientState.RUNNING
            self._set_phase("blind", self._m)
        if self._state is not _ClientState.RUNNING:
            return
        self._send_batches()
        self._unblind_pending()
        if self._received == self._m and self._filter is not None and not self._pending:
            self._conclude()

    def _send_batches(self) -> None:
        if self._config.reveal is Reveal.CARDINALITY:
            # The server answers only after the last batch: send `window` batches per call.
            limit = min(len(self._batches), self._sent + self._config.window)
        else:  # at most `window` batches unanswered
            limit = min(len(self._batches), self._evaluated_messages + self._config.window)
        if limit <= self._sent:
            return
        work = partial(hash_and_multiply_batch, self._config.group, _dst(self._config.group), self._scalar)
        blinded = self._executor.map(work, self._batches[self._sent : limit])
        for elements in blinded:
            self._send(BLINDED, pack_items(elements, self._group.element_size))
            self._advance(len(elements))
        self._sent = limit

    def _unblind_pending(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        unblinded = self._executor.map(partial(multiply_batch, self._config.group, self._inverse), pending)
        for elements in unblinded:
            self._keys.append(filters.fingerprint(elements))

    def _conclude(self) -> None:
        assert self._filter is not None
        keys = b"".join(self._keys)
        hits = self._filter.contains(keys).tolist()
        reveal = self._config.reveal
        count = sum(hits)
        details = {
            "group": self._config.group,
            "filter": self._filter.kind,
            "filter_bytes": self._set_received,
            "server_set_size": self._filter.count,
            "distinct_items": self._m,
        }
        if reveal is Reveal.CARDINALITY:
            self._outcome = PsiOutcome(None, count, details)
        elif reveal is Reveal.RECEIVER:
            indices = sorted(p for j, hit in enumerate(hits) if hit for p in self._positions[j])
            self._outcome = PsiOutcome(indices, count, details)
        else:
            matched = sorted((keys[j * 16 : (j + 1) * 16], j) for j, hit in enumerate(hits) if hit)
            self._send(MATCHES, pack_items([key for key, _ in matched], filters.KEY_SIZE))
            self._outcome = PsiOutcome([self._positions[j][0] for _, j in matched], count, details)
        self._state = _ClientState.DONE
        self._finish()

    # -- receiving ---------------------------------------------------------------------------
    def _handle(self, message: Message) -> None:
        if self._state is not _ClientState.RUNNING:
            raise self._unexpected(message, self._state.value)
        if message.kind == EVALUATED:
            self._on_evaluated(message.body)
        elif message.kind == SET:
            self._on_set(message.body)
        elif message.kind == SET_CHUNK:
            self._on_set_chunk(message.body)
        else:
            raise self._unexpected(message, self._state.value)

    def _on_evaluated(self, body: bytes) -> None:
        width = self._group.element_size
        if self._config.reveal is Reveal.CARDINALITY:
            blob = unpack_items(body, width, max_count=self._m - self._received)
            if not blob:
                raise MalformedMessage("empty evaluated batch")
        else:
            index = self._evaluated_messages
            if index >= self._sent:
                raise MalformedMessage("evaluated batch for a batch that was not sent")
            blob = unpack_items(body, width, exact_count=len(self._batches[index]))
        self._evaluated_messages += 1
        self._received += len(blob) // width
        self._pending.append(blob)
        if self._phase != "unblind":
            self._set_phase("unblind", self._m)
        self._advance(len(blob) // width)

    def _on_set(self, body: bytes) -> None:
        if self._set_info is not None:
            raise MalformedMessage("server sent its set twice")
        info = unpack_json(body, max_size=4096)
        kind, count, size = info.get("filter"), info.get("count"), info.get("bytes")
        if not isinstance(count, int) or not 0 <= count <= self._peer_size:
            raise MalformedMessage("server set size is out of range")
        if kind != _filter_kind(self._config, count, self._m):
            raise MalformedMessage(f"server used filter {kind!r}, not the agreed one")
        limit = filters.max_encoded_size(kind, count, self._m, self._config.fpr_bits)
        if not isinstance(size, int) or not 0 < size <= limit:
            raise MalformedMessage("server set filter has an impossible size")
        self._set_info = {"filter": kind, "count": count, "bytes": size}
        self._maybe_decode_set()

    def _on_set_chunk(self, body: bytes) -> None:
        if self._set_info is None or self._filter is not None:
            raise MalformedMessage("unexpected set chunk")
        if self._set_received + len(body) > self._set_info["bytes"] or not body:
            raise MalformedMessage("server set is longer than announced")
        self._set_parts.append(body)
        self._set_received += len(body)
        self._maybe_decode_set()

    def _maybe_decode_set(self) -> None:
        assert self._set_info is not None
        if self._set_received != self._set_info["bytes"]:
            return
        data, self._set_parts = b"".join(self._set_parts), []
        decoded = filters.decode_filter(
            data, n_query=self._m, fpr_bits=self._config.fpr_bits, max_count=self._set_info["count"]
        )
        if decoded.count != self._set_info["count"] or decoded.kind != self._set_info["filter"]:
            raise MalformedMessage("server set filter does not match its announcement")
        self._filter = decoded


# -- server -----------------------------------------------------------------------------------
class Server(Party):
    """The party holding the set the client queries; answers blinded queries with its key."""

    def __init__(
        self,
        items: Sequence[bytes],
        config: Config,
        *,
        peer_size: int,
        executor: Executor,
        prepared: PreparedSet | None = None,
    ) -> None:
        super().__init__()
        self._config = config
        self._peer_size = _check_peer_size(peer_size)
        self._executor = executor
        self._group = get_group(config.group)
        items = _check_items(items)
        self._distinct, positions = _distinct(items)
        self._first = [p[0] for p in positions]
        self._prepared = prepared
        if prepared is not None:
            if prepared.group != config.group:
                raise UsageError(f"prepared set is for group {prepared.group!r}, session uses {config.group!r}")
            if prepared.count != len(items) or not hmac.compare_digest(prepared.digest, input_digest(items)):
                raise UsageError("prepared set was made from other input data")
            self._scalar = prepared.key._scalar
        else:
            self._scalar = self._group.generate_scalar()
        self._state = _ServerState.START
        self._own_keys: bytes | None = None
        self._m: int | None = None
        self._received = 0
        self._pending: list[bytes] = []
        self._answered = 0
        self._held: list[bytes] = []  # cardinality mode: all evaluations before the shuffle
        self._set_sent = 0
        self._filter_kind = ""
        self._outcome: PsiOutcome | None = None

    def result(self) -> PsiOutcome:
        self._require_finished()
        assert self._outcome is not None
        return self._outcome

    def _details(self) -> dict[str, Any]:
        details: dict[str, Any] = {
            "group": self._config.group,
            "filter": self._filter_kind,
            "filter_bytes": self._set_sent,
            "persisted_key": self._prepared is not None,
        }
        if self._prepared is not None:
            details["key_fingerprint"] = self._prepared.key.fingerprint
        return details

    # -- sending -----------------------------------------------------------------------------
    def _produce(self) -> None:
        if self._state is _ServerState.START:
            self._encrypt_own_set()
            self._state = _ServerState.SERVING
        if self._state is not _ServerState.SERVING or self._m is None:
            return
        if not self._set_sent:
            self._send_set()
        self._evaluate_pending()
        if self._answered == self._m:
            if self._config.reveal is Reveal.BOTH:
                self._state = _ServerState.AWAIT_MATCHES
            else:
                self._outcome = PsiOutcome(None, None, self._details())
                self._state = _ServerState.DONE
                self._finish()

    def _encrypt_own_set(self) -> None:
        n = len(self._distinct)
        self._set_phase("encrypt-set", n)
        if self._prepared is not None:
            size = self._group.element_size
            blob = self._prepared.elements
            elements = [blob[p * size : (p + 1) * size] for p in self._first]
        else:
            work = partial(hash_and_multiply_batch, self._config.group, _dst(self._config.group), self._scalar)
            elements = [e for part in self._executor.map(work, split(self._distinct, self._config.batch_size)) for e in part]
        self._own_keys = filters.fingerprint(elements)
        self._advance(n)

    def _send_set(self) -> None:
        assert self._own_keys is not None and self._m is not None
        n = len(self._distinct)
        kind = _filter_kind(self._config, n, self._m)
        data = filters.encode_filter(kind, self._own_keys, n_query=self._m, fpr_bits=self._config.fpr_bits)
        self._filter_kind = kind
        self._send(SET, pack_json({"filter": kind, "count": n, "bytes": len(data)}))
        for start in range(0, len(data), CHUNK_BYTES):
            self._send(SET_CHUNK, data[start : start + CHUNK_BYTES])
        self._set_sent = len(data)
        self._set_phase("evaluate", self._m)

    def _evaluate_pending(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        results = self._executor.map(partial(multiply_batch, self._config.group, self._scalar), pending)
        width = self._group.element_size
        for elements in results:
            self._advance(len(elements))
            if self._config.reveal is Reveal.CARDINALITY:
                self._held.extend(elements)
            else:
                self._send(EVALUATED, pack_items(elements, width))
                self._answered += len(elements)
        if self._config.reveal is Reveal.CARDINALITY and len(self._held) == self._m:
            secrets.SystemRandom().shuffle(self._held)  # unlink answers from queries
            for batch in split(self._held, self._config.batch_size):
                self._send(EVALUATED, pack_items(batch, width))
            self._answered, self._held = self._m, []

    # -- receiving ---------------------------------------------------------------------------
    def _handle(self, message: Message) -> None:
        if message.kind == QUERY and self._m is None and self._state is not _ServerState.DONE:
            self._on_query(message.body)
        elif message.kind == BLINDED and self._m is not None and self._state is not _ServerState.DONE:
            self._on_blinded(message.body)
        elif message.kind == MATCHES and self._state is _ServerState.AWAIT_MATCHES:
            self._on_matches(message.body)
        else:
            raise self._unexpected(message, self._state.value)

    def _on_query(self, body: bytes) -> None:
        count = unpack_json(body, max_size=4096).get("count")
        if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= self._peer_size:
            raise MalformedMessage("client query size is out of range")
        self._m = count

    def _on_blinded(self, body: bytes) -> None:
        assert self._m is not None
        width = self._group.element_size
        blob = unpack_items(body, width, max_count=self._m - self._received)
        if not blob:
            raise MalformedMessage("empty blinded batch")
        self._received += len(blob) // width
        self._pending.append(blob)

    def _on_matches(self, body: bytes) -> None:
        assert self._own_keys is not None and self._m is not None
        size = filters.KEY_SIZE
        blob = unpack_items(body, size, max_count=min(self._m, len(self._distinct)))
        own = {self._own_keys[j * size : (j + 1) * size]: j for j in range(len(self._distinct))}
        indices: list[int] = []
        previous = b""
        for start in range(0, len(blob), size):
            key = blob[start : start + size]
            if key <= previous:
                raise MalformedMessage("matches are not in strictly increasing order")
            previous = key
            j = own.get(key)
            if j is None:
                raise MalformedMessage("client reported a match the server does not hold")
            indices.append(self._first[j])
        self._outcome = PsiOutcome(indices, len(indices), self._details())
        self._state = _ServerState.DONE
        self._finish()
