"""Run a :class:`~.party.PpcaEcdhParty` over a :class:`~.link.GrpcLink` (the only place the two meet)."""

from __future__ import annotations

from typing import Callable

from ...errors import IncompatiblePeer, TransportError
from .link import GrpcLink
from .party import PpcaEcdhParty, PpcaOutcome

__all__ = ["run_session"]


def run_session(party: PpcaEcdhParty, link: GrpcLink, on_phase: Callable[[str], None] | None = None) -> PpcaOutcome:
    """Drive ``party`` to the end over the started ``link``; returns its outcome.

    A refused handshake is answered with the spec's error code before the error propagates.
    """
    try:
        while not party.finished:
            for key, data in party.outgoing():
                link.send(key, data)
            if party.finished:
                break
            wanted = party.wanted()
            if wanted is None:
                continue
            if on_phase is not None:
                on_phase(f"waiting for {wanted[0]} #{wanted[1]}")
            party.receive(wanted, link.recv(wanted))
    except IncompatiblePeer:
        for key, data in party.pending_refusal():
            try:
                link.send(key, data)
            except TransportError:
                pass
        raise
    return party.result()
