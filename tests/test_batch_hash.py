"""psi.crypto.batch_hash against a second implementation (per-item CBC-MAC with AES-CBC)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings, strategies as st

from psi.crypto.batch_hash import LONG_ITEM, keyed_digests

KEY = bytes(range(16))


def _reference(item: bytes, key: bytes = KEY) -> bytes:
    """CBC-MAC (AES-CBC, zero IV, last block) of ``len ‖ body`` zero-padded, one item at a time."""
    body = item if len(item) <= LONG_ITEM else hashlib.blake2b(item, digest_size=32, person=b"psiq-long-item").digest()
    message = len(item).to_bytes(8, "little") + body
    message += bytes(-len(message) % 16)
    encryptor = Cipher(algorithms.AES(key), modes.CBC(bytes(16))).encryptor()
    return (encryptor.update(message) + encryptor.finalize())[-16:]


EDGE = [b"", b"\x00", b"a", b"a\x00", b"x" * 7, b"x" * 8, b"x" * 9, b"y" * 24, b"z" * 40, b"w" * LONG_ITEM,
        b"w" * (LONG_ITEM + 1), b"v" * 5000, "身份证".encode()]


def test_matches_per_item_cbc_mac_on_edge_lengths():
    got = keyed_digests(EDGE, KEY)
    assert got.shape == (len(EDGE), 16) and got.dtype == np.uint8
    assert [bytes(row) for row in got] == [_reference(x) for x in EDGE]


@settings(max_examples=30, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=40), st.integers(1, 7))
def test_matches_the_reference_for_any_batch_and_chunking(items, chunk):
    got = keyed_digests(items, KEY, chunk=chunk)
    assert [bytes(row) for row in got] == [_reference(x) for x in items]


def test_a_digest_depends_on_the_item_alone():
    """Padding to the batch's longest item must not leak into the digest: the same item hashes
    the same in a batch of short items, of long items, and alone (the two parties' batches differ)."""
    item = b"customer-42"
    alone = bytes(keyed_digests([item], KEY)[0])
    with_long = bytes(keyed_digests([b"q" * 100, item, b"r" * 300], KEY)[1])
    with_short = bytes(keyed_digests([b"", item, b"s"], KEY)[1])
    assert alone == with_long == with_short


def test_encoding_is_injective_where_padding_could_confuse_it():
    trailing = keyed_digests([b"a", b"a\x00", b"a\x00\x00"], KEY)
    assert len({bytes(r) for r in trailing}) == 3
    long = b"L" * (LONG_ITEM + 10)
    pre = hashlib.blake2b(long, digest_size=32, person=b"psiq-long-item").digest()
    pair = keyed_digests([long, pre], KEY)  # the long item's body equals this short item
    assert bytes(pair[0]) != bytes(pair[1])


def test_key_matters_and_must_be_16_bytes():
    assert bytes(keyed_digests([b"a"], KEY)[0]) != bytes(keyed_digests([b"a"], bytes(16))[0])
    with pytest.raises(ValueError):
        keyed_digests([b"a"], bytes(32))
    assert keyed_digests([], KEY).shape == (0, 16)
