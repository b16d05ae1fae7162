"""The blacklist table: sealed records, bucket layout, SimplePIR matrix, hint, files on disk.

Setup, for every listed (id, label):

    F      = OPRF(k, id)                                  fresh key k for every setup
    digest = SHA-512("psiq/pir/v1/record" || salt || F)    salt: fresh, public, per version
    position = digest[0:8] (u64), tag = digest[8:16], label key = digest[16:48]
    record = tag || ChaCha20-Poly1305(label key, nonce 0, u16 len || label || zero pad, aad)

Each label key seals exactly one record, so the fixed nonce is never reused under one key.
Records are sorted by position and cut into equal buckets of ``capacity`` records (load 100%,
the last one padded with random filler); the first position of every bucket is published
(``boundaries``) so the client finds its bucket by binary search. One bucket = one column of the
SimplePIR matrix: bucket bytes -> bits -> ``log_p``-bit digits down the column.

Public per version (the hint file): shape, seed, salt, record width, boundaries, the hint
H = Dc.A, the SHA-256 of the matrix, and the version = SHA-256 over all of these. Private: the
OPRF key (``oprf.key``, mode 0600) and the matrix itself.

Under the ``gm`` suite (``suite`` in the public parameters, so a table is one suite for good):
the OPRF is SM2/SM3 (:mod:`pir.oprf_sm2`); ``digest = SM3(domain || salt || F)`` gives the
position (8 bytes), tag (8) and a 16-byte label key; records are sealed with SM4-GCM (same
16-byte overhead); the matrix hash and the version are SM3 and A is expanded with SM4-CTR.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import secrets
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
from cryptography.exceptions import InvalidTag

from psi.crypto.suite import STANDARD, Suite, checked_name, get_suite
from psi.errors import InputError, InvalidToken, MalformedMessage, UsageError
from psi.parallel import Executor, split

from . import lwe, oprf, oprf_sm2

__all__ = [
    "FORMAT",
    "TAG_SIZE",
    "Shape",
    "choose_shape",
    "PublicParams",
    "Hint",
    "Table",
    "SetupReport",
    "build_table",
    "derive",
    "open_bucket",
]

FORMAT = "psiq-pir-table-v1"
TAG_SIZE = 8
AEAD_OVERHEAD = 16
LENGTH_SIZE = 2
_DOMAIN = b"psiq/pir/v1/record"
_AAD = b"psiq/pir/v1/label"
_NONCE = bytes(12)
_HINT_MAGIC = b"PSQH1"
MAX_ROWS = 1 << 16
DEFAULT_MAX_QUERY_BYTES = 64 * 1024
DEFAULT_MAX_HINT_BYTES = 16 * 1024 * 1024


def record_size(label_width: int) -> int:
    return TAG_SIZE + LENGTH_SIZE + label_width + AEAD_OVERHEAD


def oprf_for(suite: "Suite | str") -> Any:
    """The OPRF module of a suite: :mod:`pir.oprf` (ristretto255/SHA-512) or :mod:`pir.oprf_sm2`."""
    return oprf_sm2 if get_suite(suite).is_gm else oprf


def derive(salt: bytes, output: bytes, suite: Suite = STANDARD) -> tuple[int, bytes, bytes]:
    """(position, tag, label key) from an OPRF output, bound to the table's salt.

    standard: SHA-512, a 32-byte ChaCha20-Poly1305 key; gm: SM3, a 16-byte SM4 key."""
    if suite.is_gm:
        digest = suite.digest(_DOMAIN + salt + output).digest()
        return int.from_bytes(digest[:8], "big"), digest[8:16], digest[16:32]
    digest = hashlib.sha512(_DOMAIN + salt + output).digest()
    return int.from_bytes(digest[:8], "big"), digest[8:16], digest[16:48]


def _seal_batch(job: tuple) -> tuple[bytes, bytes]:
    """Worker: OPRF-evaluate and seal a batch; returns (positions u64 LE, records)."""
    key, salt, width, ids, labels, *rest = job
    suite = get_suite(rest[0] if rest else None)
    evaluate = oprf_for(suite).evaluate
    positions = np.empty(len(ids), dtype="<u8")
    records = bytearray()
    for i, (ident, label) in enumerate(zip(ids, labels)):
        position, tag, label_key = derive(salt, evaluate(key, ident), suite)
        positions[i] = position
        plain = len(label).to_bytes(LENGTH_SIZE, "big") + label + bytes(width - len(label))
        records += tag + suite.seal(label_key, _NONCE, plain, _AAD + salt + tag)
    return positions.tobytes(), bytes(records)


@dataclass(frozen=True)
class Shape:
    """Bucket capacity (records per column) and the matrix shape it gives."""

    capacity: int
    columns: int
    rows: int
    log_p: int

    def one_query_bytes(self) -> int:
        return self.hint_bytes() + 4 * self.columns + 4 * self.rows

    def hint_bytes(self) -> int:
        return 4 * self.rows * lwe.LWE_DIMENSION + 8 * self.columns


def _shape(count: int, capacity: int, rsize: int) -> Shape | None:
    columns = max(1, -(-count // capacity))
    if columns > 1 << 21:
        return None
    log_p = lwe.plaintext_bits(columns)
    return Shape(capacity, columns, -(-capacity * rsize * 8 // log_p), log_p)


def choose_shape(
    count: int,
    label_width: int,
    *,
    max_query_bytes: int = DEFAULT_MAX_QUERY_BYTES,
    max_hint_bytes: int = DEFAULT_MAX_HINT_BYTES,
) -> Shape:
    """The bucket capacity minimising one-query bytes (hint + boundaries + query + answer).

    Subject to the query vector (4 bytes per column) fitting ``max_query_bytes`` and the hint
    ``max_hint_bytes``. Small lists end with one record per column; large ones with the widest
    matrix the query cap allows.
    """
    count = max(1, count)
    rsize = record_size(label_width)
    best: Shape | None = None
    for capacity in range(1, count + 1):
        shape = _shape(count, capacity, rsize)
        if shape is None:
            continue
        if shape.hint_bytes() > max_hint_bytes or shape.rows > MAX_ROWS:
            break
        if 4 * shape.columns > max_query_bytes:
            continue
        if best is None or shape.one_query_bytes() < best.one_query_bytes():
            best = shape
        if shape.columns == 1:
            break
    if best is None:
        raise UsageError(
            f"{count} entries do not fit a {max_hint_bytes}-byte hint with queries of at most "
            f"{max_query_bytes} bytes; raise one of the caps"
        )
    return best


@dataclass(frozen=True)
class PublicParams:
    """Everything public about one table version (sent with the hint, cached by clients)."""

    rows: int
    columns: int
    log_p: int
    seed: bytes
    salt: bytes
    capacity: int
    label_width: int
    entries: int
    matrix_sha256: bytes
    n: int = lwe.LWE_DIMENSION
    suite: str = "standard"  # psi.crypto.suite; absent from the JSON when standard (unchanged files)

    @property
    def crypto(self) -> Suite:
        return get_suite(self.suite)

    @property
    def lwe(self) -> lwe.LweParams:
        return lwe.LweParams(self.rows, self.columns, self.log_p, self.seed, self.n, self.suite)

    @property
    def record_size(self) -> int:
        return record_size(self.label_width)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "rows": self.rows,
            "columns": self.columns,
            "log_p": self.log_p,
            "n": self.n,
            "seed": self.seed.hex(),
            "salt": self.salt.hex(),
            "capacity": self.capacity,
            "label_width": self.label_width,
            "entries": self.entries,
            "matrix_sha256": self.matrix_sha256.hex(),
            **({"suite": self.suite} if self.suite != "standard" else {}),
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "PublicParams":
        try:
            if obj["format"] != FORMAT:
                raise MalformedMessage(f"table format {obj['format']!r}, this build reads {FORMAT}")
            params = cls(
                rows=int(obj["rows"]),
                columns=int(obj["columns"]),
                log_p=int(obj["log_p"]),
                seed=bytes.fromhex(obj["seed"]),
                salt=bytes.fromhex(obj["salt"]),
                capacity=int(obj["capacity"]),
                label_width=int(obj["label_width"]),
                entries=int(obj["entries"]),
                matrix_sha256=bytes.fromhex(obj["matrix_sha256"]),
                n=int(obj["n"]),
                suite=checked_name(obj.get("suite")),
            )
        except (KeyError, TypeError, ValueError):
            raise MalformedMessage("table parameters lack a field or hold a bad value") from None
        params.check()
        return params

    def check(self) -> None:
        """Range checks on values that come from a peer or a file."""
        if (
            self.n != lwe.LWE_DIMENSION
            or not 1 <= self.columns <= 1 << 21
            or not 1 <= self.rows <= MAX_ROWS
            or self.log_p != lwe.plaintext_bits(self.columns)
            or len(self.seed) != 16
            or len(self.salt) != 32
            or len(self.matrix_sha256) != 32
            or not 0 <= self.label_width <= 65535
            or not 1 <= self.capacity <= 1 << 20
            or not 0 <= self.entries <= self.capacity * self.columns
            or self.rows != -(-self.capacity * self.record_size * 8 // self.log_p)
        ):
            raise MalformedMessage("table parameters are inconsistent")


def _version(params: PublicParams, hint: np.ndarray, boundaries: np.ndarray) -> str:
    digest = params.crypto.digest  # SHA-256, or SM3 under gm
    h = digest(b"psiq/pir/v1/version")
    h.update(json.dumps(params.to_json(), sort_keys=True, separators=(",", ":")).encode())
    h.update(digest(hint.astype("<u4").tobytes()).digest())
    h.update(digest(boundaries.astype("<u8").tobytes()).digest())
    return h.hexdigest()


@dataclass
class Hint:
    """The client's once-per-version download: parameters, hint matrix, bucket boundaries."""

    params: PublicParams
    hint: np.ndarray
    boundaries: np.ndarray
    version: str = ""
    _a_matrix: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.version:
            self.version = _version(self.params, self.hint, self.boundaries)

    def a_matrix(self) -> np.ndarray:
        """The public matrix A, expanded once per Hint object and kept (columns x n x 4 bytes)."""
        if self._a_matrix is None:
            self._a_matrix = lwe.expand_a(self.params.seed, self.params.columns, self.params.n, suite=self.params.suite)
        return self._a_matrix

    def bucket_of(self, position: int) -> int:
        return int(np.searchsorted(self.boundaries, np.uint64(position), side="right")) - 1

    def to_bytes(self) -> bytes:
        head = json.dumps(self.params.to_json(), sort_keys=True, separators=(",", ":")).encode()
        return b"".join(
            (
                _HINT_MAGIC,
                struct.pack(">I", len(head)),
                head,
                self.hint.astype("<u4").tobytes(),
                self.boundaries.astype("<u8").tobytes(),
            )
        )

    @classmethod
    def from_bytes(
        cls, blob: bytes, expected_version: str | None = None, *, expected_shape: tuple[int, int] | None = None
    ) -> "Hint":
        """Parse and check a hint; with ``expected_version`` it must hash to that version.

        With ``expected_shape`` (rows, columns, as announced and already checked against the
        client's limits) a hint of any other shape is refused before its arrays are read.
        """
        if len(blob) < 9 or blob[:5] != _HINT_MAGIC:
            raise MalformedMessage("not a psiq PIR hint")
        (head_len,) = struct.unpack_from(">I", blob, 5)
        if head_len > 64 * 1024 or 9 + head_len > len(blob):
            raise MalformedMessage("hint header has a bad length")
        try:
            head = json.loads(blob[9 : 9 + head_len].decode())
        except (UnicodeDecodeError, ValueError):
            raise MalformedMessage("hint header is not JSON") from None
        if not isinstance(head, dict):
            raise MalformedMessage("hint header is not an object")
        params = PublicParams.from_json(head)
        if expected_shape is not None and (params.rows, params.columns) != tuple(expected_shape):
            raise MalformedMessage("hint shape differs from the one the server announced")
        hint_len, bound_len = 4 * params.rows * params.n, 8 * params.columns
        start = 9 + head_len
        if len(blob) != start + hint_len + bound_len:
            raise MalformedMessage("hint length does not match its parameters")
        hint = np.frombuffer(blob, dtype="<u4", count=params.rows * params.n, offset=start).reshape(params.rows, params.n)
        boundaries = np.frombuffer(blob, dtype="<u8", count=params.columns, offset=start + hint_len)
        if boundaries[0] != 0 or np.any(np.diff(boundaries.astype(np.uint64)) == 0) or np.any(boundaries[1:] < boundaries[:-1]):
            raise MalformedMessage("hint boundaries are not strictly increasing from 0")
        made = cls(params, hint.astype(np.uint32), boundaries.astype(np.uint64))
        if expected_version is not None and not hmac.compare_digest(made.version, expected_version):
            raise MalformedMessage("hint does not match the announced table version")
        return made


