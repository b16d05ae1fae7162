"""The handshake every session starts with: both sides agree before any data moves.

Client and server each send one ``hello``. Each side checks the other's: same protocol name and
protocol version, opposite roles, and identical ``params`` (reveal mode, key columns,
normalisation, group, truncation...). A mismatch names the differing settings and stops the
session before any customer data is processed. ``info`` carries what is announced but not
compared (set size, software version, input-size cap).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import MalformedMessage, ParameterMismatch, UnexpectedMessage, UnsupportedVersion, IncompatiblePeer
from ..messages import Message, pack_json, unpack_json
from .base import Role

__all__ = ["Hello", "check_peer_hello", "HELLO_KIND"]

HELLO_KIND = "hello"
#: Params a hello may leave out, and the value that absence stands for (so a side that does not
#: send one, e.g. the default ``standard`` suite, compares equal to one that sends the default).
ABSENT_MEANS: dict[str, Any] = {"suite": "standard"}


@dataclass(frozen=True)
class Hello:
    """One side's announcement: protocol, version, role, compared params, informational fields."""

    protocol: str
    version: int
    role: Role
    params: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def to_message(self) -> Message:
        return Message(
            HELLO_KIND,
            pack_json(
                {
                    "protocol": self.protocol,
                    "version": self.version,
                    "role": self.role.value,
                    "params": self.params,
                    "info": self.info,
                }
            ),
        )

    @classmethod
    def from_message(cls, message: Message) -> "Hello":
        if message.kind != HELLO_KIND:
            raise UnexpectedMessage(f"expected the peer's hello, got {message.kind!r}")
        obj = unpack_json(message.body, max_size=64 * 1024)
        try:
            protocol = obj["protocol"]
            version = obj["version"]
            role = Role(obj["role"])
            params = obj.get("params", {})
            info = obj.get("info", {})
        except (KeyError, ValueError):
            raise MalformedMessage("hello message lacks a field or has a bad role") from None
        if not isinstance(protocol, str) or not isinstance(version, int) or isinstance(version, bool):
            raise MalformedMessage("hello message has a field of the wrong type")
        if not isinstance(params, dict) or not isinstance(info, dict):
            raise MalformedMessage("hello params/info must be objects")
        return cls(protocol, version, role, params, info)


def check_peer_hello(own: Hello, peer: Hello) -> None:
    """Raise :class:`IncompatiblePeer` (or a subclass) unless ``peer`` fits ``own``."""
    if peer.protocol != own.protocol:
        raise IncompatiblePeer(f"peer runs protocol {peer.protocol!r}, this side runs {own.protocol!r}")
    if peer.version != own.version:
        raise UnsupportedVersion(
            f"peer speaks {peer.protocol} protocol version {peer.version}, this side speaks {own.version}"
        )
    if peer.role == own.role:
        raise IncompatiblePeer(f"both sides are {own.role.value}s")
    keys = sorted(set(own.params) | set(peer.params))
    ours = {k: own.params.get(k, ABSENT_MEANS.get(k)) for k in keys}
    theirs = {k: peer.params.get(k, ABSENT_MEANS.get(k)) for k in keys}
    differ = [k for k in keys if ours[k] != theirs[k]]
    if differ:
        shown = "; ".join(f"{k}: ours={ours[k]!r} peer={theirs[k]!r}" for k in differ[:4])
        raise ParameterMismatch(f"settings differ from the peer's ({shown})")
