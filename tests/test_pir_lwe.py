"""SimplePIR layer: exact products, noise distribution, decode at the largest shape, fresh secrets."""

from __future__ import annotations

import numpy as np
import pytest

from pir import lwe


def test_matmul_mod32_exact() -> None:
    rng = np.random.default_rng(1)
    x = rng.integers(0, 2**32, (7, 1024), dtype=np.uint64).astype(np.uint32)
    y = rng.integers(0, 2**32, (1024, 5), dtype=np.uint64).astype(np.uint32)
    expected = (x.astype(object) @ y.astype(object)) % 2**32
    assert (lwe.matmul_mod32(x, y) == expected.astype(np.uint64)).all()
    small = rng.integers(-256, 256, (7, 1024))
    expected = (small.astype(object) @ y.astype(object)) % 2**32
    assert (lwe.matmul_mod32(small, y, x_small=True) == expected.astype(np.uint64)).all()


def test_hint_is_exact() -> None:
    params = lwe.LweParams(5, 3000, 9, b"\x07" * 16)
    digits = np.random.default_rng(2).integers(0, 512, (5, 3000)).astype(np.uint32)
    hint = lwe.compute_hint(digits, params, block=1000)
    a = lwe.expand_a(params.seed, 3000).astype(object)
    expected = ((digits.astype(object) - 256) @ a) % 2**32
    assert (hint == expected.astype(np.uint64)).all()


def test_error_distribution() -> None:
    e = lwe.sample_error(200_000).astype(np.int32)  # uint32 -> signed
    assert abs(e.mean()) < 0.1
    assert 6.3 < e.std() < 6.5
    assert np.abs(e).max() < 60


def test_plaintext_modulus_table_and_bound() -> None:
    assert [lwe.plaintext_bits(m) for m in (1, 2**13, 2**16, 2**16 + 1, 2**20, 2**21)] == [9, 9, 9, 8, 8, 7]
    with pytest.raises(ValueError):
        lwe.plaintext_bits(2**21 + 1)
    for m in (2**13, 2**16, 2**20, 2**21):
        assert lwe.failure_bound(m, lwe.plaintext_bits(m)) < -40


def _decode_many(rows: int, columns: int, queries: int) -> None:
    params = lwe.LweParams(rows, columns, lwe.plaintext_bits(columns), b"\x03" * 16)
    rng = np.random.default_rng(columns)
    digits = rng.integers(0, params.p, (rows, columns)).astype(np.uint32)
    hint = lwe.compute_hint(digits, params)
    a = lwe.expand_a(params.seed, columns)
    wanted = [int(j) for j in rng.integers(0, columns, queries)] + [0, columns - 1]
    q, state = lwe.make_queries(params, wanted, a)
    answers = lwe.answer_batch(digits, q)
    got = lwe.recover(params, hint, answers, state)
    for i, j in enumerate(wanted):
        assert (got[i] == digits[:, j]).all()
    for j in wanted[:3]:  # single-query path
        q1, s1 = lwe.make_queries(params, [j], a)
        assert (lwe.recover(params, hint, lwe.answer(digits, q1[0]).reshape(1, -1), s1)[0] == digits[:, j]).all()


def test_decode_largest_supported_p512_shape() -> None:
    _decode_many(8, 2**16, 40)  # most columns (most noise) at p = 512


def test_decode_p256_shape() -> None:
    _decode_many(4, 2**16 + 1, 10)  # p = 256 from here; wider shapes are too costly for the suite


def test_fresh_secret_per_query() -> None:
    params = lwe.LweParams(4, 4096, 9, b"\x05" * 16)
    q1, s1 = lwe.make_queries(params, [7])
    q2, s2 = lwe.make_queries(params, [7])
    assert not np.array_equal(q1, q2)
    assert not np.array_equal(s1.secrets, s2.secrets)
    qb, sb = lwe.make_queries(params, [7, 7, 7])
    assert len({sb.secrets[:, i].tobytes() for i in range(3)}) == 3
    assert len({qb[i].tobytes() for i in range(3)}) == 3


@pytest.mark.parametrize("k", [1, 3])
def test_query_carries_a_fresh_gaussian_error_term(k: int) -> None:
    """qu - A.s - Delta.u_j must be the LWE error: discrete Gaussian, sigma 6.4, fresh per query.

    With e = 0 the query is a noiseless linear system in s and the server could solve for the
    column asked; this test fails for that bug (and for an error shared between queries).
    """
    params = lwe.LweParams(4, 8192, 9, b"\x09" * 16)
    a = lwe.expand_a(params.seed, params.columns)
    wanted = [17, 4000, 8191][:k]
    queries, state = lwe.make_queries(params, wanted, a)
    for i, j in enumerate(wanted):
        body = lwe.matmul_mod32(a, state.secrets[:, i : i + 1])[:, 0]
        error = (queries[i] - body).astype(np.uint32)
        error[j] = np.uint32((int(error[j]) - params.delta) % 2**32)
        signed = error.view(np.int32).astype(np.int64)
        assert np.abs(signed).max() < 100  # small: it is noise, not a uniform value
        assert np.count_nonzero(signed) > 0.9 * params.columns  # P[e = 0] is about 0.06 at sigma 6.4
        assert abs(signed.mean()) < 0.3
        assert 6.0 < signed.std() < 6.8
    if k > 1:
        errors = [(queries[i] - lwe.matmul_mod32(a, state.secrets[:, i : i + 1])[:, 0]).tobytes() for i in range(k)]
        assert len(set(errors)) == k