def open_bucket(params: PublicParams, digits: np.ndarray, output: bytes) -> bytes | None:
    """Find the record for OPRF output ``output`` in one recovered column.

    Returns the label, or None when no record carries the tag ("not listed"). A record whose tag
    matches but fails authentication raises :class:`InvalidToken` (callers report "not listed").
    """
    _position, tag, label_key = derive(params.salt, output, params.crypto)
    raw = _digits_to_bytes(digits, params.log_p, params.capacity * params.record_size)
    size = params.record_size
    found = None
    for i in range(params.capacity):
        if hmac.compare_digest(raw[i * size : i * size + TAG_SIZE], tag):
            found = raw[i * size : (i + 1) * size]
    if found is None:
        return None
    try:
        plain = params.crypto.open(label_key, _NONCE, found[TAG_SIZE:], _AAD + params.salt + tag)
    except InvalidTag:
        raise InvalidToken("record does not open") from None
    length = int.from_bytes(plain[:LENGTH_SIZE], "big")
    if length > params.label_width:
        raise InvalidToken("record does not open")
    return plain[LENGTH_SIZE : LENGTH_SIZE + length]


def _digits_to_bytes(digits: np.ndarray, log_p: int, nbytes: int) -> bytes:
    bits = ((digits.astype(np.uint32)[:, None] >> np.arange(log_p, dtype=np.uint32)) & 1).astype(np.uint8)
    return np.packbits(bits.reshape(-1), bitorder="little")[:nbytes].tobytes()


