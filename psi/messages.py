"""Wire frames and the generic message codecs every protocol uses.

A frame on the wire is::

    magic "PSQ1" | wire version u8 | kind length u8 | flags u16 | session id 8 bytes
    | body length u32 | kind (ASCII, 1..64 bytes) | body

All integers big-endian. ``kind`` names the message (``"hello"``, ``"rsa.blinded"``...);
a protocol module owns the encoding of its own bodies and must validate them with the helpers
below (fixed-width item arrays with count checks, JSON control messages with a size and a
nesting-depth cap).

Memory a peer can make us allocate: a frame whose header announces more than ``max_body`` (the
hard backstop) or more than the receiving party allows for that message kind in its current
state (a :data:`BodyLimit` the driver passes to ``Channel.recv``) is refused from its header and
kind alone, before any of its body is read. Below the caps, transports read bodies in bounded
chunks, growing the buffer only as bytes actually arrive, so a header that announces a large
body and then stalls costs no more memory than the bytes really sent.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np

from .errors import MalformedMessage, UnsupportedVersion

__all__ = [
    "WIRE_VERSION",
    "MAGIC",
    "HEADER",
    "DEFAULT_MAX_BODY",
    "Message",
    "encode_frame",
    "decode_header",
    "decode_frame",
    "pack_items",
    "unpack_items",
    "pack_json",
    "unpack_json",
    "pack_u32_list",
    "unpack_u32_list",
    "BodyLimit",
    "check_body_limit",
    "MAX_JSON_DEPTH",
    "CONTROL_BODY_MAX",
    "CONTROL_KINDS",
    "control_limit",
    "items_body_size",
    "decode_kind",
    "json_depth",
]

MAGIC = b"PSQ1"
WIRE_VERSION = 1
HEADER = struct.Struct(">4sBBH8sI")
DEFAULT_MAX_BODY = 256 * 1024 * 1024
MAX_KIND = 64
NO_SESSION = bytes(8)
#: Deepest JSON nesting a control message may have (psiq's own messages use at most 3).
MAX_JSON_DEPTH = 16
#: Cap on a control message (``hello``, ``error``) and on any first message of a session.
CONTROL_BODY_MAX = 64 * 1024

#: Kinds that are always small JSON control messages.
CONTROL_KINDS = frozenset({"hello", "error"})


def control_limit(kind: str) -> int:
    """The :data:`BodyLimit` while waiting for a control message (the session's hello): every
    kind at most :data:`CONTROL_BODY_MAX` bytes."""
    return CONTROL_BODY_MAX


#: Given a message kind, the largest body the receiving party accepts for it right now
#: (``None``: only the channel's hard cap applies).
BodyLimit = Callable[[str], Optional[int]]


def check_body_limit(kind: str, body_len: int, limit: "BodyLimit | None") -> None:
    """Raise :class:`MalformedMessage` naming ``kind`` if ``body_len`` exceeds ``limit(kind)``."""
    if limit is None:
        return
    cap = limit(kind)
    if cap is not None and body_len > cap:
        raise MalformedMessage(
            f"peer announced a {kind!r} message of {body_len} bytes, more than the {cap} this step of the protocol allows"
        )


@dataclass(frozen=True, slots=True)
class Message:
    """One protocol message: a short ASCII ``kind`` and an opaque ``body``."""

    kind: str
    body: bytes = field(default=b"", repr=False)

    def __post_init__(self) -> None:
        if not self.kind or len(self.kind) > MAX_KIND or not self.kind.isascii():
            raise ValueError(f"bad message kind {self.kind!r}")

    def __len__(self) -> int:
        return len(self.body)


def encode_frame(message: Message, session_id: bytes = NO_SESSION) -> bytes:
    """Return the complete frame for ``message``; the inverse of :func:`decode_frame`."""
    kind = message.kind.encode("ascii")
    if len(session_id) != 8:
        raise ValueError("session id must be 8 bytes")
    header = HEADER.pack(MAGIC, WIRE_VERSION, len(kind), 0, session_id, len(message.body))
    return header + kind + bytes(message.body)


def decode_header(header: bytes, max_body: int = DEFAULT_MAX_BODY) -> tuple[int, bytes, int]:
    """Validate a frame header; return (kind length, session id, body length).

    Raises :class:`MalformedMessage` for a bad magic, kind length or oversized body, and
    :class:`UnsupportedVersion` for another wire version.
    """
    if len(header) != HEADER.size:
        raise MalformedMessage("truncated frame header")
    magic, version, kind_len, _flags, session_id, body_len = HEADER.unpack(header)
    if magic != MAGIC:
        raise MalformedMessage("peer is not speaking the psiq protocol (bad frame magic)")
    if version != WIRE_VERSION:
        raise UnsupportedVersion(f"peer uses wire version {version}, this build speaks {WIRE_VERSION}")
    if not 1 <= kind_len <= MAX_KIND:
        raise MalformedMessage(f"bad message kind length {kind_len}")
    if body_len > max_body:
        raise MalformedMessage(f"frame of {body_len} bytes exceeds the cap of {max_body}")
    return kind_len, session_id, body_len


def decode_kind(kind_bytes: bytes) -> str:
    """The message kind as text; :class:`MalformedMessage` unless printable ASCII."""
    try:
        kind = bytes(kind_bytes).decode("ascii")
    except UnicodeDecodeError:
        raise MalformedMessage("message kind is not ASCII") from None
    if not kind.isprintable():
        raise MalformedMessage("message kind holds control characters")
    return kind


def decode_frame(frame: bytes, max_body: int = DEFAULT_MAX_BODY, limit: "BodyLimit | None" = None) -> tuple[Message, bytes]:
    """Parse one complete frame (exactly); return the message and its session id.

    ``limit`` is the receiving party's per-kind cap (see :data:`BodyLimit`).
    """
    kind_len, session_id, body_len = decode_header(frame[: HEADER.size], max_body)
    if len(frame) < HEADER.size + kind_len:
        raise MalformedMessage("frame length does not match its header")
    kind = decode_kind(frame[HEADER.size : HEADER.size + kind_len])
    check_body_limit(kind, body_len, limit)
    if len(frame) != HEADER.size + kind_len + body_len:
        raise MalformedMessage("frame length does not match its header")
    return Message(kind, bytes(frame[HEADER.size + kind_len :])), session_id


_COUNT = struct.Struct(">I")


def items_body_size(count: int, width: int) -> int:
    """Body length of a :func:`pack_items` message of ``count`` items of ``width`` bytes (for a
    party's :meth:`~psi.protocols.base.Party.receive_limit`)."""
    return 6 + count * width


def pack_items(items: Sequence[bytes] | bytes, width: int) -> bytes:
    """Pack equal-width items as ``count u32 | width u16 | items``.

    ``items`` may be a sequence of ``width``-byte strings or one bytes-like buffer holding them
    back to back (the fast path for numpy arrays).
    """
    if isinstance(items, (bytes, bytearray, memoryview)):
        blob = bytes(items)
        if width <= 0 or len(blob) % width:
            raise ValueError("buffer length is not a multiple of the item width")
        count = len(blob) // width
    else:
        count = len(items)
        blob = b"".join(items)
        if len(blob) != count * width:
            raise ValueError("items are not all of the declared width")
    return _COUNT.pack(count) + struct.pack(">H", width) + blob


def unpack_items(
    body: bytes,
    width: int,
    *,
    max_count: int | None = None,
    exact_count: int | None = None,
) -> bytes:
    """Validate a :func:`pack_items` body and return the raw item bytes (count*width long).

    Checks the declared width equals ``width``, the count against ``max_count`` /
    ``exact_count``, and that the body length is exact. Slice item ``i`` as
    ``blob[i*width:(i+1)*width]`` or view it with numpy.
    """
    if len(body) < 6:
        raise MalformedMessage("item array truncated")
    (count,) = _COUNT.unpack_from(body, 0)
    (declared,) = struct.unpack_from(">H", body, 4)
    if declared != width:
        raise MalformedMessage(f"item width {declared}, expected {width}")
    if exact_count is not None and count != exact_count:
        raise MalformedMessage(f"{count} items, expected exactly {exact_count}")
    if max_count is not None and count > max_count:
        raise MalformedMessage(f"{count} items, more than the {max_count} allowed")
    if len(body) != 6 + count * width:
        raise MalformedMessage("item array length does not match its count")
    return body[6:]


def pack_u32_list(values: Sequence[int]) -> bytes:
    """Pack non-negative integers below 2^32 as ``count u32 | values u32...``."""
    return _COUNT.pack(len(values)) + struct.pack(f">{len(values)}I", *values)


def unpack_u32_list(body: bytes, *, max_count: int, below: int | None = None) -> list[int]:
    """Inverse of :func:`pack_u32_list`, checking count and (optionally) each value < ``below``."""
    if len(body) < 4:
        raise MalformedMessage("integer list truncated")
    (count,) = _COUNT.unpack_from(body, 0)
    if count > max_count or len(body) != 4 + 4 * count:
        raise MalformedMessage("integer list length does not match its count")
    values = list(struct.unpack_from(f">{count}I", body, 4))
    if below is not None and any(v >= below for v in values):
        raise MalformedMessage("integer list holds an out-of-range value")
    return values


def pack_json(obj: Any) -> bytes:
    """Canonical JSON (sorted keys, no spaces) for control messages."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode("utf-8")


_OPEN = np.zeros(256, dtype=np.int8)
_OPEN[[ord("["), ord("{")]] = 1
_OPEN[[ord("]"), ord("}")]] = -1
_BACKSLASH, _QUOTE = ord("\\"), ord('"')


def json_depth(body: bytes) -> int:
    """Deepest bracket nesting of a JSON text, not counting brackets inside strings.

    Linear in ``len(body)`` and vectorised (no recursion), so it can run on untrusted input
    before the recursive decoder does.
    """
    data = np.frombuffer(body, dtype=np.uint8)
    if data.size == 0:
        return 0
    quotes = data == _QUOTE
    if quotes.any():
        # A quote is escaped when an odd run of backslashes precedes it.
        slash = data == _BACKSLASH
        run = np.zeros(data.size, dtype=np.int64)
        idx = np.flatnonzero(slash)
        if idx.size:
            # length of the backslash run ending just before each position
            starts = np.ones(idx.size, dtype=bool)
            starts[1:] = idx[1:] != idx[:-1] + 1
            group_start = np.maximum.accumulate(np.where(starts, idx, 0))
            run[idx] = idx - group_start + 1
        before = np.zeros(data.size, dtype=np.int64)
        before[1:] = run[:-1]
        real = quotes & (before % 2 == 0)
        inside = (np.cumsum(real) - real) % 2 == 1  # after an odd number of real quotes
    else:
        inside = np.zeros(data.size, dtype=bool)
    steps = np.where(inside, 0, _OPEN[data]).astype(np.int64)
    return int(np.cumsum(steps).max(initial=0))


def unpack_json(body: bytes, *, max_size: int = 1 << 20, max_depth: int = MAX_JSON_DEPTH) -> dict[str, Any]:
    """Parse a JSON control message: an object of at most ``max_size`` bytes nested at most
    ``max_depth`` deep (checked before decoding, so a deeply nested message is a
    :class:`MalformedMessage`, never a ``RecursionError``)."""
    if len(body) > max_size:
        raise MalformedMessage("control message too large")
    body = bytes(body)
    if json_depth(body) > max_depth:
        raise MalformedMessage(f"control message is nested more than {max_depth} deep")
    try:
        obj = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise MalformedMessage("control message is not valid JSON") from None
    if not isinstance(obj, dict):
        raise MalformedMessage("control message is not a JSON object")
    return obj
