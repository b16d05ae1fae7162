"""IKNP 1-out-of-2 and KK13 1-out-of-N OT parties, driven in one process."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from psi.driver import run_pair
from psi.errors import InvalidToken, MalformedMessage, ParameterMismatch, ProtocolStateError, UnexpectedMessage, UsageError
from psi.messages import Message
from psi.ot import OneOfNReceiver, OneOfNSender, OtReceiver, OtSender


def _run(choices, kind, length, batch, m0=None, m1=None, delta=None):
    receiver = OtReceiver(choices, kind=kind, message_length=length, batch_size=batch)
    sender = OtSender(len(choices), kind=kind, message_length=length, batch_size=batch,
                      messages0=m0, messages1=m1, delta=delta)
    run_pair(receiver, sender)
    return receiver.result(), sender.result()


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 700), st.sampled_from([8, 128, 200, 1 << 18]), st.integers(1, 40), st.integers(0, 2**32 - 1))
def test_random_and_chosen_ot(count, batch, length, seed):
    rng = np.random.default_rng(seed)
    choices = rng.integers(0, 2, count)
    got, (x0, x1) = _run(choices, "random", length, batch)
    assert np.array_equal(got, np.where(choices[:, None] == 1, x1, x0))
    if count and length >= 8:  # short random messages collide by chance
        assert not (got == np.where(choices[:, None] == 1, x0, x1)).all(axis=1).any()
    m0 = rng.integers(0, 256, (count, length), dtype=np.uint8)
    m1 = rng.integers(0, 256, (count, length), dtype=np.uint8)
    got, nothing = _run(choices, "chosen", length, batch, m0=m0, m1=m1)
    assert nothing is None and np.array_equal(got, np.where(choices[:, None] == 1, m1, m0))


@pytest.mark.parametrize("per_ot", [False, True])
def test_correlated_ot(per_ot):
    rng = np.random.default_rng(5)
    choices = rng.integers(0, 2, 1000)
    delta = rng.integers(0, 256, (1000, 16) if per_ot else 16, dtype=np.uint8)
    got, (x0, x1) = _run(choices, "correlated", 16, 300, delta=delta if per_ot else delta.tobytes())
    assert np.array_equal(x1, x0 ^ delta)
    assert np.array_equal(got, np.where(choices[:, None] == 1, x1, x0))


def test_parameter_mismatch_stops_before_ot():
    with pytest.raises(ParameterMismatch):
        run_pair(OtReceiver([0, 1], message_length=16), OtSender(2, message_length=32))


def _to_extension(receiver, sender):
    """Step both parties through the hellos and base OT; return the receiver's first batch."""
    for m in receiver.outgoing():
        sender.receive(m)
    for m in sender.outgoing():
        receiver.receive(m)
    for m in receiver.outgoing():
        sender.receive(m)
    for m in sender.outgoing():
        receiver.receive(m)
    return receiver.outgoing()


def test_malformed_extension_messages_rejected():
    receiver, sender = OtReceiver([1] * 100), OtSender(100)
    batch = _to_extension(receiver, sender)
    assert [m.kind for m in batch] == ["iknp.u"]
    with pytest.raises(MalformedMessage):
        sender.receive(Message("iknp.u", batch[0].body[:-1]))
    with pytest.raises(ProtocolStateError):
        sender.receive(batch[0])  # the failed party stays failed
    receiver, sender = OtReceiver([1] * 100), OtSender(100)
    _through_check(receiver, sender, _to_extension(receiver, sender))
    with pytest.raises(MalformedMessage):
        receiver.receive(Message("iknp.ack", b"x"))


def _through_check(receiver, sender, batch):
    """Deliver the receiver's first batch, the sender's challenge and the receiver's answer."""
    sender.receive(batch[0])
    (challenge,) = sender.outgoing()
    receiver.receive(challenge)
    (check,) = receiver.outgoing()
    sender.receive(check)


def test_malformed_base_messages_rejected():
    receiver, sender = OtReceiver([0, 1]), OtSender(2)
    for m in receiver.outgoing():
        sender.receive(m)
    for m in sender.outgoing():
        receiver.receive(m)
    with pytest.raises(MalformedMessage):
        sender.receive(Message("iknp.base.a", bytes(32)))  # identity point
    receiver2, sender2 = OtReceiver([0, 1]), OtSender(2)
    for m in receiver2.outgoing():
        sender2.receive(m)
    for m in sender2.outgoing():
        receiver2.receive(m)
    for m in receiver2.outgoing():
        sender2.receive(m)
    reply = sender2.outgoing()[0]
    with pytest.raises(MalformedMessage):
        receiver2.receive(Message("iknp.base.b", reply.body[:-32] + b"\xff" * 32))
    with pytest.raises(UnexpectedMessage):
        OtSender(2).receive(Message("iknp.u", b""))  # before the hello


def test_chosen_y_length_checked():
    choices = [0, 1, 1]
    receiver = OtReceiver(choices, kind="chosen")
    sender = OtSender(3, kind="chosen", messages0=[b"a" * 16] * 3, messages1=[b"b" * 16] * 3)
    _through_check(receiver, sender, _to_extension(receiver, sender))
    y = sender.outgoing()[0]
    with pytest.raises(MalformedMessage):
        receiver.receive(Message("iknp.y", y.body + b"\x00"))


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 30), st.integers(1, 40), st.integers(1, 33), st.integers(0, 2**32 - 1))
def test_one_of_n(count, n, length, seed):
    rng = np.random.default_rng(seed)
    messages = rng.integers(0, 256, (count, n, length), dtype=np.uint8)
    choices = rng.integers(0, n, count)
    receiver = OneOfNReceiver(choices, keep_ciphertexts=True)
    run_pair(receiver, OneOfNSender(messages))
    assert np.array_equal(receiver.result(), messages[np.arange(count), choices])
    for ot in range(count):
        for j in range(n):
            if j == choices[ot]:
                assert receiver.try_open(ot, j) == messages[ot, j].tobytes()
            else:
                with pytest.raises(InvalidToken):
                    receiver.try_open(ot, j)


def test_one_of_n_many_pieces():
    rng = np.random.default_rng(9)
    messages = rng.integers(0, 256, (1, 300_000, 20), dtype=np.uint8)
    receiver = OneOfNReceiver([299_999])
    run_pair(receiver, OneOfNSender(messages))
    assert receiver.result()[0].tobytes() == messages[0, 299_999].tobytes()


def test_one_of_n_choice_out_of_range():
    with pytest.raises(UsageError, match="out of range"):
        run_pair(OneOfNReceiver([5]), OneOfNSender([b"ab"] * 5))


def test_one_of_n_tampered_ciphertext_fails_opaquely():
    receiver, sender = OneOfNReceiver([1]), OneOfNSender([b"x" * 8, b"y" * 8])
    batch = _to_extension(receiver, sender)
    sender.receive(batch[0])
    (challenge,) = sender.outgoing()
    receiver.receive(challenge)
    (check,) = receiver.outgoing()
    sender.receive(check)
    (y,) = sender.outgoing()
    tampered = bytearray(y.body)
    tampered[-1] ^= 1
    with pytest.raises(InvalidToken):
        receiver.receive(Message("kk13.y", bytes(tampered)))
