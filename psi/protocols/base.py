"""What every protocol party looks like: a sans-IO state machine.

A party consumes :class:`~psi.messages.Message` objects with :meth:`Party.receive` and
produces them with :meth:`Party.outgoing`; it never touches sockets, files, threads, click or
tqdm. A driver (``psi.driver.run_party``) moves messages over a channel; tests join two
parties in memory (``psi.driver.run_pair``).

Rules every subclass follows:

* Heavy batch work (group exponentiations, RSA private operations) goes through the injected
  :class:`psi.parallel.Executor`, so the same code runs serially in tests and on every core in
  production.
* Flow control: a party keeps at most ``window`` batches in flight so memory stays bounded and
  neither side blocks forever on a full socket buffer.
* Any exception inside ``receive`` moves the party to the failed state; every later call raises
  :class:`~psi.errors.ProtocolStateError`.
* Every received value is validated in the protocol's message decoding before use.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import ProtocolStateError, PsiqError, UnexpectedMessage
from ..messages import CONTROL_BODY_MAX, CONTROL_KINDS, Message

__all__ = ["Reveal", "Role", "Progress", "PsiOutcome", "Party", "PsiParty"]


class Role(str, enum.Enum):
    """``server`` holds the set it answers for (signs, serves); ``client`` starts the session."""

    SERVER = "server"
    CLIENT = "client"


class Reveal(str, enum.Enum):
    """Who learns what.

    * ``receiver`` — the client learns the intersection, the server learns only the sizes.
    * ``both`` — both learn the intersection (the client returns the match, in a shared order).
    * ``cardinality`` — the client learns only how many of its keys matched.
    """

    RECEIVER = "receiver"
    BOTH = "both"
    CARDINALITY = "cardinality"


@dataclass(frozen=True, slots=True)
class Progress:
    """Where a party is: the phase name and units done of the phase total (0 total = unknown)."""

    phase: str
    done: int = 0
    total: int = 0


@dataclass(slots=True)
class PsiOutcome:
    """What one party learned from a PSI run.

    ``indices`` are positions in this party's *own* input list that are in the intersection,
    ``None`` when this party learns no intersection. In ``both`` mode the two parties'
    ``indices`` lists are in the same order: ``client.indices[i]`` and ``server.indices[i]``
    hold the same key. ``cardinality`` is the intersection size when this party learns it.
    """

    indices: list[int] | None
    cardinality: int | None
    details: dict[str, Any] = field(default_factory=dict)


class Party(ABC):
    """Base class of all protocol state machines (see the module docstring)."""

    #: Largest body of any non-control message this party accepts (None: only the hard cap).
    session_body_cap: int | None = None

    def __init__(self) -> None:
        self._outbox: list[Message] = []
        self._failed: BaseException | None = None
        self._finished = False
        self._phase = "start"
        self._done_units = 0
        self._total_units = 0
        self.phase_listener: "Callable[[str], None] | None" = None

    # -- driver-facing API -------------------------------------------------------------------
    def outgoing(self) -> list[Message]:
        """Messages ready to send, in order; the list is drained by this call."""
        self._check_usable()
        try:
            self._produce()
        except BaseException as err:
            self._failed = err
            raise
        out, self._outbox = self._outbox, []
        return out

    def receive(self, message: Message) -> None:
        """Consume one message from the peer; raises a :class:`PsiqError` on anything invalid."""
        self._check_usable()
        if self._finished:
            self._failed = UnexpectedMessage(f"message {message.kind!r} after the protocol finished")
            raise self._failed
        try:
            self._handle(message)
        except BaseException as err:
            self._failed = err
            raise

    def receive_limit(self, kind: str) -> int | None:
        """The largest body this party accepts for a ``kind`` message now (``None``: only the
        channel's hard cap). The driver hands this to ``Channel.recv``, which refuses a larger
        announcement from the frame header alone, before reading the body.

        The default allows control messages (``hello``, ``error``) at most
        :data:`~psi.messages.CONTROL_BODY_MAX` bytes, and any other kind at most
        :attr:`session_body_cap` (set by the session from both announced set sizes, see
        :func:`psi.session.session_body_cap`). Protocols override it to cap their bulk
        messages tighter, at what the negotiated sizes allow for each kind.
        """
        if kind in CONTROL_KINDS:
            return CONTROL_BODY_MAX
        return self.session_body_cap

    @property
    def finished(self) -> bool:
        """True once the party has nothing more to send or receive."""
        return self._finished and not self._outbox

    @property
    def failed(self) -> bool:
        return self._failed is not None

    def progress(self) -> Progress:
        return Progress(self._phase, self._done_units, self._total_units)

    @abstractmethod
    def result(self) -> Any:
        """The party's output; only valid once :attr:`finished`."""

    # -- subclass hooks ----------------------------------------------------------------------
    @abstractmethod
    def _handle(self, message: Message) -> None:
        """Process one message (validate, compute, queue replies with :meth:`_send`)."""

    def _produce(self) -> None:
        """Queue any messages that can be sent now without new input (flow-controlled)."""

    # -- helpers for subclasses --------------------------------------------------------------
    def _send(self, kind: str, body: bytes = b"") -> None:
        self._outbox.append(Message(kind, body))

    def _set_phase(self, phase: str, total: int = 0) -> None:
        self._phase, self._done_units, self._total_units = phase, 0, total
        if self.phase_listener is not None:
            self.phase_listener(phase)  # lets a driver time phases exactly, even mid-call

    def _advance(self, units: int) -> None:
        self._done_units += units

    def _finish(self) -> None:
        self._finished = True
        self._phase = "done"
        if self.phase_listener is not None:
            self.phase_listener("done")

    def _require_finished(self) -> None:
        if not self._finished:
            raise ProtocolStateError("result() called before the protocol finished")
        if self._failed is not None:
            raise ProtocolStateError("protocol failed") from self._failed

    def _check_usable(self) -> None:
        if self._failed is not None:
            if isinstance(self._failed, PsiqError):
                raise ProtocolStateError(f"protocol already failed: {self._failed}") from self._failed
            raise ProtocolStateError("protocol already failed") from self._failed

    @staticmethod
    def _unexpected(message: Message, state: object) -> UnexpectedMessage:
        return UnexpectedMessage(f"unexpected message {message.kind!r} in state {state}")


class PsiParty(Party):
    """A PSI protocol side: its output is the :class:`PsiOutcome` it stores before finishing."""

    _outcome: PsiOutcome | None = None

    def result(self) -> PsiOutcome:
        self._require_finished()
        if self._outcome is None:  # pragma: no cover - every side stores one before _finish()
            raise ProtocolStateError("no result")
        return self._outcome
