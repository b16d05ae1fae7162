"""IKNP OT extension: many 1-out-of-2 OTs from 128 base OTs, as two sans-IO parties.

Message flow (the OT receiver is the session *client*, the sender the *server*)::

    receiver                                          sender
      hello                      ───▶ ◀───              hello
      iknp.base.a  (base OT sender point A)  ───▶
                                             ◀───       iknp.base.b  (128 points; s = choices)
      iknp.u  batch 0 .. (128 × (m + 40) bits each) ───▶   (at most ``window`` unanswered)
                                             ◀───       iknp.challenge  (16-byte seed) per batch
      iknp.check  (40 × 17 bytes)            ───▶
                                             ◀───       iknp.ack | iknp.y  per batch

Kinds of OT (all 1-out-of-2, messages of ``message_length`` bytes):

* ``random`` — the sender gets two random messages per OT, the receiver the one it chose;
  ``iknp.ack`` carries nothing.
* ``correlated`` — the sender fixes ``delta`` and gets ``x0`` random with ``x1 = x0 ⊕ delta``;
  ``iknp.y`` carries ``H(q) ⊕ H(q ⊕ s) ⊕ delta`` per OT.
* ``chosen`` — the sender's messages ``m0, m1``; ``iknp.y`` carries both, each masked with the
  hash of its row.

What each party learns: the receiver its chosen messages and nothing about the others; the
sender nothing about the choices (IKNP 2003 with the GKWY20 tweakable correlation-robust hash;
base OTs per :mod:`psi.ot.base_ot`).

Consistency check (KOS15 idea, realised as in :mod:`psi.ot.oos` with IKNP's repetition code):
every batch carries 40 extra rows with random choice bits; after the batch has arrived the
sender sends a fresh seed, the receiver answers 40 random binary combinations
``(t̃_l, x̃_l)`` and the sender checks ``t̃_l ⊕ q̃_l = x̃_l·Δ`` before it sends or keeps anything
of that batch (:class:`~psi.ot.oos.CheatingDetected`, exit 4). A receiver whose rows are not
of the form ``t ⊕ x·1`` is caught except with probability 2^-40; the check still lets a
cheater learn ``c`` bits of ``Δ`` with probability ``2^-c`` (128 − c unknown bits remain for
every message it did not choose). This is the binary-combination form of the check, not
KOS15's GF(2^128) form (whose original proof Roy22 found flawed).
"""

from __future__ import annotations

import enum
import secrets
from typing import Sequence

import numpy as np

from ..crypto.suite import Suite, get_suite, hello_params as suite_params
from ..errors import MalformedMessage, UsageError
from . import oos
from ..messages import Message
from ..protocols.base import Party, Role
from .aes_hash import TweakHash
from .base_ot import BaseOtReceiver, BaseOtSender
from .bitmatrix import transpose
from .extension import ExtensionReceiver, ExtensionSender
from .session import HelloState

__all__ = ["OtKind", "OtSender", "OtReceiver", "NAME", "VERSION", "WIDTH"]

NAME = "iknp"
VERSION = 2  # 2: consistency check per batch (1: none)
WIDTH = 128
MAX_COUNT = 1 << 32
MAX_MESSAGE = 1 << 16


class OtKind(str, enum.Enum):
    RANDOM = "random"
    CORRELATED = "correlated"
    CHOSEN = "chosen"


class _State(enum.Enum):
    HELLO = "hello"      # waiting for the peer's hello
    BASE = "base"        # waiting for the base-OT message
    EXTEND = "extend"    # streaming batches
    DONE = "done"
# Legal transitions: HELLO → BASE → EXTEND → DONE; any error → failed (Party base).


def _check_common(count: int, message_length: int, batch_size: int, window: int) -> None:
    if not 0 <= count < MAX_COUNT:
        raise UsageError("OT count out of range")
    if not 1 <= message_length <= MAX_MESSAGE:
        raise UsageError("message length must be between 1 and 65536 bytes")
    if batch_size < 8 or window < 1:
        raise UsageError("batch_size must be at least 8 and window at least 1")


def _params(kind: OtKind, count: int, message_length: int, batch_size: int) -> dict:
    return {"kind": kind.value, "count": count, "message_length": message_length, "batch_size": batch_size,
            "check": f"kos15-binary-s{oos.S}"}


