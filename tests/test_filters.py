"""Filters: round trips, no false negatives, measured false-positive rate, strict decoding."""

from __future__ import annotations

import dataclasses
import math
import os
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from psi.crypto import filters
from psi.crypto.filters import FILTER_KINDS, choose_filter, decode_filter, encode_filter, encoded_size
from psi.errors import MalformedMessage, UsageError

keys_strategy = st.lists(st.binary(min_size=16, max_size=16), max_size=60, unique=True)


@settings(max_examples=40, deadline=None)
@given(keys=keys_strategy, n_query=st.integers(0, 10_000), fpr_bits=st.integers(1, 60), kind=st.sampled_from(FILTER_KINDS))
def test_round_trip_no_false_negatives(keys, n_query, fpr_bits, kind):
    blob = b"".join(keys)
    data = encode_filter(kind, blob, n_query=n_query, fpr_bits=fpr_bits)
    assert len(data) <= filters.max_encoded_size(kind, len(keys), n_query, fpr_bits)
    decoded = decode_filter(data, n_query=n_query, fpr_bits=fpr_bits, max_count=len(keys))
    assert decoded.count == len(keys) and decoded.kind == kind
    assert decoded.contains(blob).all()
    if kind != "gcs":
        assert len(data) == encoded_size(kind, len(keys), n_query, fpr_bits)


@pytest.mark.parametrize("kind", FILTER_KINDS)
def test_measured_false_positive_rate(kind):
    rng = random.Random(7)
    members = rng.randbytes(16 * 1024)  # 2^10 entries: T = 16 bits, a whole number of bytes
    data = encode_filter(kind, members, n_query=1, fpr_bits=6)
    decoded = decode_filter(data, n_query=1, fpr_bits=6, max_count=1024)
    rate = decoded.contains(rng.randbytes(16 * 100_000)).mean()
    assert 0.8 / 64 < rate < 1.15 / 64  # target 2^-6


@pytest.mark.parametrize("kind", FILTER_KINDS)
def test_large_fpr_budget_has_no_false_matches(kind):
    members = os.urandom(16 * 5000)
    decoded = decode_filter(encode_filter(kind, members, n_query=5000, fpr_bits=40), n_query=5000, fpr_bits=40, max_count=5000)
    assert decoded.contains(members).all()
    assert not decoded.contains(os.urandom(16 * 5000)).any()


def test_sizes_at_2_pow_40_for_1e5():
    sizes = {kind: encoded_size(kind, 10**5, 10**5, 40) / 10**5 for kind in FILTER_KINDS}
    assert sizes["raw"] == pytest.approx(10.0, abs=0.01)
    assert 10.0 < sizes["bloom"] < 10.5
    assert 7.2 < sizes["gcs"] < 7.6
    assert choose_filter(10**5, 10**5, 40) == "gcs"
    assert choose_filter(0, 0, 40) == "raw"


@pytest.mark.parametrize("kind", FILTER_KINDS)
def test_strict_decoding(kind):
    members = os.urandom(16 * 100)
    data = encode_filter(kind, members, n_query=50, fpr_bits=40)
    decode_filter(data, n_query=50, fpr_bits=40, max_count=100)
    with pytest.raises(MalformedMessage):  # more entries than announced
        decode_filter(data, n_query=50, fpr_bits=40, max_count=99)
    with pytest.raises(MalformedMessage):  # parameters for another n_query / fpr
        decode_filter(data, n_query=50_000, fpr_bits=40, max_count=100)
    with pytest.raises(MalformedMessage):
        decode_filter(data, n_query=50, fpr_bits=30, max_count=100)
    for bad in (data[:-1], data + b"\x00", data[:3], b"\x09" + data[1:]):
        with pytest.raises(MalformedMessage):
            decode_filter(bad, n_query=50, fpr_bits=40, max_count=100)


def test_huge_announced_count_rejected_before_allocation():
    header = filters._HEADER.pack(2, 40, 2**32 - 1)
    with pytest.raises(MalformedMessage):
        decode_filter(header, n_query=1, fpr_bits=40, max_count=10)


def _gcs_body(data: bytes) -> tuple[int, int, int]:
    code, param, n = filters._HEADER.unpack_from(data, 0)
    assert code == 3
    return param, n, filters._HEADER.size


