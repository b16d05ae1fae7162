"""Oblivious transfer: hardened Chou–Orlandi base OT, IKNP extension, 1-out-of-N OT.

All parties are sans-IO :class:`psi.protocols.base.Party` objects; join two of them with
``psi.driver.run_pair`` (same process) or ``psi.driver.run_party`` (over a channel). See
``docs/OT.md`` for variants, parameters, security and measured speed.
"""

from .iknp import OtKind, OtReceiver, OtSender
from .kk13 import OneOfNReceiver, OneOfNSender

__all__ = ["OtKind", "OtReceiver", "OtSender", "OneOfNReceiver", "OneOfNSender"]
