"""The [511, 76, ≥171] BCH code of psi.ot.bch (used by KK13/KKRT and RR22), checked against
polynomial arithmetic over GF(2) and GF(2^9)."""

import numpy as np
import pytest

from psi.ot import bch


def _mod(a: int, b: int) -> int:
    while a and a.bit_length() >= b.bit_length():
        a ^= b << (a.bit_length() - b.bit_length())
    return a


def _mul(a: int, b: int) -> int:
    out = 0
    while b:
        if b & 1:
            out ^= a
        a, b = a << 1, b >> 1
    return out


def _messages(n, seed):
    m = np.random.default_rng(seed).integers(0, 1 << 63, (n, 2), dtype=np.uint64)
    m[:, 1] &= np.uint64(0xFFF)
    return m


def _gf2_rank(rows: np.ndarray) -> int:
    rows = rows.copy() % 2
    rank = 0
    for col in range(rows.shape[1]):
        pivot = np.nonzero(rows[rank:, col])[0]
        if pivot.size == 0:
            continue
        p = rank + pivot[0]
        rows[[rank, p]] = rows[[p, rank]]
        mask = rows[:, col].astype(bool)
        mask[rank] = False
        rows[mask] ^= rows[rank]
        rank += 1
        if rank == rows.shape[0]:
            break
    return rank


def test_generator_is_the_bch_511_76_generator():
    g = bch.generator_polynomial()
    assert g.bit_length() - 1 == 511 - 76  # dimension 76
    assert all(bch.evaluate(g, i) == 0 for i in range(1, 171))  # roots α^1..α^170: designed distance 171
    assert bch.evaluate(g, 171) != 0 and bch.evaluate(g, 0) != 0
    assert _mod((1 << 511) | 1, g) == 0  # g | x^511 − 1: a cyclic code of length 511
    # α^0 = 1 is not a root: g(1) = parity of its coefficients
    assert bin(g).count("1") % 2 == 1


def test_encode_is_polynomial_multiplication_and_linear():
    code = bch.code()
    m = _messages(400, 1)
    words = code.encode(m)
    assert words.shape == (400, 64) and words.dtype == np.uint8
    g = bch.generator_polynomial()
    for row in range(0, 400, 17):
        value = int(m[row, 0]) | int(m[row, 1]) << 64
        assert words[row].tobytes() == _mul(value, g).to_bytes(64, "little")
    for w, c in zip(m[:20], words[:20]):  # the same product, bit by bit
        message = int(w[0]) | int(w[1]) << 64
        product = 0
        for i in range(76):
            if message >> i & 1:
                product ^= g << i
        assert c.tobytes() == product.to_bytes(64, "little")
    a, b = m[:200], m[200:]
    assert (code.encode(a ^ b) == words[:200] ^ words[200:]).all()
    assert not (words[:, 63] & 0x80).any()  # bit 511 is the zero padding


def test_generator_rows_have_full_rank():
    unit = np.zeros((76, 2), dtype=np.uint64)
    for i in range(76):
        unit[i, i // 64] = np.uint64(1) << np.uint64(i % 64)
    basis = np.unpackbits(bch.code().encode(unit), axis=1)
    assert _gf2_rank(basis) == 76


def test_sampled_code_words_have_weight_at_least_the_designed_distance():
    code = bch.code()
    m = _messages(50_000, 2)
    low = np.zeros((76 + 75, 2), dtype=np.uint64)  # weight-1 and weight-2 messages
    for i in range(76):
        low[i, i // 64] |= np.uint64(1) << np.uint64(i % 64)
    for i in range(75):
        low[76 + i] = low[i] | low[i + 1]
    weights = np.bitwise_count(code.encode(np.concatenate([m, low]))).sum(axis=1)
    assert weights.min() >= bch.DISTANCE
    differences = np.unpackbits(code.encode(m[1:401] ^ m[:400]), axis=1).sum(axis=1)
    assert differences.min() >= bch.DISTANCE  # sampled differences respect the designed distance


def test_a_77_bit_message_is_refused():
    with pytest.raises(ValueError):
        bch.code().encode(np.array([[0, 1 << 12]], dtype=np.uint64))