def test_gcs_rejects_padding_trailing_bytes_and_values_out_of_range():
    members = os.urandom(16 * 50)
    data = encode_filter("gcs", members, n_query=10, fpr_bits=20)
    lay = filters._gcs_layout(50, filters._gcs_range(50, 10, 20))
    assert lay.low_bits == 0 and 50 * lay.width % 8  # the fixed section ends in padding bits
    decode_filter(data, n_query=10, fpr_bits=20, max_count=50)
    fixed_end = filters._HEADER.size + -(-50 * lay.width // 8)
    bad = bytearray(data)
    bad[fixed_end - 1] |= 1  # a padding bit of the fixed-width remainder section
    for malformed in (bytes(bad), data + b"\x00", data[:-1], data[:fixed_end]):
        with pytest.raises(MalformedMessage):
            decode_filter(malformed, n_query=10, fpr_bits=20, max_count=50)
    # the same divisor over a 4x larger range: values past the agreed range must be refused
    wide = dataclasses.replace(lay, coded_range=4 * lay.coded_range)
    hi, lo = filters._split_keys(members)
    with pytest.raises(MalformedMessage):
        decode_filter(filters._encode_gcs(hi, lo, wide), n_query=10, fpr_bits=20, max_count=50)


@settings(max_examples=60, deadline=None)
@given(a=st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=20), b=st.integers(0, 2**64 - 1))
def test_mulhi_is_exact(a, b):
    got = filters._mulhi(np.array(a, dtype=np.uint64), b)
    assert got.tolist() == [(x * b) >> 64 for x in a]


@pytest.mark.parametrize("n, hash_range", [(10**4, 2**63), (65536, 2**63), (10**5, 2**63), (3000, 2**100)])
def test_gcs_size_is_within_a_tenth_of_a_bit_of_the_entropy(n, hash_range):
    # log2 C(R, n) / n ~ log2(R / n) + log2(e) bits per element for R >> n
    data = filters.encode_gcs_range(os.urandom(16 * n), hash_range)
    bits = 8 * len(data) / n
    entropy = math.log2(hash_range / n) + math.log2(math.e)
    assert entropy < bits < entropy + 0.1


@settings(max_examples=30, deadline=None)
@given(keys=st.lists(st.binary(min_size=16, max_size=16), min_size=1, max_size=40, unique=True),
       hash_range=st.integers(1, 2**112 - 1))
def test_gcs_round_trip_over_any_range(keys, hash_range):
    blob = b"".join(keys)
    lay = filters._gcs_layout(len(keys), hash_range)
    data = filters.encode_gcs_range(blob, hash_range)
    param, n, start = _gcs_body(data)
    decoded = filters._decode_gcs(memoryview(data)[start:], param, n, lay)
    assert decoded.contains(blob).all()
    assert len(data) <= filters._gcs_size(n, lay, bound=True)


def test_member_helper_handles_duplicates():
    s = np.array([1, 1, 5], dtype=np.uint64)
    q = np.array([1, 2, 5, 5], dtype=np.uint64)
    zero = np.zeros(3, dtype=np.uint64)
    got = filters._member(s, zero, q, np.zeros(4, dtype=np.uint64))
    assert got.tolist() == [True, False, True, True]


def test_unknown_kind_and_bad_args():
    with pytest.raises(UsageError):
        encode_filter("cuckoo", b"", n_query=1, fpr_bits=40)
    with pytest.raises(UsageError):
        encoded_size("raw", 1, 1, 0)


@settings(max_examples=200, deadline=None)
@given(kind=st.sampled_from(FILTER_KINDS), n=st.integers(0, 40), fpr_bits=st.sampled_from([8, 20, 40, 60]),
       edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4),
       cut=st.integers(-3, 3), seed=st.integers(0, 2**32 - 1))
def test_mutated_filters_decode_or_raise_malformed(kind, n, fpr_bits, edits, cut, seed):
    # a peer can send anything: the decoder either accepts it or raises MalformedMessage
    rng = random.Random(seed)
    data = bytearray(encode_filter(kind, rng.randbytes(16 * n), n_query=30, fpr_bits=fpr_bits))
    for pos, value in edits:
        data[pos % len(data)] = value
    if cut < 0:
        del data[cut:]
    else:
        data += bytes(cut)
    try:
        decoded = decode_filter(bytes(data), n_query=30, fpr_bits=fpr_bits, max_count=40)
    except MalformedMessage:
        return
    assert decoded.contains(rng.randbytes(16 * 5)).shape == (5,)
