"""Bit-matrix transpose, the AES hash and the base OT, tested in isolation."""

import numpy as np
import pytest
import rbcl
from hypothesis import given, settings, strategies as st

from psi.errors import MalformedMessage
from psi.ot.aes_hash import TweakHash
from psi.ot.base_ot import BaseOtReceiver, BaseOtSender, decode_point
from psi.ot.bitmatrix import transpose


def _reference_transpose(matrix):
    bits = np.unpackbits(matrix, axis=1, bitorder="little")
    return np.packbits(bits.T, axis=1, bitorder="little")


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.integers(0, 2**32 - 1))
def test_transpose_matches_unpackbits(row_groups, col_bytes, seed):
    rng = np.random.default_rng(seed)
    matrix = rng.integers(0, 256, (row_groups * 8, col_bytes), dtype=np.uint8)
    out = transpose(matrix)
    assert np.array_equal(out, _reference_transpose(matrix))
    assert np.array_equal(transpose(out), matrix)


def test_transpose_rejects_bad_shapes():
    with pytest.raises(ValueError):
        transpose(np.zeros((7, 2), dtype=np.uint8))
    with pytest.raises(TypeError):
        transpose(np.zeros((8, 2), dtype=np.uint16))


def test_hash_depends_on_index_session_and_domain():
    rows = np.random.default_rng(1).integers(0, 256, (4, 16), dtype=np.uint8)
    same = np.repeat(rows[:1], 4, axis=0)
    h = TweakHash(b"session-a")
    out = h.hash_rows(same, 0)
    assert len({bytes(r) for r in out}) == 4  # same row, different OT index
    assert not np.array_equal(out, TweakHash(b"session-b").hash_rows(same, 0))
    assert not np.array_equal(out, h.hash_rows(same, 0, domain=1))
    assert np.array_equal(out, h.hash_rows(same, 0, indices=np.arange(4)))
    wide = h.hash_rows(rows, 7, out_bytes=40)
    assert wide.shape == (4, 40) and np.array_equal(wide[:, :16], h.hash_rows(rows, 7, out_bytes=16))


@pytest.mark.parametrize("count", [1, 3, 128])
def test_base_ot_receiver_gets_chosen_key_only(count):
    choices = np.random.default_rng(count).integers(0, 2, count)
    sender = BaseOtSender(count, b"sid")
    receiver = BaseOtReceiver(choices, b"sid")
    reply, chosen = receiver.reply(sender.first_message())
    keys0, keys1 = sender.finish(reply)
    expected = np.where(choices[:, None] == 1, keys1, keys0)
    other = np.where(choices[:, None] == 1, keys0, keys1)
    assert np.array_equal(chosen, expected)
    assert not (chosen == other).all(axis=1).any()
    assert len({bytes(k) for k in np.concatenate([keys0, keys1])}) == 2 * count


def test_base_ot_keys_bound_to_session():
    sender = BaseOtSender(2, b"one")
    reply, chosen = BaseOtReceiver(np.array([0, 1]), b"two").reply(sender.first_message())
    keys0, keys1 = sender.finish(reply)
    assert not np.array_equal(chosen[0], keys0[0]) and not np.array_equal(chosen[1], keys1[1])


NON_CANONICAL = bytes([0xFF] * 32)  # above the field prime: RFC 9496 rejects it


@pytest.mark.parametrize("bad", [bytes(32), NON_CANONICAL, b"\x01" * 31, b"", bytes([1]) + bytes(31)])
def test_points_decoded_strictly(bad):
    with pytest.raises(MalformedMessage):
        decode_point(bad)


def test_base_ot_rejects_bad_peer_points():
    receiver = BaseOtReceiver(np.array([1, 0]), b"s")
    with pytest.raises(MalformedMessage):
        receiver.reply(bytes(32))
    sender = BaseOtSender(2, b"s")
    good = rbcl.crypto_scalarmult_ristretto255_base(rbcl.crypto_core_ristretto255_scalar_random())
    with pytest.raises(MalformedMessage):
        sender.finish(good + bytes(32))
    with pytest.raises(MalformedMessage):
        BaseOtSender(2, b"s").finish(good)  # one point short
