"""A bucketed PSI session: one sub-session of an unchanged protocol per bucket, resumable.

Message flow over one channel (every step is run by the existing driver)::

    scale hello   Hello("psiq-scale", 1): params = protocol, the protocol hello's compared
                  params and --buckets; info = 32-byte nonce, the peer nonce remembered from
                  an interrupted run (or null), a fine-bucket hint, --memory-limit
    (each side streams its input into bucket files keyed by both nonces, then dedups)
    scale.totals  {unique, finished, chain}: unique keys of the whole input, and how many
                  buckets this side has finished with the hash chain over their transcripts
    per bucket b (from the first bucket not finished on both sides):
                  the protocol's hello (set_size = the bucket's padded size, params + bucket
                  number and count), the protocol run, and with --reveal both an inner-join
                  alignment exchange for the bucket's matched keys
    with an outer join: one alignment exchange for the unmatched rows of the whole input

Every bucket is padded with random dummy keys (never equal to a real key: they start with a
0xff byte, which no UTF-8 text or length-prefixed composite key does) to a public size derived
from the announced totals (:func:`psi.scale.buckets.padded_size`), so per-bucket sizes reveal
nothing beyond the totals the unbucketed hello already announces. A peer announcing any other
size for a bucket is refused (exit 4).

Output: the matched rows of all buckets, ordered by a hash of the matched key (the same on
both sides, independent of the bucket split, so a resumed run writes the same bytes as an
uninterrupted one), then -- for left/right/full joins -- the unmatched rows in file order
exactly as in the unbucketed run (docs/ALIGNMENT.md). In receiver mode the client's rows are
in file order, as without buckets.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from .. import __version__
from ..alignment import AlignmentExchange
from ..driver import RunStats, raise_if_error, run_party, send_error
from ..errors import (
    AuthenticationError,
    LocalError,
    MalformedMessage,
    PolicyError,
    PsiqError,
    TransportError,
    UsageError,
)
from ..messages import Message, control_limit, pack_json, unpack_json
from ..parallel import Executor
from ..protocols.base import PsiOutcome, Reveal, Role
from ..protocols.handshake import Hello, check_peer_hello
from ..records import KeyTable, write_rows
from ..session import exchange_hello, peer_set_size, protocol_module, session_body_cap
from ..transport.base import Channel
from .buckets import (
    FINE_MAX,
    DiskFull,
    auto_buckets,
    bucket_key,
    bucket_ranges,
    fine_hint,
    load_bucket,
    padded_size,
    partition_input,
    prepare_fine,
)
from .manifest import Manifest, chain_hash, check_resume, file_digest
from .output import Segment, write_bucketed_output
from .tails import TailExchange, sends_unmatched

__all__ = ["ScaleOptions", "BucketedSession", "TranscriptChannel", "parse_buckets", "parse_size", "WrongPeer"]

SCALE_PROTOCOL = "psiq-scale"
SCALE_VERSION = 1
TOTALS_KIND = "scale.totals"
_CHAIN = re.compile(r"(?:[0-9a-f]{64})?")  # manifest.chain_hash's hexdigest, or "" before any bucket
DUMMY_PREFIX = b"\xff"
DEFAULT_MEMORY_LIMIT = 2 << 30
#: Buckets this side finished that a session may run again after interruptions (see
#: docs/SECURITY.md: a rerun is a second query on that bucket's keys).
MAX_REDONE = 2
#: How long to wait for the peer's totals (it may still be splitting a large input).
PARTITION_WAIT = 4 * 3600.0


@dataclass(frozen=True)
class ScaleOptions:
    """``--work-dir``, ``--buckets N|auto`` (``None`` = auto), ``--memory-limit``,
    ``--resume`` and ``--reconnect-timeout``."""

    work_dir: Path
    buckets: int | None = None
    memory_limit: int = DEFAULT_MEMORY_LIMIT
    resume: bool = False
    reconnect_timeout: float = 600.0
    executor: str = "local"  # or "ray" (psi.scale.ray_executor)
    ray_address: str | None = None

    def __post_init__(self) -> None:
        if self.buckets is not None and not 1 <= self.buckets <= FINE_MAX:
            raise UsageError(f"--buckets must be 1..{FINE_MAX} or auto")
        if self.executor not in ("local", "ray"):
            raise UsageError("--executor is 'local' or 'ray'")
        if self.memory_limit < 64 << 20:
            raise UsageError("--memory-limit must be at least 64MiB")


def parse_buckets(text: str | int | None) -> int | None:
    """``auto`` -> ``None``; a number 1..1024 -> itself."""
    if text is None or str(text).strip().lower() == "auto":
        return None
    try:
        value = int(str(text))
    except ValueError:
        raise UsageError(f"--buckets takes a number or 'auto', not {text!r}") from None
    if not 1 <= value <= FINE_MAX:
        raise UsageError(f"--buckets must be 1..{FINE_MAX} or auto")
    return value


_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 10**6, "mb": 10**6, "mib": 2**20,
          "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12, "tib": 2**40}


def parse_size(text: str) -> int:
    """``2GiB``, ``512MiB``, ``1.5GB``, ``1000000`` -> bytes."""
    s = str(text).strip().lower().replace(" ", "")
    number = s.rstrip("kmgtib")
    unit = s[len(number):]
    try:
        value = float(number)
    except ValueError:
        raise UsageError(f"not a size: {text!r} (e.g. 2GiB, 512MiB)") from None
    if unit not in _UNITS or value <= 0:
        raise UsageError(f"not a size: {text!r} (e.g. 2GiB, 512MiB)")
    return int(value * _UNITS[unit])


class WrongPeer(UsageError):
    """A connection from another peer than the session's (the server keeps listening)."""


