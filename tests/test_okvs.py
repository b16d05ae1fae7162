"""The RR22 OKVS (psi.crypto.okvs): parameters against the paper's formulas, round trips, retries."""

import math
import os

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from psi.crypto import okvs

# RR22 eqs. (2)-(3) for w = 3, λ = 40, as evaluated in the team's reference sheet
# (/work/shared/reference/malicious-ot-rsa-proof-vole.md §3.3): n -> (e, ĝ)
REFERENCE = {10: (1.431, 3), 12: (1.319, 3), 14: (1.268, 2), 16: (1.244, 2), 20: (1.227, 1), 24: (1.224, 1)}


@pytest.mark.parametrize("log_n", sorted(REFERENCE))
def test_expansion_and_gap_match_the_reference_table(log_n):
    e_ref, gap_ref = REFERENCE[log_n]
    e = okvs.expansion(1 << log_n, 40)
    assert abs(e - e_ref) < 0.0015
    assert okvs.gap_bound(1 << log_n, e, 40) == gap_ref


def _log2_overflow(n: int, bins: int, cap: int) -> float:
    """log2 of bins · P[Binomial(n, 1/bins) > cap], summed term by term (a second implementation)."""
    p = 1.0 / bins
    total = 0.0
    term_log = None
    for k in range(cap + 1, min(n, cap + 3000) + 1):
        term_log = (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
                    + k * math.log(p) + (n - k) * math.log1p(-p))
        total += math.exp(term_log)
    return math.log2(total * bins) if total > 0 else -math.inf


@pytest.mark.parametrize("n", [0, 1, 2, 30, 1000, 16384, 16385, 100_000, 1 << 20, 1 << 24, 30_000_000])
def test_parameters_bound_failure_below_2_to_minus_40(n):
    p = okvs.params_for(n)
    assert p.bins == max(1, -(-n // okvs.BIN_SIZE))
    assert p.cols_per_bin % 8 == 0 and p.sparse >= 3
    lam = 42 + math.ceil(math.log2(p.bins))
    cap = max(p.capacity, 1)
    e = okvs.expansion(cap, lam)
    assert p.sparse >= e * cap  # expansion per the gap model at the per-bin statistical parameter
    assert p.dense == lam + okvs.gap_bound(cap, e, lam) <= 64  # never clipped: the bound holds
    if p.bins > 1:  # capacity: overflow ≤ 2^-42, and one less would not do
        assert _log2_overflow(n, p.bins, p.capacity) <= -42 < _log2_overflow(n, p.bins, p.capacity - 1)
    # union bound: overflow 2^-42 + bins · (gap 2^-λb + rank 2^-λb) ≤ 2^-42 + 2^-41 < 2^-40


def test_expansion_at_2_to_20_is_about_1_35():
    p = okvs.params_for(1 << 20)
    assert 1.3 < p.total / (1 << 20) < 1.4  # RR22's clustered figure (1.28) plus capacity slack


def _round_trip(n, bin_size, seed, width=2):
    rng = np.random.default_rng(seed)
    digests = np.unique(rng.integers(0, 256, (n, 16), dtype=np.uint8), axis=0)
    rng.shuffle(digests)
    params = okvs.params_for(digests.shape[0], bin_size=bin_size)
    okvs_seed = rng.bytes(16)
    bins = okvs.bin_of(digests, okvs_seed, params.bins)
    values = rng.integers(0, 1 << 63, (digests.shape[0], width), dtype=np.uint64)
    table, counters, cols, masks = okvs.encode(digests, bins, values, params.bins, okvs_seed, params)
    assert table.shape == (params.bins, params.cols_per_bin, width)
    # decode recomputes the rows from the digests and the counters, as the other party does
    cols2, masks2 = okvs.rows_of(digests, bins, okvs_seed, counters, params)
    assert (cols2 == cols).all() and (masks2 == masks).all()
    assert (okvs.decode(table, bins, cols2, masks2, params) == values).all()
    return table, params, counters


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 400), st.sampled_from([16, 64, 1 << 14]), st.integers(0, 2**32))
def test_round_trip(n, bin_size, seed):
    _round_trip(n, bin_size, seed)


