"""The generated PPCA protobuf modules match the .proto files, and carry the spec's names."""

from __future__ import annotations

import subprocess
import sys

import pytest

from .conftest import ROOT

pytest.importorskip("google.protobuf", reason="psiq[interop] (protobuf) not installed")


def test_regenerating_changes_nothing() -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools (code generation only) not installed")
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "gen_ppca_protos.py"), "--check"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_wire_names_are_the_specs() -> None:
    from psi.interop.ppca._pb import ecc_pb2, ecdh_psi_pb2, entry_pb2, transport_pb2

    assert entry_pb2.HandshakeRequest.DESCRIPTOR.full_name == "org.interconnection.v2.HandshakeRequest"
    assert ecc_pb2.EccProtocolProposal.DESCRIPTOR.full_name == "org.interconnection.v2.protocol.EccProtocolProposal"
    assert ecdh_psi_pb2.EcdhPsiCipherBatch.DESCRIPTOR.fields_by_name["ciphertext"].number == 7
    assert transport_pb2.DESCRIPTOR.services_by_name["ReceiverService"].full_name == \
        "org.interconnection.link.ReceiverService"