def _bytes_to_digits(buckets: np.ndarray, log_p: int, rows: int) -> np.ndarray:
    """(k x bucket bytes) uint8 -> (k x rows) digits, little-endian bit order."""
    bits = np.unpackbits(buckets, axis=1, bitorder="little")
    pad = rows * log_p - bits.shape[1]
    bits = np.pad(bits, ((0, 0), (0, pad)))
    weights = (1 << np.arange(log_p, dtype=np.uint32)).astype(np.uint32)
    return bits.reshape(buckets.shape[0], rows, log_p).astype(np.uint32) @ weights


@dataclass
class SetupReport:
    """What setup did: sizes, shape, timings (seconds)."""

    entries: int
    duplicates: int
    version: str
    shape: Shape
    label_width: int
    seconds: dict[str, float]
    hint_bytes: int
    failure_log2: float
    skipped: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "entries": self.entries,
            "duplicates": self.duplicates,
            "skipped": self.skipped,
            "version": self.version,
            "rows": self.shape.rows,
            "columns": self.shape.columns,
            "capacity": self.shape.capacity,
            "log_p": self.shape.log_p,
            "label_width": self.label_width,
            "hint_bytes": self.hint_bytes,
            "query_bytes": 4 * self.shape.columns,
            "answer_bytes": 4 * self.shape.rows,
            "failure_log2_per_query": round(self.failure_log2, 1),
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
        }


