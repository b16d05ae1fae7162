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
  learns nothing (no count either). **Semi-honest client only** (:data:`CARDINALITY_NOTE`): a
  client that blinds each item with its own scalar ``a_i`` unblinds every returned element
  with every ``a_i^-1`` (``m^2`` trials) and learns which items matched, as in ``receiver``
  mode; nothing in the messages lets the server detect it (tests/test_ecdh_cheats.py).

Sizes leak on both sides (distinct counts). Duplicates are removed before anything is sent, so
multiplicities do not leak; in ``receiver`` mode every position of a matched item is reported.

Against a cheating server the client checks every filter against what the announced count can
produce (:mod:`psi.crypto.filters`) and refuses more matches than that count plus the false
matches the filter allows, before it sends anything back (:meth:`Client._check_match_count`).

Security: semi-honest parties; privacy rests on DDH / one-more-DH in the random-oracle model
(``H`` is a hash-to-group with the domain tag ``psiq-ecdh-v2-<group>``). Fresh secret keys per
session, except a server that loads a persisted key with a :class:`PreparedSet` (unbalanced
mode): then the same ``H(y)^b`` go to every client, so clients can link sessions and see set
changes, and each evaluation a client obtains is one more one-more-DH query; the outcome says
so (``details["persisted_key"]``). Every received element is validated (length, canonical,
group membership, not identity/low order) in the worker before it is multiplied; counts are
checked against the announced sizes. A false positive of the filter (expected number at most
``2^-fpr_bits`` per session) would report one extra match.

