"""The whole psiq exception hierarchy.

Every error a user can meet derives from :class:`PsiqError` and carries the process exit code
the CLI maps it to (one place: ``cli.main``). Local misuse and bad local input are separated from
what the remote peer did wrong, following h11's Local/RemoteProtocolError split.

Exit codes (documented in the README):

====  =====================================================================
0     success (for PIR lookups: both "listed" and "not listed")
1     unexpected internal error (a bug: please report it)
2     usage error or bad local input (malformed CSV, missing column, bad file)
3     transport failure: cannot connect, port in use, peer dropped, timeout
4     the peer broke the protocol: malformed or unexpected message
5     the peer is incompatible: other protocol, version or parameters
6     TLS / authentication failure: bad certificate, wrong CA, wrong peer name
7     refused by policy: quota exceeded, input-size cap
====  =====================================================================
"""

from __future__ import annotations

__all__ = [
    "PsiqError",
    "LocalError",
    "InputError",
    "UsageError",
    "RemoteError",
    "MalformedMessage",
    "UnexpectedMessage",
    "IncompatiblePeer",
    "ParameterMismatch",
    "UnsupportedVersion",
    "StaleVersion",
    "TransportError",
    "PeerDisconnected",
    "AuthenticationError",
    "PolicyError",
    "QuotaExceeded",
    "InvalidToken",
    "ProtocolStateError",
]


class PsiqError(Exception):
    """Base of every error psiq raises on purpose. ``str(err)`` is a one-line message."""

    exit_code: int = 1


class LocalError(PsiqError):
    """This side misused the library or gave it something it cannot use."""

    exit_code = 2


class InputError(LocalError):
    """Local input data is unusable (malformed CSV row, missing column, empty file...)."""


class UsageError(LocalError):
    """Options that do not fit together, or a call in the wrong order."""


class ProtocolStateError(LocalError):
    """A protocol object was driven out of order, or used after it failed."""


class RemoteError(PsiqError):
    """The peer did something the protocol does not allow."""

    exit_code = 4


class MalformedMessage(RemoteError):
    """A received frame or message failed validation (length, range, group membership...)."""


class UnexpectedMessage(RemoteError):
    """A well-formed message arrived at a point in the protocol where it is not allowed."""


class IncompatiblePeer(RemoteError):
    """The peer speaks another protocol, version or parameter set."""

    exit_code = 5


class ParameterMismatch(IncompatiblePeer):
    """Both sides run the same protocol but disagree on parameters (key columns, normalisation...)."""


class StaleVersion(ParameterMismatch):
    """A request was built for another version of the served table (for example a stale PIR hint)."""


class UnsupportedVersion(IncompatiblePeer):
    """The peer's wire or protocol version is not one this build speaks."""


class TransportError(PsiqError):
    """Connecting, sending or receiving failed."""

    exit_code = 3


class PeerDisconnected(TransportError):
    """The peer closed the connection before the protocol finished."""


class AuthenticationError(TransportError):
    """TLS handshake or peer identity check failed."""

    exit_code = 6


class PolicyError(PsiqError):
    """The request was refused by a configured policy."""

    exit_code = 7


class QuotaExceeded(PolicyError):
    """A per-client evaluation quota is used up."""


class InvalidToken(PsiqError):
    """Opaque decryption/authentication failure (deliberately says nothing more)."""

    exit_code = 4