class OtReceiver(Party):
    """Chooses one of two messages per OT; :meth:`result` gives ``uint8 (count, message_length)``."""

    def __init__(
        self,
        choices: Sequence[int] | np.ndarray,
        *,
        kind: OtKind | str = OtKind.RANDOM,
        message_length: int = 16,
        batch_size: int = 1 << 18,
        window: int = 4,
        suite: "Suite | str | None" = None,
    ) -> None:
        super().__init__()
        self._suite = get_suite(suite)
        self.kind = OtKind(kind)
        bits = np.asarray(choices, dtype=np.int64).reshape(-1)
        if bits.size and (bits.min() < 0 or bits.max() > 1):
            raise UsageError("OT choices must be 0 or 1")
        _check_common(bits.size, message_length, batch_size, window)
        self._choices = bits.astype(np.uint8)
        self._length = message_length
        self._batch = batch_size
        self._window = window
        params = {**_params(self.kind, bits.size, message_length, batch_size), **suite_params(self._suite)}
        self._hello = HelloState(NAME, VERSION, Role.CLIENT, params, {}, self._suite)
        self._state = _State.HELLO
        self._output = np.empty((bits.size, message_length), dtype=np.uint8)
        self._pads: dict[int, np.ndarray] = {}
        self._next = 0        # next batch to send
        self._challenged = 0  # batches whose check challenge has been answered
        self._answered = 0    # batches the sender has answered
        self._unchecked: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # batch → (T columns, choices)
        self._batches = -(-bits.size // batch_size)
        self._send(self._hello.own_message.kind, self._hello.own_message.body)

    def result(self) -> np.ndarray:
        self._require_finished()
        return self._output

    def _handle(self, message: Message) -> None:
        if self._state is _State.HELLO:
            self._hello.accept(message)
            self._hash = TweakHash(self._hello.session, self._suite)
            self._base = BaseOtSender(WIDTH, self._hello.session, self._suite)
            self._send("iknp.base.a", self._base.first_message())
            self._state = _State.BASE
        elif self._state is _State.BASE and message.kind == "iknp.base.b":
            keys0, keys1 = self._base.finish(message.body)
            self._ext = ExtensionReceiver(keys0, keys1, suite=self._suite)
            self._state = _State.EXTEND
            self._set_phase("extend", self._choices.size)
            self._maybe_finish()
        elif self._state is _State.EXTEND and message.kind == "iknp.challenge" and self._challenged < self._next:
            batch = self._challenged
            t_cols, bits = self._unchecked.pop(batch)
            words = oos.challenge_words(self._hello.session, batch, message.body, bits.size - oos.S, self._suite)
            self._send("iknp.check", oos.repetition_response(t_cols, bits, words))
            self._challenged += 1
        elif self._state is _State.EXTEND and self._answered < self._challenged:
            self._answer(message)
        else:
            raise self._unexpected(message, self._state.value)

    def _produce(self) -> None:
        if self._state is not _State.EXTEND:
            return
        while self._next < self._batches and self._next - self._answered < self._window:
            start = self._next * self._batch
            stop = min(start + self._batch, self._choices.size)
            check_bits = np.frombuffer(secrets.token_bytes(oos.S), dtype=np.uint8) & 1
            bits = np.concatenate([self._choices[start:stop], check_bits])
            t_rows, wire, t_cols = self._ext.extend_choices(bits, columns=True)
            self._unchecked[self._next] = (t_cols, bits)
            pad = self._hash.hash_rows(t_rows[: stop - start], start, out_bytes=self._length)
            if self.kind is OtKind.RANDOM:
                self._output[start:stop] = pad
            else:
                self._pads[self._next] = pad
            self._send("iknp.u", wire)
            self._next += 1

    def _answer(self, message: Message) -> None:
        batch = self._answered
        start = batch * self._batch
        stop = min(start + self._batch, self._choices.size)
        rows = stop - start
        if self.kind is OtKind.RANDOM:
            if message.kind != "iknp.ack" or message.body:
                raise MalformedMessage("expected an empty iknp.ack")
        else:
            if message.kind != "iknp.y":
                raise self._unexpected(message, self._state.value)
            pad = self._pads.pop(batch)
            pairs = 2 if self.kind is OtKind.CHOSEN else 1
            if len(message.body) != pairs * rows * self._length:
                raise MalformedMessage("iknp.y has the wrong length")
            y = np.frombuffer(message.body, dtype=np.uint8).reshape(pairs, rows, self._length)
            choice = self._choices[start:stop].astype(bool)
            if self.kind is OtKind.CHOSEN:
                picked = np.where(choice[:, None], y[1], y[0])
                np.bitwise_xor(picked, pad, out=self._output[start:stop])
            else:
                out = pad.copy()
                out[choice] ^= y[0][choice]
                self._output[start:stop] = out
        self._answered += 1
        self._advance(rows)
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        if self._answered == self._batches:
            self._state = _State.DONE
            self._finish()


class OtSender(Party):
    """Sends (or gets) the message pairs.

    ``random``: :meth:`result` gives ``(m0, m1)``; ``correlated``: give ``delta`` (one
    ``message_length``-byte string, or a ``(count, message_length)`` array) and get
    ``(x0, x1)``; ``chosen``: give ``messages0``/``messages1`` (``(count, message_length)``
    uint8 arrays or sequences of byte strings); :meth:`result` gives ``None``.
    """

    def __init__(
        self,
        count: int,
        *,
        kind: OtKind | str = OtKind.RANDOM,
        message_length: int = 16,
        messages0: np.ndarray | Sequence[bytes] | None = None,
        messages1: np.ndarray | Sequence[bytes] | None = None,
        delta: bytes | np.ndarray | None = None,
        batch_size: int = 1 << 18,
        window: int = 4,
        suite: "Suite | str | None" = None,
    ) -> None:
        super().__init__()
        self._suite = get_suite(suite)
        self.kind = OtKind(kind)
        _check_common(count, message_length, batch_size, window)
        self._count, self._length, self._batch = count, message_length, batch_size
        self._m0 = self._m1 = self._delta = None
        if self.kind is OtKind.CHOSEN:
            if messages0 is None or messages1 is None:
                raise UsageError("chosen-message OT needs messages0 and messages1")
            self._m0 = _as_matrix(messages0, count, message_length)
            self._m1 = _as_matrix(messages1, count, message_length)
        elif self.kind is OtKind.CORRELATED:
            if delta is None:
                raise UsageError("correlated OT needs delta")
            d = np.frombuffer(delta, dtype=np.uint8) if isinstance(delta, (bytes, bytearray)) else np.asarray(delta, dtype=np.uint8)
            if d.shape not in ((message_length,), (count, message_length)):
                raise UsageError("delta must be message_length bytes or one row per OT")
            self._delta = d
        if self.kind is not OtKind.CHOSEN:
            self._x0 = np.empty((count, message_length), dtype=np.uint8)
            self._x1 = np.empty((count, message_length), dtype=np.uint8)
        params = {**_params(self.kind, count, message_length, batch_size), **suite_params(self._suite)}
        self._hello = HelloState(NAME, VERSION, Role.SERVER, params, {}, self._suite)
        self._state = _State.HELLO
        self._batches = -(-count // batch_size)
        self._received = self._checked = 0
        self._unchecked: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # batch → (q rows, expected q̃)
        self._send(self._hello.own_message.kind, self._hello.own_message.body)

    def result(self) -> tuple[np.ndarray, np.ndarray] | None:
        self._require_finished()
        return None if self.kind is OtKind.CHOSEN else (self._x0, self._x1)

    def _handle(self, message: Message) -> None:
        if self._state is _State.HELLO:
            self._hello.accept(message)
            self._hash = TweakHash(self._hello.session, self._suite)
            self._state = _State.BASE
        elif self._state is _State.BASE and message.kind == "iknp.base.a":
            secret = np.frombuffer(secrets.token_bytes(WIDTH), dtype=np.uint8) & 1  # Δ: from the OS
            base = BaseOtReceiver(secret, self._hello.session, self._suite)
            reply, keys = base.reply(message.body)
            self._ext = ExtensionSender(keys, secret, suite=self._suite)
            self._send("iknp.base.b", reply)
            self._state = _State.EXTEND
            self._set_phase("extend", self._count)
            if self._batches == 0:
                self._state = _State.DONE
                self._finish()
        elif self._state is _State.EXTEND and message.kind == "iknp.u" and self._received < self._batches:
            self._challenge(message.body)
        elif self._state is _State.EXTEND and message.kind == "iknp.check" and self._checked < self._received:
            q, expected = self._unchecked.pop(self._checked)
            oos.repetition_verify(expected, message.body, self._ext.secret)  # before anything of the batch
            self._extend(q)
        else:
            raise self._unexpected(message, self._state.value)

    def _challenge(self, wire: bytes) -> None:
        batch = self._received
        start = batch * self._batch
        rows = min(start + self._batch, self._count) - start
        q_cols = self._ext.extend_columns(rows + oos.S, wire)
        seed = secrets.token_bytes(oos.SEED_BYTES)  # drawn only now that the batch is fixed
        words = oos.challenge_words(self._hello.session, batch, seed, rows, self._suite)
        self._unchecked[batch] = (transpose(q_cols)[:rows], oos.sender_expected(q_cols, words))
        self._received += 1
        self._send("iknp.challenge", seed)

    def _extend(self, q: np.ndarray) -> None:
        start = self._checked * self._batch
        stop = start + q.shape[0]
        x0 = self._hash.hash_rows(q, start, out_bytes=self._length)
        q ^= self._ext.secret[None, :]
        x1 = self._hash.hash_rows(q, start, out_bytes=self._length)
        if self.kind is OtKind.RANDOM:
            self._x0[start:stop], self._x1[start:stop] = x0, x1
            self._send("iknp.ack")
        elif self.kind is OtKind.CORRELATED:
            delta = self._delta if self._delta.ndim == 1 else self._delta[start:stop]
            self._x0[start:stop] = x0
            np.bitwise_xor(x0, delta, out=self._x1[start:stop])
            self._send("iknp.y", (x0 ^ x1 ^ delta).tobytes())
        else:
            x0 ^= self._m0[start:stop]
            x1 ^= self._m1[start:stop]
            self._send("iknp.y", x0.tobytes() + x1.tobytes())
        self._checked += 1
        self._advance(stop - start)
        if self._checked == self._batches:
            self._state = _State.DONE
            self._finish()


def _as_matrix(messages: np.ndarray | Sequence[bytes], count: int, length: int) -> np.ndarray:
    if isinstance(messages, np.ndarray):
        matrix = messages.astype(np.uint8, copy=False)
    else:
        if any(len(m) != length for m in messages):
            raise UsageError(f"every message must be {length} bytes")
        matrix = np.frombuffer(b"".join(messages), dtype=np.uint8).reshape(len(messages), length)
    if matrix.shape != (count, length):
        raise UsageError(f"expected {count} messages of {length} bytes")
    return matrix
