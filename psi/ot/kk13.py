"""1-out-of-N OT with chosen messages (KK13 with the OOS17 check), as sans-IO parties.

The OT-extension matrix of :mod:`psi.ot.extension` with width 512 and the linear [511, 76]
BCH code ``C`` of :mod:`psi.ot.bch` (message index ``j`` < 2^32 is the code input): for OT ``i``
with choice ``c_i`` the receiver gets ``t_i`` and the sender can compute
``q_i ⊕ (C(j) ∧ Δ)`` for every ``j``, which equals ``t_i`` exactly for ``j = c_i``.
The pad for ``(i, j)`` is ``E(H(i, q_i ⊕ (C(j) ∧ Δ)))`` where ``H`` is the tweakable fixed-key
AES hash and ``E`` stretches the 16-byte key to ``L + 16`` bytes (TCCR in counter mode).
The sender sends ``(m_{i,j} ‖ 0^16) ⊕ pad_{i,j}``; the receiver opens only ``j = c_i`` and checks
the 16 zero bytes, so any other index fails with the opaque :class:`~psi.errors.InvalidToken`.

Message flow (receiver = client, sender = server)::

    hello ⇄ hello; kk13.base.a ─▶; ◀─ kk13.base.b (512 points);
    per batch: kk13.u (its OTs + 40 check rows) ─▶; ◀─ kk13.challenge (16-byte seed);
               kk13.check (40 × 74 bytes) ─▶; ◀─ kk13.y … (that batch's ciphertexts, in pieces)

The sender sends a batch's ciphertexts only after that batch has passed the OOS17 consistency
check (:mod:`psi.ot.oos`); a receiver whose rows are not code words is stopped with
:class:`~psi.ot.oos.CheatingDetected` (exit 4) before any ciphertext of the batch leaves.
The receiver learns ``N`` and ``L`` from the sender's hello (so a CLI receiver need not know
them beforehand) and stops with :class:`~psi.errors.UsageError` if a choice is ``≥ N``.

Security: the sender learns nothing about the choices (the check answer is masked by the
random check rows). Against a malicious receiver: except with probability 2^-40 per session,
a receiver that passes every check has at least 128 unknown bits of ``Δ`` between its chosen
index and any other, so it opens one message per OT (OOS17; the base OTs per
:mod:`psi.ot.base_ot`). A malicious sender can still send garbage for some indices (the
receiver then fails with ``InvalidToken``, which tells the sender that index was chosen:
selective failure, not prevented here).
"""

from __future__ import annotations

import enum
import hmac
import secrets
from typing import Sequence

import numpy as np

from ..crypto.suite import Suite, get_suite, hello_params as suite_params
from ..errors import InvalidToken, MalformedMessage, ProtocolStateError, UsageError
from ..messages import Message
from ..protocols.base import Party, Role
from . import bch, oos
from .aes_hash import TweakHash
from .bitmatrix import transpose
from .base_ot import BaseOtReceiver, BaseOtSender
from .extension import ExtensionReceiver, ExtensionSender
from .session import HelloState

__all__ = ["OneOfNSender", "OneOfNReceiver", "NAME", "VERSION"]

NAME = "kk13"
VERSION = 2  # 2: BCH code + OOS17 check (1: pseudorandom code, no check)
WIDTH = 512
TAG = 16
PIECE_BYTES = 1 << 22
MAX_N = 1 << 32
_KEY_DOMAIN, _PAD_DOMAIN = 0x31, 0x32
_CHECK_PARAMS = {"code": "bch-511-76", "check": f"oos17-s{oos.S}"}  # both sides must agree


class _State(enum.Enum):
    HELLO = "hello"
    BASE = "base"
    EXTEND = "extend"
    DONE = "done"
# HELLO → BASE → EXTEND → DONE; any error → failed.


def _code_inputs(values: np.ndarray) -> np.ndarray:
    """Message indices (< 2^32) as 76-bit BCH inputs ``uint64 (n, 2)``."""
    out = np.zeros((values.size, 2), dtype=np.uint64)
    out[:, 0] = values
    return out