class TranscriptChannel(Channel):
    """Passes messages through to ``inner`` and hashes them per direction; :meth:`digest` is
    the same on both sides of a sub-session (client-to-server, then server-to-client)."""

    def __init__(self, inner: Channel, role: Role) -> None:  # no super().__init__: counters are the inner's
        self.inner, self.role = inner, role
        self.peer_name = inner.peer_name
        self._sent = hashlib.sha256(b"psiq/scale/transcript/v1")
        self._received = hashlib.sha256(b"psiq/scale/transcript/v1")

    bytes_sent = property(lambda self: self.inner.bytes_sent)  # type: ignore[assignment]
    bytes_received = property(lambda self: self.inner.bytes_received)  # type: ignore[assignment]

    @staticmethod
    def _absorb(h: Any, message: Message) -> None:
        kind = message.kind.encode()
        h.update(len(kind).to_bytes(2, "big") + kind + len(message.body).to_bytes(8, "big"))
        h.update(message.body)

    def send(self, message: Message) -> None:
        self._absorb(self._sent, message)
        self.inner.send(message)

    def recv(self, timeout: float | None = None, *, limit: Any = None) -> Message:
        message = self.inner.recv(timeout, limit=limit)
        self._absorb(self._received, message)
        return message

    def flush(self) -> None:
        self.inner.flush()

    def close(self) -> None:  # the inner channel outlives the sub-session
        pass

    def digest(self) -> str:
        first, second = (self._sent, self._received) if self.role == Role.CLIENT else (self._received, self._sent)
        return hashlib.sha256(first.digest() + second.digest()).hexdigest()


def _order_tags(keys: Sequence[bytes]) -> np.ndarray:
    """Per matched key, the 64-bit hash that orders matched rows the same way on both sides."""
    blake = hashlib.blake2b
    data = b"".join([blake(k, digest_size=8, person=b"psiq-scale-ord").digest() for k in keys])
    return np.frombuffer(data, dtype=">u8").astype(np.uint64)


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    tmp = path.with_suffix(".tmp")
    try:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if err.errno in (28, 122, 27):  # ENOSPC, EDQUOT, EFBIG
            need = sum(a.nbytes for a in arrays.values())
            raise DiskFull(f"{path}: disk full while writing a bucket checkpoint; about {need / 2**20:,.1f} MiB"
                           f" more are needed ({shutil.disk_usage(path.parent).free / 2**20:,.1f} MiB free)") from None
        raise