class Table:
    """The server's side of one version: private key, matrix (uint32), and the public hint."""

    def __init__(self, key: bytes, digits: np.ndarray, hint: Hint, settings: dict[str, Any] | None = None) -> None:
        self._key = key
        self.settings = dict(settings or {})
        self.digits = digits
        self.hint = hint
        self._hint_blob: bytes | None = None

    @property
    def version(self) -> str:
        return self.hint.version

    @property
    def params(self) -> PublicParams:
        return self.hint.params

    def hint_blob(self) -> bytes:
        if self._hint_blob is None:
            self._hint_blob = self.hint.to_bytes()
        return self._hint_blob

    def evaluate_blinded(self, elements: list[bytes]) -> list[bytes]:
        blind_evaluate = oprf_for(self.params.suite).blind_evaluate
        return [blind_evaluate(self._key, e) for e in elements]

    def answer(self, queries: np.ndarray) -> np.ndarray:
        if queries.shape[0] < 16:
            return np.stack([lwe.answer(self.digits, q) for q in queries])
        return lwe.answer_batch(self.digits, queries)

    # -- files -------------------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        key_path = directory / "oprf.key"
        tmp = directory / "oprf.key.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(self._key)
        os.replace(tmp, key_path)
        np.save(directory / "matrix.npy", self.digits.astype(np.uint16))
        (directory / "hint.bin").write_bytes(self.hint_blob())
        meta = {"format": FORMAT, "version": self.version, "params": self.params.to_json(), "settings": self.settings}
        (directory / "params.tmp").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        os.replace(directory / "params.tmp", directory / "params.json")  # written last: marks completion

    @classmethod
    def load(cls, directory: Path) -> "Table":
        try:
            meta = json.loads((directory / "params.json").read_text())
            key = (directory / "oprf.key").read_bytes()
            hint = Hint.from_bytes((directory / "hint.bin").read_bytes(), meta["version"])
            digits = np.load(directory / "matrix.npy", allow_pickle=False).astype(np.uint32)
        except FileNotFoundError as err:
            raise InputError(f"{directory} is not a PIR table directory (missing {Path(err.filename).name})") from None
        except (ValueError, KeyError, MalformedMessage) as err:
            raise InputError(f"{directory}: damaged PIR table ({err})") from None
        if len(key) != oprf_for(hint.params.suite).SCALAR_SIZE or digits.shape != (hint.params.rows, hint.params.columns):
            raise InputError(f"{directory}: damaged PIR table (key or matrix size)")
        if hint.params.crypto.digest(digits.astype("<u4").tobytes()).digest() != hint.params.matrix_sha256:
            raise InputError(f"{directory}: matrix does not match its parameters")
        settings = meta.get("settings", {})
        if not isinstance(settings, dict):
            raise InputError(f"{directory}: damaged PIR table (settings)")
        return cls(key, digits, hint, settings)


