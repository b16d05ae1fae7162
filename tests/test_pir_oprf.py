"""OPRF(ristretto255, SHA-512) against RFC 9497 Appendix A.1.1, and element validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import rbcl

from pir import oprf
from psi.errors import MalformedMessage

VECTORS = json.loads((Path(__file__).parent / "vectors" / "rfc9497_ristretto255_sha512_oprf.json").read_text())


def test_derive_key_pair_matches_rfc() -> None:
    key = oprf.derive_key_pair(bytes.fromhex(VECTORS["Seed"]), bytes.fromhex(VECTORS["KeyInfo"]))
    assert key.hex() == VECTORS["skSm"]


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: v["name"])
def test_rfc9497_vectors(vector: dict) -> None:
    key = bytes.fromhex(VECTORS["skSm"])
    message = bytes.fromhex(vector["Input"])
    blind, blinded = oprf.blind(message, bytes.fromhex(vector["Blind"]))
    assert blinded.hex() == vector["BlindedElement"]
    evaluated = oprf.blind_evaluate(key, blinded)
    assert evaluated.hex() == vector["EvaluationElement"]
    assert oprf.finalize(message, blind, evaluated).hex() == vector["Output"]
    assert oprf.evaluate(key, message).hex() == vector["Output"]


def test_blinding_is_fresh_and_output_stable() -> None:
    key = oprf.generate_key()
    (r1, b1), (r2, b2) = oprf.blind(b"id"), oprf.blind(b"id")
    assert b1 != b2 and r1 != r2
    assert oprf.finalize(b"id", r1, oprf.blind_evaluate(key, b1)) == oprf.finalize(b"id", r2, oprf.blind_evaluate(key, b2))


@pytest.mark.parametrize(
    "element",
    [bytes(32), bytes(31), bytes(33), b"\xff" * 32, (1).to_bytes(32, "little"), b"\x01" + bytes(31)],
    ids=["identity", "short", "long", "non-canonical", "not-a-point", "odd"],
)
def test_invalid_elements_rejected(element: bytes) -> None:
    if len(element) == 32 and element != bytes(32) and rbcl.crypto_core_ristretto255_is_valid_point(element):
        pytest.skip("happens to be valid")
    with pytest.raises(MalformedMessage):
        oprf.blind_evaluate(oprf.generate_key(), element)
    with pytest.raises(MalformedMessage):
        oprf.finalize(b"x", oprf.random_scalar(), element)


def test_expand_message_xmd_rfc9380_vector() -> None:
    # RFC 9380 Appendix K.3 (expand_message_xmd, SHA-512), msg = "", len_in_bytes = 0x20
    dst = b"QUUX-V01-CS02-with-expander-SHA512-256"
    out = oprf.expand_message_xmd(b"", dst, 0x20)
    assert out.hex() == "6b9a7312411d92f921c6f68ca0b6380730a1a4d982c507211a90964c394179ba"