class BucketedSession:
    """One party of a bucketed session; :meth:`run` runs (or continues) it over a channel.

    The object survives a dropped connection: the caller reconnects and calls :meth:`run`
    again; both sides then agree on the finished buckets (the manifest) and continue.
    """

    def __init__(self, role: Role | str, input: str | os.PathLike[str], *, on: Sequence[str], options: Any,
                 scale: ScaleOptions, output: str | os.PathLike[str] | None = None,
                 executor: Executor | None = None, on_progress: Callable[[Any], None] | None = None) -> None:
        from ..api import _hello  # the protocol hello's params, as in an unbucketed session

        self.role = Role(role)
        self.input = Path(input)
        self.on = list(on)
        self.options, self.scale = options, scale
        self.output = None if output is None else Path(output)
        self.executor = executor or Executor(options.workers)
        self.on_progress = on_progress
        self.reveal = Reveal(options.reveal)
        learns = self.reveal == Reveal.BOTH or (self.role == Role.CLIENT and self.reveal == Reveal.RECEIVER)
        if self.output is not None and not learns:
            raise UsageError(f"the {self.role.value} learns no intersection with --reveal {self.reveal.value}: drop --output")
        if options.server_key is not None or options.prepared is not None or options.cache_dir is not None:
            raise UsageError("--server-key, --prepared and --cache-dir do not combine with --buckets: they hold the"
                             " server's set precomputed for the whole set under a persisted key, while each bucket"
                             " is a fresh sub-session over a split that changes every session (docs/SCALE.md)")
        self.config = options.protocol_config()
        self.module = protocol_module(options.protocol)
        self._hello_of = _hello
        inner = _hello(self.role, options, self.config, SimpleNamespace(on=self.on, unique_keys=0))
        self.params = {**inner.params, "protocol": options.protocol, "protocol_version": self.module.VERSION,
                       "buckets": "auto" if scale.buckets is None else scale.buckets}
        self.local = {"on": self.on, "format": options.input_format, "skip_empty": options.skip_empty}
        self.work = Path(scale.work_dir)
        self.stats = RunStats()
        self._seconds = 0.0  # wall time of all run() calls so far
        self.connected_once = False
        self.reconnects = 0
        self.redone: list[int] = []
        self.starts: list[int] = []  # first bucket run after each handshake (resume point)
        self.digest = file_digest(self.input)
        self.manifest = self._open_manifest()

    # -- the work dir -----------------------------------------------------------------------
    def _open_manifest(self) -> Manifest | None:
        self.work.mkdir(mode=0o700, parents=True, exist_ok=True)  # bucket files hold plaintext keys
        manifest = Manifest.load(self.work)
        if self.scale.resume:
            if manifest is None or manifest.peer_nonce is None:
                raise UsageError(f"--resume: {self.work} holds no interrupted session to resume")
            check_resume(manifest, role=self.role.value, input_path=self.input, digest=self.digest,
                         params={**self.params, **self.local})
            return manifest
        if manifest is not None:
            raise UsageError(f"{self.work} holds an interrupted session: rerun with --resume, or use an empty --work-dir")
        for sub in ("spill", "prep", "done", "out"):
            shutil.rmtree(self.work / sub, ignore_errors=True)
        return None

    # -- one connection ---------------------------------------------------------------------
    def run(self, channel: Channel) -> Any:
        """Handshake, split (once), agree on finished buckets, run the rest, write the output.

        ``stats.seconds`` is the wall time of all calls (run_party only adds to the phases)."""
        started = time.perf_counter()
        try:
            return self._run(channel)
        finally:  # the session's own time: split, dedup, buckets, output (not the input digest)
            self.stats.seconds = self._seconds + (time.perf_counter() - started)
            self._seconds = self.stats.seconds

    def _run(self, channel: Channel) -> Any:
        m = self.manifest
        if m is not None and m.peer != channel.peer_name:
            raise WrongPeer(f"{self.work} belongs to a session with peer {m.peer!r}; this peer is {channel.peer_name!r}")
        peer = self._scale_hello(channel)
        self.connected_once = True
        m = self.manifest
        assert m is not None
        try:
            if m.partition is None:
                self._partition(m)
        except PsiqError as err:
            send_error(channel, err)  # the peer is waiting for our totals: tell it why they never come
            raise
        own_total = int(m.partition["unique_total"])  # type: ignore[index]
        totals = self._exchange_totals(channel, own_total)
        try:
            start = self._agree(m, totals, own_total)
        except PsiqError as err:
            send_error(channel, err)
            raise
        self.starts.append(start)
        for b in range(start, m.buckets or 0):
            self._run_bucket(channel, m, b)
        return self._finish(channel, m)

    def _scale_hello(self, channel: Channel) -> Hello:
        m = self.manifest
        own_nonce = bytes.fromhex(m.own_nonce) if m is not None else secrets.token_bytes(32)
        hint = fine_hint(self.input.stat().st_size, self.scale.buckets)
        info = {"nonce": own_nonce.hex(), "peer_nonce": m.peer_nonce if m is not None else None,
                "fine_hint": hint, "memory_limit": self.scale.memory_limit, "software": f"psiq {__version__}",
                "set_size": 0}
        own = Hello(SCALE_PROTOCOL, SCALE_VERSION, self.role, self.params, info)
        try:
            channel.send(own.to_message())
            message = channel.recv(self.options.timeout, limit=control_limit)
            raise_if_error(message)
            peer = Hello.from_message(message)
            check_peer_hello(own, peer)
            nonce, peer_hint, limit = peer.info.get("nonce"), peer.info.get("fine_hint"), peer.info.get("memory_limit")
            remembered = peer.info.get("peer_nonce")
            if not (isinstance(nonce, str) and len(nonce) == 64 and all(c in "0123456789abcdef" for c in nonce)):
                raise MalformedMessage("scale hello lacks a valid nonce")
            if type(peer_hint) is not int or not 1 <= peer_hint <= FINE_MAX:
                raise MalformedMessage("scale hello has a bad fine-bucket hint")
            if type(limit) is not int or limit < 64 << 20:
                raise MalformedMessage("scale hello has a bad memory limit")
            if remembered is not None and not isinstance(remembered, str):
                raise MalformedMessage("scale hello has a bad peer nonce")
        except PsiqError as err:
            send_error(channel, err)
            raise
        if m is None:
            if remembered is not None:
                raise UsageError("the peer resumes an interrupted session but this side starts a new one:"
                                 " rerun both with --resume and their work dirs, or neither")
            self.manifest = Manifest(
                role=self.role.value, input_path=str(self.input), input_digest=self.digest,
                params={**self.params, **self.local}, own_nonce=own_nonce.hex(), peer_nonce=nonce,
                peer=channel.peer_name, fine=max(hint, peer_hint),
            )
            self.manifest.save(self.work)
        else:
            if remembered is None:
                raise UsageError("this side resumes an interrupted session but the peer starts a new one:"
                                 " rerun both with --resume and their work dirs, or neither")
            if nonce != m.peer_nonce or remembered != m.own_nonce:
                raise UsageError(f"{self.work} belongs to another session than the peer's work dir"
                                 " (the remembered hello nonces differ)")
        self._memory_limit = min(self.scale.memory_limit, limit)
        return peer

    def _bucket_key(self, m: Manifest) -> bytes:
        client, server = (m.own_nonce, m.peer_nonce) if self.role == Role.CLIENT else (m.peer_nonce, m.own_nonce)
        return bucket_key(bytes.fromhex(client), bytes.fromhex(server or ""))

    def _partition(self, m: Manifest) -> None:
        t0 = time.perf_counter()
        options = self.options
        part = partition_input(self.input, self.on, normalization=options.normalization, dedup=options.dedup,
                               fmt=options.input_format, skip_empty=options.skip_empty, key=self._bucket_key(m),
                               fine=int(m.fine or 1), directory=self.work / "spill")
        t1 = time.perf_counter()
        unit = "row" if part.fmt == "parquet" else "line"
        dedup = prepare_fine(self.work / "spill", self.work / "prep", int(m.fine or 1), dedup=options.dedup,
                             name=self.input.name, unit=unit)
        m.partition = {"fmt": part.fmt, "header": part.header, "columns": part.columns, "rows_read": part.rows_read,
                       "skipped_rows": part.skipped_rows, "unique": dedup["unique"],
                       "unique_total": int(sum(dedup["unique"])), "duplicate_rows": dedup["duplicate_rows"]}
        m.save(self.work)
        self.stats.phases["split"] = self.stats.phases.get("split", 0.0) + (t1 - t0)
        self.stats.phases["dedup"] = self.stats.phases.get("dedup", 0.0) + (time.perf_counter() - t1)

    def _exchange_totals(self, channel: Channel, own_total: int) -> dict[str, Any]:
        m = self.manifest
        assert m is not None
        own = {"unique": own_total, "finished": len(m.finished), "chain": m.chain}
        try:
            channel.send(Message(TOTALS_KIND, pack_json(own)))
            channel.flush()
            message = channel.recv(max(self.options.timeout, PARTITION_WAIT), limit=control_limit)
            raise_if_error(message)
            if message.kind != TOTALS_KIND:
                raise MalformedMessage(f"expected the peer's totals, got {message.kind!r}")
            peer = unpack_json(message.body, max_size=4096)
            if set(peer) != {"unique", "finished", "chain"}:
                raise MalformedMessage("totals message has missing or extra fields")
            unique, finished, chain = peer["unique"], peer["finished"], peer["chain"]
            if type(unique) is not int or unique < 0 or type(finished) is not int or finished < 0:
                raise MalformedMessage("totals message has a bad count")
            if not isinstance(chain, str) or not _CHAIN.fullmatch(chain):  # "" or a SHA-256 hex digest
                raise MalformedMessage("totals message has a bad chain hash")
            cap = self.options.max_peer_size
            if cap is not None and unique > cap:
                raise PolicyError(f"peer announced {unique:,} keys, above the cap of {cap:,} keys;"
                                  " raise it with --max-peer-size N")
            if m.totals is not None and m.totals.get("peer") != unique:
                raise MalformedMessage(f"peer now announces {unique} keys, {m.totals.get('peer')} before the interruption")
            if m.buckets is not None and finished > m.buckets:
                raise MalformedMessage("peer claims more finished buckets than the session has")
        except PsiqError as err:
            send_error(channel, err)
            raise
        return peer

    def _agree(self, m: Manifest, peer: dict[str, Any], own_total: int) -> int:
        if m.buckets is None:
            fine = int(m.fine or 1)
            m.buckets = self.scale.buckets or auto_buckets(self.options.protocol, [own_total, peer["unique"]],
                                                           self._memory_limit, fine)
            m.buckets = min(m.buckets, fine)
            m.totals = {"own": own_total, "peer": peer["unique"]}
            m.save(self.work)
        mine = len(m.finished)
        agreed = min(mine, peer["finished"])
        if peer["finished"] <= mine and not secrets.compare_digest(m.chain_at(agreed), peer["chain"]):
            raise MalformedMessage("the peer's record of the finished buckets differs from this side's"
                                   " (transcript hashes differ): the work dirs are not from the same session")
        if agreed < mine:
            m.redone += mine - agreed
            if m.redone > MAX_REDONE:
                raise PolicyError(f"the peer asks to rerun buckets this side finished ({m.redone} in this session,"
                                  f" at most {MAX_REDONE} allowed): each rerun lets a cheating peer query that bucket"
                                  " again with other keys; start a new session instead")
            self.redone.append(agreed)
            del m.finished[agreed:]
            m.save(self.work)
        return agreed

    # -- one bucket -------------------------------------------------------------------------
    def _table(self, m: Manifest, keys: list[bytes], rows: np.ndarray, row_keys: np.ndarray) -> KeyTable:
        p = m.partition or {}
        return KeyTable(path=self.input, fmt=p["fmt"], header=p["header"], on=self.on, columns=p["columns"],
                        normalization=self.options.normalization, dedup=self.options.dedup, keys=keys,
                        row_numbers=rows, row_keys=row_keys, rows_read=p["rows_read"], duplicate_rows=0,
                        skipped_rows=0)

    def _run_bucket(self, channel: Channel, m: Manifest, b: int) -> None:
        fine, n = int(m.fine or 1), int(m.buckets or 1)
        f0, f1 = bucket_ranges(fine, n)[b]
        keys, rows, row_keys = load_bucket(self.work / "prep", f0, f1)
        real = len(keys)
        totals = m.totals or {}
        pad_own = padded_size(int(totals["own"]), fine, f0, f1, n)
        pad_peer = padded_size(int(totals["peer"]), fine, f0, f1, n)
        tch = TranscriptChannel(channel, self.role)
        if real > pad_own:
            err = LocalError(f"bucket {b} holds {real} keys, more than its padded size {pad_own}"
                             " (a 2^-40 event for a random split): rerun the session")
            send_error(tch, err)
            raise err
        keys.extend(DUMMY_PREFIX + secrets.token_bytes(16) for _ in range(pad_own - real))
        base = self._hello_of(self.role, self.options, self.config, SimpleNamespace(on=self.on, unique_keys=pad_own))
        hello = Hello(base.protocol, base.version, base.role, {**base.params, "bucket": b, "buckets": n}, base.info)
        peer = exchange_hello(tch, hello, max_peer_size=None, timeout=self.options.timeout)
        if peer_set_size(peer) != pad_peer:
            err = MalformedMessage(f"peer announced {peer_set_size(peer)} keys for bucket {b}; its announced total"
                                   f" of {totals['peer']} pads every bucket to {pad_peer}")
            send_error(tch, err)
            raise err
        cls = self.module.Client if self.role == Role.CLIENT else self.module.Server
        party = cls(keys, self.config, peer_size=pad_peer, executor=self.executor)
        party.session_body_cap = session_body_cap(pad_own, pad_peer)
        run_party(party, tch, stats=self.stats, on_progress=self.on_progress, timeout=self.options.timeout)
        outcome: PsiOutcome = party.result()
        arrays: dict[str, np.ndarray] = {}
        count = outcome.cardinality
        if outcome.indices is not None:
            idx = np.asarray(outcome.indices, dtype=np.int64)
            if len(idx) and int(idx.max()) >= real:
                raise MalformedMessage(f"a padding key matched in bucket {b}: the peer's messages are not from an honest run")
            count = len(idx)
            mask = np.zeros(real, dtype=bool)
            mask[idx] = True
            table = self._table(m, keys[:real], rows, row_keys)
            if self.reveal == Reveal.BOTH:
                exchange = AlignmentExchange(self.role, PsiOutcome(idx.tolist(), None), table, "inner", self.options.left)
                run_party(exchange, tch, stats=self.stats, on_progress=self.on_progress, timeout=self.options.timeout)
                matched = exchange.result().rows
                tag_of = np.zeros(real, dtype=np.uint64)
                tag_of[idx] = _order_tags([keys[i] for i in idx.tolist()])
                arrays["rows"] = matched
                arrays["tags"] = tag_of[row_keys[np.searchsorted(rows, matched)]]
                arrays["unmatched"] = rows[~mask[row_keys]]
            else:
                arrays["rows"] = rows[mask[row_keys]]
        transcript = tch.digest()
        (self.work / "done").mkdir(mode=0o700, exist_ok=True)
        _save_npz(self.work / "done" / f"b{b:04d}.npz", count=np.array([-1 if count is None else count]), **arrays)
        m.finished.append({"bucket": b, "transcript": transcript, "chain": chain_hash(m.chain, b, transcript)})
        m.save(self.work)

    # -- the end ----------------------------------------------------------------------------
    def _part(self, b: int) -> Any:
        """Bucket ``b``'s checkpoint (arrays load when indexed)."""
        return np.load(self.work / "done" / f"b{b:04d}.npz")

    def _write(self, fmt: str | None, rows_read: int, parts: Iterator[dict[str, Any]],
               segments: list[Segment] | None) -> int:
        """Write the output: streamed from the checkpoints for CSV/TSV (:mod:`psi.scale.output`);
        Parquet keeps :func:`psi.records.write_rows` with the whole order in memory."""
        assert self.output is not None
        if fmt != "parquet":
            return write_bucketed_output(self.input, self.output, fmt=str(fmt), tmp=self.work / "out",
                                         rows_read=rows_read, buckets=parts, segments=segments)
        matched, tags, direct = [], [], []
        for q in parts:
            if q.get("matched") is not None:
                matched.append(q["matched"])
                tags.append(q["tags"])
            if q.get("direct") is not None:
                direct.append(q["direct"])
        own = np.sort(np.concatenate(direct)) if direct else np.zeros(0, np.int64)
        if segments is None:
            order = own
        else:
            m = np.concatenate(matched) if matched else np.zeros(0, np.int64)
            t = np.concatenate(tags) if tags else np.zeros(0, np.uint64)
            pieces = [m[np.argsort(t, kind="stable")]]
            pieces += [own if s.kind == "own" else np.full(s.count, -1, dtype=np.int64) for s in segments]
            order = np.concatenate(pieces)
        return write_rows(self.input, order, self.output, fmt=fmt, expect_rows=rows_read)

    def _finish(self, channel: Channel, m: Manifest) -> Any:
        from ..api import PsiSummary, _peak_rss_mb

        n = int(m.buckets or 0)
        counts = [int(self._part(b)["count"][0]) for b in range(n)]
        p = m.partition or {}
        summary = PsiSummary(
            role=self.role.value, protocol=self.options.protocol, reveal=self.reveal.value,
            input={"file": str(self.input), "format": p.get("fmt"), "on": self.on, "dedup": self.options.dedup,
                   "normalize": self.options.normalization.describe(), "rows_read": p.get("rows_read"),
                   "unique_keys": p.get("unique_total"), "duplicate_rows": p.get("duplicate_rows"),
                   "skipped_rows": p.get("skipped_rows")},
            peer_size=int((m.totals or {}).get("peer", 0)),
            intersection_size=None if (counts and counts[0] < 0) else int(sum(counts)),
            stats=self.stats, peer_name=channel.peer_name,
        )
        fmt = p.get("fmt")
        rows_read = int(p.get("rows_read") or 0)
        writes = self.output is not None
        t0 = time.perf_counter()
        if self.reveal == Reveal.BOTH:
            is_left = self.role == Role(self.options.left)
            own_tail = self.options.join != "inner" and sends_unmatched(is_left, self.options.join)
            matched_total = sum(len(self._part(b)["rows"]) for b in range(n))
            unmatched_total = sum(len(self._part(b)["unmatched"]) for b in range(n))
            segments: list[Segment] = []
            own_rows = empty = 0
            if self.options.join != "inner":
                tail = TailExchange(self.role, unmatched_total, self.options.join, self.options.left,
                                    matched_rows=matched_total)
                run_party(tail, channel, stats=self.stats, on_progress=self.on_progress, timeout=self.options.timeout)
                segments = tail.segments()
                own_rows, empty = tail.counts()
            summary.alignment = {"join": self.options.join, "left": self.options.left,
                                 "output_rows": int(matched_total + own_rows + empty),
                                 "matched_rows": int(matched_total), "own_unmatched_rows": int(own_rows),
                                 "empty_rows": int(empty)}
            channel.flush()
            if writes:
                parts = ({"matched": q["rows"], "tags": q["tags"], "direct": q["unmatched"] if own_tail else None}
                         for q in map(self._part, range(n)))
                summary.output_rows = self._write(fmt, rows_read, parts, segments)
        elif self.role == Role.CLIENT and self.reveal == Reveal.RECEIVER:
            channel.flush()
            if writes:
                summary.output_rows = self._write(fmt, rows_read, ({"direct": q["rows"]} for q in map(self._part, range(n))),
                                                  None)
        else:
            channel.flush()
        if summary.output_rows is not None:
            summary.output = str(self.output)
            self.stats.phases["write-output"] = time.perf_counter() - t0
        summary.scale = {"buckets": n, "fine_buckets": m.fine, "work_dir": str(self.work),
                         "padded_sizes": {"own": max((padded_size(int((m.totals or {})["own"]), int(m.fine or 1), a, z, n)
                                                      for a, z in bucket_ranges(int(m.fine or 1), n)), default=0)},
                         "reconnects": self.reconnects, "started_at_bucket": self.starts,
                         "dropped_own_checkpoint": self.redone}
        report = getattr(self.executor, "report", None)
        summary.scale["executor"] = report() if report else {"kind": "local", "workers": self.executor.workers}
        summary.peak_rss_mb = _peak_rss_mb()
        for sub in ("spill", "prep", "done", "out"):
            shutil.rmtree(self.work / sub, ignore_errors=True)
        (self.work / "manifest.json").unlink(missing_ok=True)
        return summary


def may_retry(err: BaseException) -> bool:
    """A dropped or stalled connection (not a refused identity) is worth reconnecting for."""
    return isinstance(err, TransportError) and not isinstance(err, AuthenticationError)
