"""Handshake helpers shared by the OT and KKRT parties.

Each side's hello carries a fresh 16-byte nonce in ``info``; the session id that every key
derivation and hash tweak of the run is bound to is BLAKE2b over both hello bodies (client's
first), so two sessions never share hash inputs even with the same inputs and peers.
"""

from __future__ import annotations

import secrets
from typing import Any

from ..crypto.suite import STANDARD, Suite
from ..errors import MalformedMessage, ParameterMismatch
from ..messages import Message
from ..protocols.base import Role
from ..protocols.handshake import Hello, check_peer_hello

__all__ = ["HelloState"]


class HelloState:
    """Builds this side's hello, checks the peer's, derives the session id."""

    def __init__(self, protocol: str, version: int, role: Role, params: dict[str, Any], info: dict[str, Any],
                 suite: Suite = STANDARD) -> None:
        """``suite``: hashes the session id (BLAKE2b or SM3); its name belongs in ``params``."""
        info = dict(info)
        self._suite = suite
        info["nonce"] = secrets.token_hex(16)
        self.own = Hello(protocol, version, role, params, info)
        self.own_message = self.own.to_message()
        self.peer: Hello | None = None
        self.session = b""

    def accept(self, message: Message) -> Hello:
        peer = Hello.from_message(message)
        check_peer_hello(self.own, peer)
        nonce = peer.info.get("nonce")
        if not isinstance(nonce, str) or len(nonce) != 32:
            raise MalformedMessage("peer hello lacks its session nonce")
        bodies = (self.own_message.body, message.body)
        if self.own.role is Role.SERVER:
            bodies = bodies[::-1]
        h = self._suite.hasher(person=b"psiq-session", size=32)
        for body in bodies:
            h.update(len(body).to_bytes(4, "big") + body)
        self.session = h.digest()
        self.peer = peer
        return peer

    def peer_int(self, key: str, *, low: int = 0, high: int = 1 << 40) -> int:
        """An integer the peer announced in ``info`` (validated)."""
        value = self.peer.info.get(key) if self.peer else None
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise MalformedMessage(f"peer hello has a missing or bad {key!r}")
        return value

    def check_peer_size(self, expected: int) -> None:
        size = self.peer_int("size")
        if size != expected:
            raise ParameterMismatch(f"peer announced {size} items, this side was told {expected}")