Group choice (measured, see :mod:`psi.crypto.groups`): per multiplication x25519 ≈ 32 µs,
ristretto255 ≈ 43 µs, p256 ≈ 72 µs (p256 hash-to-curve a further 88 µs, pure Python); x25519
is the default. Server set at 10^5 x 10^5, 2^-40: gcs 7.26 bytes/element (auto's choice), raw
10.0, bloom 10.3.

Scheduling (both parties share the cores in a loopback run, so the aim is that neither ever
leaves a core idle): every batch is cut into one piece per worker and queued at once. The
server queues its own set first (with a :class:`HeadStart`, before the client even connects)
and each received batch behind it; the client blinds up to ``2 window`` batches ahead and
queues each evaluated batch for unblinding as soon as it arrives. ``outgoing()`` blocks only
on work whose result can be sent now, or when no message from the peer is due. Workers return
joined bytes (and the 16-byte filter keys, not the elements, where only keys are needed).

Client states: ``START -> RUNNING -> DONE``. Server states: ``START -> SERVING [->
AWAIT_MATCHES (both)] -> DONE``. Any exception moves a party to the failed state.
"""

from __future__ import annotations

import enum
import hmac
import secrets
import struct
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from functools import partial
from typing import Any, Sequence

import numpy as np

from ..crypto import filters
from ..crypto.suite import GM, STANDARD, Suite, get_suite, hello_params as suite_params
from ..crypto.groups import (
    DEFAULT_GROUP,
    GROUP_NAMES,
    get_group,
    hash_and_multiply_batch,
    multiply_batch,
)
from ..errors import InputError, MalformedMessage, UsageError
from ..messages import Message, pack_items, pack_json, unpack_items, unpack_json
from ..parallel import Executor, split, wait_first
from .base import PsiOutcome, PsiParty, Reveal

__all__ = [
    "NAME",
    "VERSION",
    "Config",
    "Client",
    "Server",
    "ServerKey",
    "PreparedSet",
    "HeadStart",
    "prepare_server_set",
    "input_digest",
    "CARDINALITY_NOTE",
]

NAME = "ecdh"
VERSION = 3  # 2: x25519 hash-to-group v2 (one SHA-512 per try, two candidates); 3: Golomb-coded set v2
HASH_VERSION = 2  # in the hash-to-group tag and in prepared-set files (their contents do not depend on the filters)

QUERY = "ecdh.query"
BLINDED = "ecdh.blinded"
EVALUATED = "ecdh.evaluated"
SET = "ecdh.set"
SET_CHUNK = "ecdh.set-chunk"
MATCHES = "ecdh.matches"
CHUNK_BYTES = 8 * 1024 * 1024
CARDINALITY_NOTE = (
    "--reveal cardinality hides the matches only from a client that follows the protocol: a client that"
    " deviates learns which keys matched, as with --reveal receiver (see docs/SECURITY.md)"
)
COMPRESSIONS = ("auto",) + filters.FILTER_KINDS


def _dst(group: str) -> bytes:
    return f"psiq-ecdh-v{HASH_VERSION}-{group}".encode("ascii")


@dataclass(frozen=True)
class Config:
    """ECDH-PSI settings; everything in :meth:`hello_params` must match the peer's."""

    reveal: Reveal = Reveal.RECEIVER
    group: str = DEFAULT_GROUP
    compression: str = "auto"
    fpr_bits: int = 40
    batch_size: int = 8192
    window: int = 4
    suite: str = "standard"  # psi.crypto.suite: "gm" forces group sm2 and SM3 filter keys

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
        get_suite(self.suite).psi_group(self.group, DEFAULT_GROUP)  # gm: sm2 only

    @property
    def crypto(self) -> Suite:
        return get_suite(self.suite)

    def hello_params(self) -> dict[str, Any]:
        return {
            "reveal": self.reveal.value,
            "group": self.group,
            "compression": self.compression,
            "fpr_bits": self.fpr_bits,
            **suite_params(self.suite),
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
        """Hex id of the key (domain-separated hash, SM3 for sm2 keys; reveals nothing about the scalar)."""
        tag = b"psiq-ecdh-key-fingerprint\x00" + self.group.encode() + b"\x00"
        return file_suite(self.group).digest(tag + self._scalar).hexdigest()[:32]

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


def file_suite(group: str) -> Suite:
    """The suite of a key or prepared-set file's own hashes: SM3 for sm2 (the gm suite's group), else SHA-256."""
    return GM if group == "sm2" else STANDARD


def input_digest(items: Sequence[bytes], suite: Suite = STANDARD) -> bytes:
    """SHA-256 (SM3 under gm) over the items in order (length-prefixed): ties a prepared set to its input."""
    h = suite.digest(b"psiq-ecdh-input-digest\x00" + struct.pack(">Q", len(items)))
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
                "version": HASH_VERSION,
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
            ok = header["protocol"] == NAME and header["version"] == HASH_VERSION
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
    return PreparedSet(key, len(items), input_digest(items, file_suite(group)), elements)


# -- worker entry points (top level: they pickle by name) --------------------------------------
def _blind_worker(group: str, dst: bytes, scalar: bytes, items: Sequence[bytes]) -> bytes:
    """``scalar * H(item)`` for each item, back to back."""
    return b"".join(hash_and_multiply_batch(group, dst, scalar, items))


def _own_keys_worker(group: str, dst: bytes, scalar: bytes, items: Sequence[bytes], suite: Suite = STANDARD) -> bytes:
    """Filter keys (fingerprints) of ``scalar * H(item)``, back to back."""
    return filters.fingerprint(hash_and_multiply_batch(group, dst, scalar, items), suite)


def _evaluate_worker(group: str, scalar: bytes, blob: bytes) -> bytes:
    """Validate each received element and return ``scalar * element``, back to back."""
    return b"".join(multiply_batch(group, scalar, blob))


def _unblind_worker(group: str, inverse: bytes, blob: bytes, suite: Suite = STANDARD) -> bytes:
    """Validate, unblind and fingerprint each received element (16-byte keys back to back)."""
    return filters.fingerprint(multiply_batch(group, inverse, blob), suite)


def _blob_pieces(blob: bytes, width: int, parts: int) -> list[bytes]:
    """Cut a buffer of ``width``-byte elements into at most ``parts`` whole-element pieces."""
    count = len(blob) // width
    parts = max(1, min(parts, count))
    bounds = [count * i // parts * width for i in range(parts + 1)]
    return [blob[bounds[i] : bounds[i + 1]] for i in range(parts)]


def _key_rows(keys: bytes) -> np.ndarray:
    """16-byte keys as rows of two big-endian uint64 (lexicographic order = byte order)."""
    return np.frombuffer(keys, dtype=">u8").reshape(-1, 2)


def _gather(futures: "list[Future[bytes]]") -> bytes:
    return b"".join(f.result() for f in futures)


# -- helpers ----------------------------------------------------------------------------------
def _item_types(items: Sequence[bytes]) -> set[type]:
    """The items' types; raises :class:`InputError` unless every item is bytes or bytearray."""
    types = set(map(type, items))  # one C-level pass in the usual case
    if not types <= {bytes, bytearray}:
        for item in items:
            if not isinstance(item, (bytes, bytearray)):
                raise InputError("PSI items must be bytes")
    return types


def _check_items(items: Sequence[bytes]) -> Sequence[bytes]:
    _item_types(items)
    return items


class _Singletons(Sequence[list[int]]):
    """Positions of ``n`` items that are all distinct: item ``j`` occurs at ``j`` only."""

    def __init__(self, n: int) -> None:
        self._n = n

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, j: int) -> list[int]:  # type: ignore[override]
        if not -self._n <= j < self._n:
            raise IndexError(j)
        return [j % self._n]


def _distinct(items: Sequence[bytes]) -> tuple[list[bytes], Sequence[list[int]]]:
    """Distinct items in first-seen order, and every position of each (items are checked)."""
    if _item_types(items) <= {bytes} and len(set(items)) == len(items):
        return list(items), _Singletons(len(items))  # already distinct (the usual case)
    where: dict[bytes, list[int]] = {}
    for position, item in enumerate(items):
        where.setdefault(bytes(item), []).append(position)
    return list(where), list(where.values())


def _first_positions(positions: Sequence[list[int]]) -> list[int]:
    if isinstance(positions, _Singletons):
        return list(range(len(positions)))
    return [p[0] for p in positions]


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
class Client(PsiParty):
    """The party that starts the session and (in receiver/both mode) learns the intersection."""

    def __init__(self, items: Sequence[bytes], config: Config, *, peer_size: int, executor: Executor) -> None:
        super().__init__()
        self._config = config
        self._peer_size = _check_peer_size(peer_size)
        self._executor = executor
        self._group = get_group(config.group)
        self._distinct, self._positions = _distinct(items)
        self._batches = split(self._distinct, config.batch_size)
        self._scalar = self._group.generate_scalar()
        self._inverse = self._group.invert_scalar(self._scalar)
        self._state = _ClientState.START
        self._sent = 0  # batches sent
        self._sent_items = 0
        self._received = 0  # evaluated elements received
        self._evaluated_messages = 0
        # Work in the executor, oldest first: blinded batches not yet sent (batch self._sent
        # onwards) and evaluated batches being unblinded; each entry is one batch's pieces.
        self._blinding: deque[list[Future[bytes]]] = deque()
        self._unblinding: deque[list[Future[bytes]]] = deque()
        self._keys: list[bytes] = []  # unblinded fingerprints, in received order
        self._set_info: dict[str, Any] | None = None
        self._set_parts: list[bytes] = []
        self._set_received = 0
        self._filter: filters.SetFilter | None = None

    @property
    def _m(self) -> int:
        return len(self._distinct)

    # -- sending -----------------------------------------------------------------------------
    # The executor works ahead: up to 2 x window batches are being blinded (in about one piece
    # per worker each) while earlier ones are on the wire, and every evaluated batch is handed
    # to the workers for unblinding as soon as it arrives. outgoing() blocks only on work whose
    # result can be sent now, or when no message from the server is due.
    def _produce(self) -> None:
        if self._state is _ClientState.START:
            self._send(QUERY, pack_json({"count": self._m}))
            self._state = _ClientState.RUNNING
            self._set_phase("blind", self._m)
        while self._state is _ClientState.RUNNING:
            self._submit_blinds()
            self._collect_unblinded()
            room = self._send_room()
            while room > 0 and self._blinding and all(f.done() for f in self._blinding[0]):
                self._send_blinded()
                room -= 1
            if self._outbox:
                self._submit_blinds()
                return
            if room > 0 and self._blinding:
                wait_first(f for f in self._blinding[0] if not f.done())
                continue
            if self._filter is None or self._received < self._sent_items:
                return  # the driver waits for the server
            if self._unblinding:
                wait_first(f for f in self._unblinding[0] if not f.done())
                continue
            if self._received == self._m and self._sent == len(self._batches):
                self._conclude()
            return

    def _send_room(self) -> int:
        """How many more batches may go out now (flow control)."""
        if self._config.reveal is Reveal.CARDINALITY:  # the server answers only after the last batch
            return len(self._batches) - self._sent
        return min(len(self._batches), self._evaluated_messages + self._config.window) - self._sent

    def _submit_blinds(self) -> None:
        ahead = 2 * self._config.window
        base = self._sent if self._config.reveal is Reveal.CARDINALITY else self._evaluated_messages
        limit = min(len(self._batches), base + ahead)
        first = self._sent + len(self._blinding)
        if first >= limit:
            return
        work = partial(_blind_worker, self._config.group, _dst(self._config.group), self._scalar)
        for index in range(first, limit):
            self._blinding.append(self._executor.scatter(work, self._batches[index]))

    def _send_blinded(self) -> None:
        blob = _gather(self._blinding.popleft())
        count = len(self._batches[self._sent])
        self._send(BLINDED, pack_items(blob, self._group.element_size))
        self._sent += 1
        self._sent_items += count
        if self._phase == "blind":
            self._advance(count)

    def _collect_unblinded(self) -> None:
        while self._unblinding and all(f.done() for f in self._unblinding[0]):
            keys = _gather(self._unblinding.popleft())
            self._keys.append(keys)
            if self._phase == "unblind":
                self._advance(len(keys) // filters.KEY_SIZE)

    def _conclude(self) -> None:
        assert self._filter is not None
        keys = b"".join(self._keys)
        hits = np.flatnonzero(self._filter.contains(keys))
        reveal = self._config.reveal
        count = int(hits.size)
        self._check_match_count(count)
        details = {
            "group": self._config.group,
            "filter": self._filter.kind,
            "filter_bytes": self._set_received,
            "server_set_size": self._filter.count,
            "distinct_items": self._m,
        }
        if reveal is Reveal.CARDINALITY:
            details["notes"] = [CARDINALITY_NOTE]
            self._outcome = PsiOutcome(None, count, details)
        elif reveal is Reveal.RECEIVER:
            positions = self._positions
            indices = sorted(p for j in hits.tolist() for p in positions[j])
            self._outcome = PsiOutcome(indices, count, details)
        else:
            rows = _key_rows(keys)[hits]
            order = np.lexsort((rows[:, 1], rows[:, 0]))  # = byte order of the 16-byte keys
            self._send(MATCHES, pack_items(rows[order].tobytes(), filters.KEY_SIZE))
            positions = self._positions
            self._outcome = PsiOutcome([positions[j][0] for j in hits[order].tolist()], count, details)
        self._state = _ClientState.DONE
        self._finish()

    def _check_match_count(self, count: int) -> None:
        """Refuse more matches than the server's set can give: at most its ``count`` distinct
        keys plus the false matches the received filter allows (0 at the default 2^-40). Runs
        before anything is sent back, so in ``both`` mode a filter built to match keys the
        server does not hold returns nothing."""
        assert self._filter is not None
        expected = self._filter.match_rate * self._m
        allowed = self._filter.count + filters.max_false_matches(expected, self._m)
        if count > allowed:
            raise MalformedMessage(
                f"server's filter matched {count} of {self._m} keys but its {self._filter.count} keys allow"
                f" at most {allowed} (false-match rate {self._filter.match_rate:.1e} per key): refused"
            )

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
        work = partial(_unblind_worker, self._config.group, self._inverse, suite=self._config.crypto)
        pieces = _blob_pieces(blob, width, self._executor.workers)
        self._unblinding.append([self._executor.submit(work, piece) for piece in pieces])
        if self._phase != "unblind":
            self._set_phase("unblind", self._m)

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
def _submit_own_set(
    executor: Executor, config: Config, scalar: bytes, distinct: Sequence[bytes]
) -> "list[Future[bytes]]":
    work = partial(_own_keys_worker, config.group, _dst(config.group), scalar, suite=config.crypto)
    piece = max(1, config.batch_size // executor.workers)
    return [executor.submit(work, part) for part in split(distinct, piece)]


class HeadStart:
    """A server's own set already being encrypted, under a fresh key, before a client connects.

    A listening server builds one while it waits (``HeadStart(items, config, executor)``) and
    hands it to the next :class:`Server` (``head_start=``), which uses it only if the items and
    the group are the same; each head start serves at most one session (fresh key per session).
    Call :meth:`cancel` after the session either way, so that a failed or missing session does
    not leave queued work in a shared executor.
    """

    def __init__(self, items: Sequence[bytes], config: Config, executor: Executor) -> None:
        self._items = items
        self._group = config.group
        self._suite = config.suite
        self._batch_size = config.batch_size
        self.distinct, positions = _distinct(items)
        self.first = _first_positions(positions)
        self._scalar: bytes | None = get_group(config.group).generate_scalar()
        self._futures = _submit_own_set(executor, config, self._scalar, self.distinct)

    def matches(self, items: Sequence[bytes], config: Config) -> bool:
        return (
            self._scalar is not None
            and items is self._items
            and config.group == self._group
            and config.suite == self._suite
            and config.batch_size == self._batch_size
        )

    def take(self) -> tuple[bytes, "list[Future[bytes]]"]:
        """The session key and the pending fingerprints; the head start is used up."""
        assert self._scalar is not None
        scalar, self._scalar = self._scalar, None
        return scalar, list(self._futures)

    def cancel(self) -> None:
        """Cancel whatever of the work has not started (an unused head start, or a session that
        failed before the own set was done); a no-op once the work is finished."""
        for fut in self._futures:
            fut.cancel()
        self._scalar, self._futures = None, []


class Server(PsiParty):
    """The party holding the set the client queries; answers blinded queries with its key."""

    def __init__(
        self,
        items: Sequence[bytes],
        config: Config,
        *,
        peer_size: int,
        executor: Executor,
        prepared: PreparedSet | None = None,
        head_start: "HeadStart | None" = None,
    ) -> None:
        super().__init__()
        self._config = config
        self._peer_size = _check_peer_size(peer_size)
        self._executor = executor
        self._group = get_group(config.group)
        self._own_futures: list[Future[bytes]] = []  # fingerprints of the own set, in pieces
        if head_start is not None and prepared is None and head_start.matches(items, config):
            self._distinct, self._first = head_start.distinct, head_start.first
            self._scalar, self._own_futures = head_start.take()
            self._head_start = True
        else:
            self._distinct, positions = _distinct(items)
            self._first = _first_positions(positions)
            self._head_start = False
        self._prepared = prepared
        if prepared is not None:
            if prepared.group != config.group:
                raise UsageError(f"prepared set is for group {prepared.group!r}, session uses {config.group!r}")
            if prepared.count != len(items) or not hmac.compare_digest(prepared.digest, input_digest(items, file_suite(prepared.group))):
                raise UsageError("prepared set was made from other input data")
            self._scalar = prepared.key._scalar
        elif not self._head_start:
            self._scalar = self._group.generate_scalar()
        self._state = _ServerState.START
        self._own_keys: bytes | None = None
        self._m: int | None = None
        self._received = 0
        self._evaluating: deque[list[Future[bytes]]] = deque()  # received batches, oldest first
        self._answered = 0
        self._held: list[bytes] = []  # cardinality mode: all evaluations (blobs) before the shuffle
        self._set_sent = 0
        self._filter_kind = ""

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
    # The own set goes to the executor at the start (before the client's first batch arrives)
    # and every received batch is queued behind it at once; outgoing() blocks only on work whose
    # result is due to the client, or on the own set once the client has sent everything.
    def _produce(self) -> None:
        if self._state is _ServerState.START:
            self._encrypt_own_set()
            self._state = _ServerState.SERVING
        while self._state is _ServerState.SERVING:
            self._collect_own_set()
            if self._m is None:
                return
            if not self._set_sent and self._own_keys is not None:
                self._send_set()
            self._collect_evaluations()
            if self._answered == self._m and self._own_keys is not None:
                if self._config.reveal is Reveal.BOTH:
                    self._state = _ServerState.AWAIT_MATCHES
                else:
                    details = self._details()
                    if self._config.reveal is Reveal.CARDINALITY:
                        details["notes"] = [CARDINALITY_NOTE]
                    self._outcome = PsiOutcome(None, None, details)
                    self._state = _ServerState.DONE
                    self._finish()
                return
            if self._outbox:
                return
            if self._evaluating:
                wait_first(f for f in self._evaluating[0] if not f.done())
            elif self._own_keys is None and self._received == self._m:
                wait_first(f for f in self._own_futures if not f.done())
            else:
                return  # the driver waits for the client

    def _encrypt_own_set(self) -> None:
        n = len(self._distinct)
        self._set_phase("encrypt-set", n)
        if self._prepared is not None:
            size = self._group.element_size
            blob = self._prepared.elements
            self._own_keys = filters.fingerprint([blob[p * size : (p + 1) * size] for p in self._first], self._config.crypto)
            self._advance(n)
            return
        if not self._head_start:
            self._own_futures = _submit_own_set(self._executor, self._config, self._scalar, self._distinct)
        if not self._own_futures:
            self._own_keys = b""

    def _collect_own_set(self) -> None:
        if self._own_keys is None and all(f.done() for f in self._own_futures):
            self._own_keys = _gather(self._own_futures)
            self._own_futures = []
            self._advance(len(self._distinct))

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
        self._advance(self._answered + sum(len(h) for h in self._held) // self._group.element_size)

    def _collect_evaluations(self) -> None:
        width = self._group.element_size
        cardinality = self._config.reveal is Reveal.CARDINALITY
        while self._evaluating and all(f.done() for f in self._evaluating[0]):
            blob = _gather(self._evaluating.popleft())
            count = len(blob) // width
            if self._set_sent:
                self._advance(count)
            if cardinality:
                self._held.append(blob)
            else:
                self._send(EVALUATED, pack_items(blob, width))
                self._answered += count
        if cardinality and self._answered < self._m and self._received == self._m and not self._evaluating:
            blob = b"".join(self._held)
            held = [blob[i : i + width] for i in range(0, len(blob), width)]
            secrets.SystemRandom().shuffle(held)  # unlink answers from queries
            for batch in split(held, self._config.batch_size):
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
        work = partial(_evaluate_worker, self._config.group, self._scalar)
        pieces = _blob_pieces(blob, width, self._executor.workers)
        self._evaluating.append([self._executor.submit(work, piece) for piece in pieces])

    def _on_matches(self, body: bytes) -> None:
        assert self._own_keys is not None and self._m is not None
        size = filters.KEY_SIZE
        blob = unpack_items(body, size, max_count=min(self._m, len(self._distinct)))
        got = _key_rows(blob)
        hi, lo = got[:, 0], got[:, 1]
        if not ((hi[1:] > hi[:-1]) | ((hi[1:] == hi[:-1]) & (lo[1:] > lo[:-1]))).all():
            raise MalformedMessage("matches are not in strictly increasing order")
        own = _key_rows(self._own_keys)
        order = np.lexsort((own[:, 1], own[:, 0]))
        own_hi, own_lo = own[order, 0], own[order, 1]
        at = np.minimum(np.searchsorted(own_hi, hi), max(len(order) - 1, 0))
        if len(order) and (own_hi[1:] == own_hi[:-1]).any():  # equal first halves (~2^-64 per pair)
            where = {own_hi[i].tobytes() + own_lo[i].tobytes(): i for i in range(len(order))}
            at = np.array([where.get(hi[i].tobytes() + lo[i].tobytes(), 0) for i in range(len(hi))], dtype=np.int64)
        if len(hi) and (not len(order) or not ((own_hi[at] == hi) & (own_lo[at] == lo)).all()):
            raise MalformedMessage("client reported a match the server does not hold")
        first = self._first
        indices = [first[j] for j in order[at].tolist()] if len(hi) else []
        self._outcome = PsiOutcome(indices, len(indices), self._details())
        self._state = _ServerState.DONE
        self._finish()