def test_round_trip_many_bins_wide_values():
    _round_trip(5000, 512, 1, width=8)


def test_rows_have_three_distinct_columns_in_range():
    params = okvs.params_for(3)
    digests = np.random.default_rng(2).integers(0, 256, (20000, 16), dtype=np.uint8)
    cols, masks = okvs.rows_of(digests, np.zeros(20000, dtype=np.int64), b"s" * 16, np.zeros(1, np.uint8), params)
    assert cols.min() >= 0 and cols.max() < params.sparse
    assert (cols[:, 0] != cols[:, 1]).all() and (cols[:, 0] != cols[:, 2]).all() and (cols[:, 1] != cols[:, 2]).all()
    assert (masks >> np.uint64(params.dense) == 0).all()


def test_decoding_under_another_seed_does_not_give_the_values():
    rng = np.random.default_rng(3)
    digests = np.unique(rng.integers(0, 256, (300, 16), dtype=np.uint8), axis=0)
    params = okvs.params_for(digests.shape[0])
    values = rng.integers(0, 1 << 63, (digests.shape[0], 2), dtype=np.uint64)
    bins = np.zeros(digests.shape[0], dtype=np.int64)
    table, counters, _cols, _masks = okvs.encode(digests, bins, values, 1, b"a" * 16, params)
    cols, masks = okvs.rows_of(digests, bins, b"b" * 16, counters, params)
    assert not (okvs.decode(table, bins, cols, masks, params) == values).all(axis=1).any()


def test_no_retries_at_the_stated_parameters():
    """200 encodes of 1024 keys: the failure probability is ≤ 2^-40, so none may retry."""
    for seed in range(200):
        _table, _params, counters = _round_trip(1024, 1 << 14, seed, width=1)
        assert counters.max() == 0


def test_failed_bins_are_retried_and_still_decode(monkeypatch):
    """With few columns (e = 1.2 < e*) and 8 dense ones, encoding often fails: the bin retries with the next
    counter; the counters go to the decoder and the round trip still holds."""
    rng = np.random.default_rng(5)
    n = 40
    digests = rng.integers(0, 256, (n, 16), dtype=np.uint8)
    params = okvs.Params(n, 1, n, 48, 8, 40)
    values = rng.integers(0, 1 << 63, (n, 1), dtype=np.uint64)
    bins = np.zeros(n, dtype=np.int64)
    retried = 0
    for trial in range(20):
        seed = bytes([trial]) * 16
        try:
            table, counters, cols, masks = okvs.encode(digests, bins, values, 1, seed, params)
        except okvs.EncodeFailure:
            continue
        retried += int(counters[0] > 0)
        assert (okvs.decode(table, bins, cols, masks, params) == values).all()
        if counters[0] > 0:  # decoding with the wrong counter does not give the values
            wrong_cols, wrong_masks = okvs.rows_of(digests, bins, seed, np.zeros(1, np.uint8), params)
            assert not (okvs.decode(table, bins, wrong_cols, wrong_masks, params) == values).all()
    assert retried > 0


def test_over_capacity_is_an_encode_failure():
    params = okvs.Params(10, 2, 4, 16, 48, 40)
    digests = np.random.default_rng(1).integers(0, 256, (10, 16), dtype=np.uint8)
    bins = np.array([0] * 6 + [1] * 4)
    with pytest.raises(okvs.EncodeFailure, match="capacity"):
        okvs.encode(digests, bins, np.zeros((10, 1), np.uint64), 2, os.urandom(16), params)


def test_duplicate_keys_fail_rather_than_encode_two_values():
    params = okvs.params_for(2)
    digest = np.random.default_rng(1).integers(0, 256, (1, 16), dtype=np.uint8)
    digests = np.concatenate([digest, digest])
    values = np.array([[1], [2]], dtype=np.uint64)
    with pytest.raises(okvs.EncodeFailure):
        okvs.encode(digests, np.zeros(2, np.int64), values, 1, os.urandom(16), params)
