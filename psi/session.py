"""One session over a channel: the hello exchange, then a protocol party run to completion.

This is the only place that knows every PSI protocol module by name. Each protocol module
(``psi.protocols.rsa``, ``.ecdh``, ``.kkrt``, ``.rr22``) exposes ``NAME``, ``VERSION``, a frozen ``Config``
with ``reveal`` and ``hello_params()``, and ``Client``/``Server`` party classes.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from .driver import raise_if_error, send_error
from .errors import IncompatiblePeer, MalformedMessage, PolicyError, PsiqError, UsageError
from .protocols.base import Role
from .protocols.handshake import Hello, check_peer_hello
from .messages import control_limit
from .transport.base import Channel

__all__ = ["PROTOCOLS", "DEFAULT_MAX_PEER_SIZE", "protocol_module", "exchange_hello"]

PROTOCOLS = ("rsa", "ecdh", "kkrt", "rr22")
#: Default cap on the set size a peer may announce. Measured peak memory per side, with both
#: sets of size n, is at most about 0.6 KB times n (README: ECDH 10^6 x 10^6 493 MB, KKRT
#: 2^20 x 2^20 574 MB), so 3 * 10^7 keys on each side stay near 17 GB: within a 24 GiB machine.
DEFAULT_MAX_PEER_SIZE = 30_000_000


def protocol_module(name: str) -> ModuleType:
    """The module implementing PSI protocol ``name``; :class:`UsageError` for unknown names."""
    if name not in PROTOCOLS:
        raise UsageError(f"unknown protocol {name!r} (choose from {', '.join(PROTOCOLS)})")
    return importlib.import_module(f"psi.protocols.{name}")


def exchange_hello(
    channel: Channel,
    own: Hello,
    *,
    max_peer_size: int | None = None,
    timeout: float | None = 120.0,
) -> Hello:
    """Send our hello, read the peer's, and check they fit (both sides check independently).

    ``max_peer_size`` caps the set size the peer may announce (``info.set_size``, which every
    protocol then holds the peer's messages to), refusing a peer that would submit, say, the
    whole phone-number space, before any protocol state is built; ``None`` means no cap.
    Returns the peer's hello.
    """
    try:
        channel.send(own.to_message())
        message = channel.recv(timeout, limit=control_limit)  # a hello: refuse a large body unread
        raise_if_error(message)
        if message.kind == "sm2.nonce":  # psi.transport.signed: the peer signs, this side does not
            raise IncompatiblePeer("the peer signs every message with SM2 (--sm2-key/--sm2-peer-key) and this side "
                                   "does not: give both parties the options, or neither")
        peer = Hello.from_message(message)
        check_peer_hello(own, peer)
        size = peer.info.get("set_size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise MalformedMessage("peer hello lacks a valid set size")
        if max_peer_size is not None and size > max_peer_size:
            raise PolicyError(
                f"peer announced {size:,} keys, above the cap of {max_peer_size:,} keys;"
                " raise it with --max-peer-size N if this machine has the memory (about 0.6 KB per key)"
            )
    except PsiqError as err:
        send_error(channel, err)
        raise
    return peer


#: Bytes per key (either side's) that any one PSI message may carry, plus a constant: above the
#: largest per-key message of every PSI protocol (RSA-4096 blinded values: 512 bytes a key).
BODY_BYTES_PER_KEY = 1024
BODY_BYTES_CONSTANT = 4 * 1024 * 1024


def session_body_cap(own_size: int, peer_size: int) -> int:
    """The cap on any one PSI message body once both set sizes are announced: a peer that
    announced 100 keys cannot send a 200 MiB frame (the hard cap stays as a backstop)."""
    return BODY_BYTES_CONSTANT + BODY_BYTES_PER_KEY * (max(own_size, 0) + max(peer_size, 0))


def peer_set_size(peer: Hello) -> int:
    """The set size the peer announced (0 if absent)."""
    size: Any = peer.info.get("set_size", 0)
    return int(size) if isinstance(size, int) else 0


def role_of(value: str | Role) -> Role:
    return value if isinstance(value, Role) else Role(value)
