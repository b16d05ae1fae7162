"""The [511, 76, ≥171] BCH code of psi.crypto.bch, checked against polynomial arithmetic."""

import numpy as np

from psi.crypto import bch


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


def test_generator_divides_x511_plus_1_with_degree_435():
    g = bch.generator_polynomial()
    assert g.bit_length() - 1 == 511 - 76
    assert _mod((1 << 511) | 1, g) == 0
    # roots α^1..α^170 (consecutive), and α^0 = 1 is not one: g(1) = parity of its coefficients
    assert bin(g).count("1") % 2 == 1


def _messages(n, seed):
    m = np.random.default_rng(seed).integers(0, 1 << 63, (n, 2), dtype=np.uint64)
    m[:, 1] &= np.uint64(0xFFF)
    return m


def test_encode_is_polynomial_multiplication_and_linear():
    m = _messages(200, 1)
    words = bch.encode(m)
    g = bch.generator_polynomial()
    for row in range(0, 200, 17):
        value = int(m[row, 0]) | int(m[row, 1]) << 64
        assert words[row].tobytes() == _mul(value, g).to_bytes(64, "little")
    a, b = m[:100], m[100:]
    assert (bch.encode(a ^ b) == bch.encode(a) ^ bch.encode(b)).all()
    assert not (words[:, 7] >> np.uint64(63)).any()  # bit 511 stays zero


def test_sampled_code_words_have_weight_at_least_the_designed_distance():
    m = _messages(50_000, 2)
    low = np.zeros((76 + 75, 2), dtype=np.uint64)  # weight-1 and weight-2 messages
    for i in range(76):
        low[i, i // 64] |= np.uint64(1) << np.uint64(i % 64)
    for i in range(75):
        low[76 + i] = low[i] | low[i + 1]
    weights = np.bitwise_count(bch.encode(np.concatenate([m, low]))).sum(axis=1)
    assert weights.min() >= bch.DESIGNED_DISTANCE