def _layout(count: int, n: int, length: int) -> tuple[int, int]:
    """(OTs per batch, ciphertexts per message piece): fixed by the public sizes."""
    piece = max(1, PIECE_BYTES // (length + TAG))
    batch = max(1, min(1 << 16, piece // max(n, 1)))
    return batch, piece


def _pads(hasher: TweakHash, rows: np.ndarray, indices: np.ndarray, length: int) -> np.ndarray:
    keys = hasher.hash_rows(rows, 0, out_bytes=16, domain=_KEY_DOMAIN, indices=indices)
    return hasher.hash_rows(keys, 0, out_bytes=length + TAG, domain=_PAD_DOMAIN, indices=indices)


class OneOfNReceiver(Party):
    """Gets message ``choices[i]`` of OT ``i``; :meth:`result` is ``uint8 (count, L)``."""

    def __init__(self, choices: Sequence[int] | np.ndarray, *, window: int = 4, keep_ciphertexts: bool = False,
                 suite: "Suite | str | None" = None) -> None:
        super().__init__()
        self._suite = get_suite(suite)
        self._choices = np.asarray(choices, dtype=np.int64).reshape(-1)
        if self._choices.size == 0 or self._choices.min() < 0 or window < 1:
            raise UsageError("1-out-of-N OT needs at least one non-negative choice")
        self._window = window
        self._keep = keep_ciphertexts
        self._ciphertexts: dict[int, np.ndarray] = {}
        params = {"count": int(self._choices.size), **_CHECK_PARAMS, **suite_params(self._suite)}
        self._hello = HelloState(NAME, VERSION, Role.CLIENT, params, {}, self._suite)
        self._state = _State.HELLO
        self._send(self._hello.own_message.kind, self._hello.own_message.body)

    @property
    def message_count(self) -> int:
        """``N``, known once the sender's hello has arrived."""
        return self._n

    def result(self) -> np.ndarray:
        self._require_finished()
        return self._output

    def try_open(self, ot: int, index: int) -> bytes:
        """Open ciphertext ``index`` of OT ``ot`` with this receiver's key (``keep_ciphertexts``).

        Succeeds only for the chosen index; any other raises :class:`InvalidToken`.
        """
        if not self._keep or ot not in self._ciphertexts:
            raise ProtocolStateError("ciphertexts were not kept")
        plain = self._ciphertexts[ot][index] ^ self._pad_of[ot]
        if not hmac.compare_digest(plain[self._length :].tobytes(), bytes(TAG)):
            raise InvalidToken("cannot open this message")
        return plain[: self._length].tobytes()

    def _handle(self, message: Message) -> None:
        if self._state is _State.HELLO:
            self._hello.accept(message)
            self._n = self._hello.peer_int("messages", low=1, high=MAX_N)
            self._length = self._hello.peer_int("message_length", low=1, high=1 << 20)
            if self._choices.max() >= self._n:
                raise UsageError(
                    f"index {int(self._choices.max())} is out of range: the sender holds {self._n} messages (0..{self._n - 1})"
                )
            self._batch, self._piece = _layout(self._choices.size, self._n, self._length)
            self._hash = TweakHash(self._hello.session, self._suite)
            self._base = BaseOtSender(WIDTH, self._hello.session, self._suite)
            self._send("kk13.base.a", self._base.first_message())
            self._state = _State.BASE
        elif self._state is _State.BASE and message.kind == "kk13.base.b":
            if len(message.body) != WIDTH * self._suite.base_ot.point_bytes:
                raise MalformedMessage("kk13.base.b has the wrong length")
            keys0, keys1 = self._base.finish(message.body)
            self._ext = ExtensionReceiver(keys0, keys1, suite=self._suite)
            self._output = np.empty((self._choices.size, self._length), dtype=np.uint8)
            self._pad_of: dict[int, np.ndarray] = {}
            self._pending: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # batch → (T columns, code inputs)
            self._batches = -(-self._choices.size // self._batch)
            self._next = self._challenged = self._answered = 0
            self._got = 0  # ciphertexts of the oldest open batch received so far
            self._state = _State.EXTEND
            self._set_phase("extend", self._choices.size)
        elif self._state is _State.EXTEND and message.kind == "kk13.challenge" and self._challenged < self._next:
            self._answer_challenge(message.body)
        elif self._state is _State.EXTEND and message.kind == "kk13.y" and self._answered < self._challenged:
            self._piece_in(message.body)
        else:
            raise self._unexpected(message, self._state.value)

    def _produce(self) -> None:
        if self._state is not _State.EXTEND:
            return
        while self._next < self._batches and self._next - self._answered < self._window:
            start = self._next * self._batch
            stop = min(start + self._batch, self._choices.size)
            inputs = np.concatenate([_code_inputs(self._choices[start:stop].astype(np.uint64)), oos.random_words(oos.S)])
            t_rows, wire, t_cols = self._ext.extend_codewords(bch.code().encode(inputs), columns=True)
            pads = _pads(self._hash, t_rows[: stop - start], np.arange(start, stop), self._length)
            for ot in range(start, stop):
                self._pad_of[ot] = pads[ot - start]
            self._pending[self._next] = (t_cols, inputs)
            self._send("kk13.u", wire)
            self._next += 1

    def _answer_challenge(self, seed: bytes) -> None:
        batch = self._challenged
        t_cols, inputs = self._pending.pop(batch)
        words = oos.challenge_words(self._hello.session, batch, seed, inputs.shape[0] - oos.S, self._suite)
        self._send("kk13.check", oos.receiver_response(t_cols, inputs, words))
        self._challenged += 1

    def _piece_in(self, body: bytes) -> None:
        start = self._answered * self._batch
        stop = min(start + self._batch, self._choices.size)
        total = (stop - start) * self._n
        count = min(self._piece, total - self._got)
        width = self._length + TAG
        if len(body) != count * width:
            raise MalformedMessage("kk13.y piece has the wrong length")
        cipher = np.frombuffer(body, dtype=np.uint8).reshape(count, width)
        lo, hi = self._got, self._got + count
        ots = np.arange(start, stop)
        wanted = (ots - start) * self._n + self._choices[start:stop]
        inside = (wanted >= lo) & (wanted < hi)
        for ot, flat in zip(ots[inside].tolist(), wanted[inside].tolist()):
            plain = cipher[flat - lo] ^ self._pad_of[ot]
            if not hmac.compare_digest(plain[self._length :].tobytes(), bytes(TAG)):
                raise InvalidToken("an OT message failed to open")
            self._output[ot] = plain[: self._length]
        if self._keep:
            for flat in range(lo, hi):
                ot, j = divmod(flat, self._n)
                self._ciphertexts.setdefault(start + ot, np.empty((self._n, width), dtype=np.uint8))[j] = cipher[flat - lo]
        self._got = hi
        if self._got == total:
            if not self._keep:
                for ot in range(start, stop):
                    del self._pad_of[ot]
            self._answered += 1
            self._got = 0
            self._advance(stop - start)
            if self._answered == self._batches:
                self._state = _State.DONE
                self._finish()


class OneOfNSender(Party):
    """Holds ``messages``: ``uint8 (count, N, L)`` or, for one OT, a sequence of ``N`` byte strings."""

    def __init__(self, messages: np.ndarray | Sequence[bytes], *, window: int = 4, suite: "Suite | str | None" = None) -> None:
        super().__init__()
        self._suite = get_suite(suite)
        if isinstance(messages, np.ndarray):
            matrix = messages.astype(np.uint8, copy=False)
        else:
            if not messages or len({len(m) for m in messages}) != 1:
                raise UsageError("1-out-of-N OT needs messages of one common length")
            matrix = np.frombuffer(b"".join(messages), dtype=np.uint8).reshape(1, len(messages), len(messages[0]))
        if matrix.ndim != 3 or 0 in matrix.shape or matrix.shape[1] > MAX_N:
            raise UsageError("messages must be a non-empty (count, N, L) array")
        self._messages = matrix
        self._count, self._n, self._length = matrix.shape
        self._batch, self._piece = _layout(self._count, self._n, self._length)
        info = {"messages": self._n, "message_length": self._length}
        params = {"count": self._count, **_CHECK_PARAMS, **suite_params(self._suite)}
        self._hello = HelloState(NAME, VERSION, Role.SERVER, params, info, self._suite)
        self._state = _State.HELLO
        self._send(self._hello.own_message.kind, self._hello.own_message.body)

    def result(self) -> None:
        self._require_finished()
        return None

    def _handle(self, message: Message) -> None:
        if self._state is _State.HELLO:
            self._hello.accept(message)
            self._hash = TweakHash(self._hello.session, self._suite)
            self._state = _State.BASE
        elif self._state is _State.BASE and message.kind == "kk13.base.a":
            secret = np.frombuffer(secrets.token_bytes(WIDTH), dtype=np.uint8) & 1
            reply, keys = BaseOtReceiver(secret, self._hello.session, self._suite).reply(message.body)
            self._ext = ExtensionSender(keys, secret, suite=self._suite)
            self._masked = bch.code().masked(self._ext.secret)  # C(·) ∧ Δ, linear
            self._send("kk13.base.b", reply)
            self._received = self._checked = 0
            self._unchecked: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # batch → (q rows, expected q̃)
            self._batches = -(-self._count // self._batch)
            self._state = _State.EXTEND
            self._set_phase("extend", self._count)
        elif self._state is _State.EXTEND and message.kind == "kk13.u" and self._received < self._batches:
            self._challenge(message.body)
        elif self._state is _State.EXTEND and message.kind == "kk13.check" and self._checked < self._received:
            self._answer(message.body)
        else:
            raise self._unexpected(message, self._state.value)

    def _challenge(self, wire: bytes) -> None:
        """A batch's rows are all here: fix them, then draw the check challenge."""
        batch = self._received
        start = batch * self._batch
        rows = min(start + self._batch, self._count) - start
        q_cols = self._ext.extend_columns(rows + oos.S, wire)
        seed = secrets.token_bytes(oos.SEED_BYTES)
        words = oos.challenge_words(self._hello.session, batch, seed, rows, self._suite)
        self._unchecked[batch] = (transpose(q_cols)[:rows], oos.sender_expected(q_cols, words))
        self._received += 1
        self._send("kk13.challenge", seed)

    def _answer(self, response: bytes) -> None:
        batch = self._checked
        q, expected = self._unchecked.pop(batch)
        oos.verify(expected, response, self._masked)  # raises before any ciphertext of the batch
        self._checked += 1
        start = batch * self._batch
        stop = start + q.shape[0]
        total = (stop - start) * self._n
        for lo in range(0, total, self._piece):
            flat = np.arange(lo, min(lo + self._piece, total))
            ots, js = np.divmod(flat, self._n)
            rows = self._masked.encode(_code_inputs(js.astype(np.uint64)))
            rows ^= q[ots]
            pads = _pads(self._hash, rows, ots + start, self._length)
            pads[:, : self._length] ^= self._messages[ots + start, js]
            self._send("kk13.y", pads.tobytes())
        self._advance(stop - start)
        if self._checked == self._batches:
            self._state = _State.DONE
            self._finish()