def build_table(
    entries: Iterable[tuple[bytes, bytes]],
    *,
    label_width: int | None = None,
    max_query_bytes: int = DEFAULT_MAX_QUERY_BYTES,
    max_hint_bytes: int = DEFAULT_MAX_HINT_BYTES,
    executor: Executor | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
    key: bytes | None = None,
    settings: dict[str, Any] | None = None,
    suite: str = "standard",
) -> tuple[Table, SetupReport]:
    """Build a fresh table version from (id, label) byte pairs (first label kept on duplicates).

    ``suite`` (:mod:`psi.crypto.suite`) fixes every primitive of the table for good."""
    crypto = get_suite(suite)
    import time

    clock: dict[str, float] = {}
    start = time.perf_counter()
    seen: dict[bytes, bytes] = {}
    duplicates = 0
    for ident, label in entries:
        if ident in seen:
            duplicates += 1
            continue
        seen[ident] = label
    ids, labels = list(seen), list(seen.values())
    longest = max((len(x) for x in labels), default=0)
    width = longest if label_width is None else label_width
    if longest > width:
        raise InputError(f"a label is {longest} bytes long, more than the label width {width}")
    if width > 4096:
        raise InputError(f"label width {width} is too large (at most 4096 bytes)")
    shape = choose_shape(len(ids), width, max_query_bytes=max_query_bytes, max_hint_bytes=max_hint_bytes)
    key = key if key is not None else oprf_for(crypto).generate_key()
    rsize = record_size(width)
    own_executor = executor is None
    executor = executor or Executor()
    try:
        for _attempt in range(4):
            salt = secrets.token_bytes(32)
            positions, records = np.empty(0, dtype=np.uint64), bytearray()
            batches = [(key, salt, width, list(i), list(l), crypto.name) for i, l in zip(split(ids, 4096), split(labels, 4096))]
            done = 0
            for pos_blob, rec_blob in executor.imap(_seal_batch, batches):
                positions = np.concatenate((positions, np.frombuffer(pos_blob, dtype="<u8")))
                records += rec_blob
                done += len(pos_blob) // 8
                if on_progress:
                    on_progress("oprf", done, len(ids))
            order = np.argsort(positions, kind="stable")
            sorted_positions = positions[order]
            if not np.any(np.diff(sorted_positions) == 0):
                break
        else:  # pragma: no cover - four 64-bit collisions in a row
            raise UsageError("could not lay out the table (position collisions)")
    finally:
        if own_executor:
            executor.close()
    clock["oprf_and_seal"] = time.perf_counter() - start

    t = time.perf_counter()
    slots = shape.capacity * shape.columns
    table_bytes = np.frombuffer(bytes(records), dtype=np.uint8).reshape(len(ids), rsize)[order]
    filler = np.frombuffer(secrets.token_bytes((slots - len(ids)) * rsize), dtype=np.uint8).reshape(-1, rsize)
    buckets = np.concatenate((table_bytes, filler)).reshape(shape.columns, shape.capacity * rsize)
    boundaries = np.zeros(shape.columns, dtype=np.uint64)
    if len(ids) > shape.capacity:
        boundaries[1 : -(-len(ids) // shape.capacity)] = sorted_positions[shape.capacity :: shape.capacity]
    # Filler-only buckets (at most one: columns = ceil(N / capacity)) would need a boundary above
    # every position; with columns = ceil(N / capacity) every bucket but the last is full.
    digits = np.empty((shape.rows, shape.columns), dtype=np.uint32)
    for i in range(0, shape.columns, 2048):
        digits[:, i : i + 2048] = _bytes_to_digits(buckets[i : i + 2048], shape.log_p, shape.rows).T
    clock["layout"] = time.perf_counter() - t

    t = time.perf_counter()
    seed = secrets.token_bytes(16)
    params = PublicParams(
        rows=shape.rows,
        columns=shape.columns,
        log_p=shape.log_p,
        seed=seed,
        salt=salt,
        capacity=shape.capacity,
        label_width=width,
        entries=len(ids),
        matrix_sha256=crypto.digest(digits.astype("<u4").tobytes()).digest(),
        suite=crypto.name,
    )
    hint_matrix = lwe.compute_hint(digits, params.lwe)
    hint = Hint(params, hint_matrix, boundaries)
    clock["hint"] = time.perf_counter() - t
    clock["total"] = time.perf_counter() - start
    table = Table(key, digits, hint, settings)
    failure = lwe.failure_bound(shape.columns, shape.log_p) + math.log2(shape.rows)
    report = SetupReport(len(ids), duplicates, hint.version, shape, width, clock, len(table.hint_blob()), failure)
    return table, report
