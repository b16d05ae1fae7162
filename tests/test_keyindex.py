"""psi.keyindex.KeyIndex numbers keys exactly as a dict would, also when hashes collide."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from psi.keyindex import KeyIndex


def _reference(batches: list[tuple[str, list[bytes]]]) -> tuple[list[list[int]], list[bytes]]:
    """What a dict gives: numbers per row, keys in order of first appearance."""
    index: dict[bytes, int] = {}
    out = []
    for _kind, keys in batches:
        out.append([index.setdefault(k, len(index)) for k in keys])
    return out, list(index)


def _run(batches: list[tuple[str, list[bytes]]], hash_fn=hash) -> tuple[list[list[int]], list[bytes], KeyIndex]:
    index = KeyIndex(hash_fn)
    known: list[bytes] = []
    out = []
    for kind, keys in batches:
        if kind == "one":  # the single-row path (csv module records)
            numbers = []
            for key in keys:
                number = index.find(key, known)
                if number is None:
                    number = len(known)
                    index.add(key, number)
                    known.append(key)
                numbers.append(number)
            out.append(numbers)
            continue
        numbers_arr, new = index.assign(keys, known)
        assert np.all(np.diff(new) > 0)
        known.extend(keys[i] for i in new.tolist())
        out.append(numbers_arr.tolist())
    return out, known, index


_keys = st.lists(st.binary(max_size=3), max_size=40)
_batches = st.lists(st.tuples(st.sampled_from(["batch", "one"]), _keys), max_size=8)


@settings(max_examples=300, deadline=None)
@given(batches=_batches)
def test_assign_matches_a_dict(batches: list[tuple[str, list[bytes]]]) -> None:
    assert _run(batches)[:2] == _reference(batches)


@settings(max_examples=300, deadline=None)
@given(batches=_batches, buckets=st.sampled_from([1, 2, 5]))
def test_colliding_hashes_fall_back_to_exact(batches: list[tuple[str, list[bytes]]], buckets: int) -> None:
    # a hash with only a few values: distinct keys collide, and the numbering must not change
    numbers, known, _index = _run(batches, lambda key: len(key) % buckets)
    assert (numbers, known) == _reference(batches)


def test_collision_switches_to_a_dict() -> None:
    numbers, known, index = _run([("batch", [b"a", b"b", b"a"]), ("batch", [b"cc", b"b"])], lambda key: 7)
    assert (numbers, known) == ([[0, 1, 0], [2, 1]], [b"a", b"b", b"cc"])
    assert index.exact


def test_many_batches_merge_runs() -> None:
    rng = random.Random(5)
    pool = [rng.randbytes(6) for _ in range(3000)]
    batches = [("batch", [rng.choice(pool) for _ in range(rng.randint(0, 400))]) for _ in range(60)]
    batches.insert(30, ("one", pool[:50]))
    numbers, known, index = _run(batches)
    assert (numbers, known) == _reference(batches)
    assert not index.exact
    assert len(index._runs) <= 12  # merged as they grow: O(log n) runs


@pytest.mark.parametrize("hash_fn", [hash, lambda key: 1])
def test_find_after_batches(hash_fn) -> None:
    index = KeyIndex(hash_fn)
    known = [b"x", b"y"]
    index.assign(known, [])
    assert index.find(b"y", known) == 1
    assert index.find(b"z", known) is None
