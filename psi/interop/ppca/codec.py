"""PPCA messages <-> psiq values, with every check a receiver must make.

Parsing is not validation: protobuf fills defaults and keeps unknown fields, so each
``parse_*`` function here checks what the protocol relies on (message kind, types, counts,
lengths, sequence) and raises :class:`~psi.errors.MalformedMessage` (exit 4) or, for a peer
that speaks another version or parameter set, :class:`~psi.errors.IncompatiblePeer` (exit 5).
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf import any_pb2
from google.protobuf.message import DecodeError

from ...errors import IncompatiblePeer, MalformedMessage
from ._pb import ecc_pb2, ecdh_psi_pb2, entry_pb2, header_pb2, psi_pb2
from .suite import Suite, describe_triple

__all__ = [
    "HANDSHAKE_VERSION",
    "ALGO_ECDH_PSI",
    "FAMILY_ECC",
    "Proposal",
    "Agreement",
    "CipherBatch",
    "encode_request",
    "parse_request",
    "encode_response",
    "encode_refusal",
    "parse_response",
    "encode_batch",
    "parse_batch",
    "looks_like_handshake",
]

HANDSHAKE_VERSION = 2
ALGO_ECDH_PSI = 1
FAMILY_ECC = 1
ECC_VERSION = 1
IO_VERSION = 1

OK = header_pb2.OK
HANDSHAKE_REFUSED = header_pb2.HANDSHAKE_REFUSED
UNSUPPORTED_VERSION = header_pb2.UNSUPPORTED_VERSION
UNSUPPORTED_ALGO = header_pb2.UNSUPPORTED_ALGO
UNSUPPORTED_PARAMS = header_pb2.UNSUPPORTED_PARAMS
INVALID_REQUEST = header_pb2.INVALID_REQUEST

MAX_PROPOSED_SUITES = 64


@dataclass(frozen=True)
class Proposal:
    """What a requester (rank 1) offers."""

    requester_rank: int
    suites: list[tuple[int, int, int]]  # EcSuit triples in order of preference
    point_formats: list[int]
    truncation: bool
    item_count: int
    result_to: int

    def describe(self) -> str:
        return ", ".join(describe_triple(*t) for t in self.suites) or "no suites"


@dataclass(frozen=True)
class Agreement:
    """What the responder (rank 0) chose."""

    suite: Suite
    truncation_bits: int  # -1: none
    result_to: int
    peer_item_count: int | None  # the requester's declared item count (rank 0 only)


@dataclass(frozen=True)
class CipherBatch:
    kind: str  # "enc" | "dual.enc"
    index: int
    last: bool
    count: int
    data: bytes


class HandshakeRefused(IncompatiblePeer):
    """Rank 0 refused this side's proposal (or this side refused the peer's); carries the code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _any(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _unpack(packed: any_pb2.Any, cls: type, what: str):
    msg = cls()
    if not packed.Unpack(msg):
        raise MalformedMessage(f"handshake: {what} has type {packed.type_url!r}, expected {cls.DESCRIPTOR.full_name}")
    return msg


def _parse(cls: type, data: bytes, what: str):
    msg = cls()
    try:
        msg.ParseFromString(data)
    except (DecodeError, ValueError) as err:
        raise MalformedMessage(f"{what}: not a valid protobuf message ({err})") from None
    return msg


def looks_like_handshake(data: bytes) -> bool:
    """True when ``data`` starts like a HandshakeRequest (field 1 varint) rather than a
    cipher batch (field 1 string): lets rank 0 name a missing or unexpected handshake."""
    return bool(data) and data[0] == 0x08


# -- handshake ------------------------------------------------------------------------------------
def encode_request(rank: int, suites: list[Suite], item_count: int, result_to: int) -> bytes:
    proposal = ecc_pb2.EccProtocolProposal(
        supported_versions=[ECC_VERSION],
        ec_suits=[ecc_pb2.EcSuit(curve=s.curve, hash=s.hash, hash2curve_strategy=s.hash2curve) for s in suites],
        point_octet_formats=sorted({s.point_format for s in suites}),
        support_point_truncation=True,
    )
    io = psi_pb2.PsiDataIoProposal(supported_versions=[IO_VERSION], item_num=item_count, result_to_rank=result_to)
    request = entry_pb2.HandshakeRequest(
        version=HANDSHAKE_VERSION, requester_rank=rank, supported_algos=[ALGO_ECDH_PSI],
        protocol_families=[FAMILY_ECC], protocol_family_params=[_any(proposal)], io_param=_any(io))
    return request.SerializeToString()


def parse_request(data: bytes, peer_rank: int) -> Proposal:
    """Check a HandshakeRequest; raise HandshakeRefused (with the code to answer) when it
    asks for what psiq cannot do, MalformedMessage when it is not a request at all."""
    version = _parse(entry_pb2.HandshakeVersionCheckHelper, data, "handshake request").version
    if version != HANDSHAKE_VERSION:
        raise HandshakeRefused(f"peer's handshake version {version}, psiq speaks {HANDSHAKE_VERSION}",
                               UNSUPPORTED_VERSION)
    request = _parse(entry_pb2.HandshakeRequest, data, "handshake request")
    if request.requester_rank != peer_rank:
        raise MalformedMessage(f"handshake request from rank {request.requester_rank}, expected {peer_rank}")
    if ALGO_ECDH_PSI not in request.supported_algos:
        raise HandshakeRefused(f"peer proposes algorithms {list(request.supported_algos)}, psiq offers ECDH-PSI (1)",
                               UNSUPPORTED_ALGO)
    families = list(request.protocol_families)
    if len(families) != len(request.protocol_family_params) or FAMILY_ECC not in families:
        raise HandshakeRefused("peer proposes no ECC protocol family parameters", UNSUPPORTED_PARAMS)
    ecc = _unpack(request.protocol_family_params[families.index(FAMILY_ECC)], ecc_pb2.EccProtocolProposal,
                  "ECC proposal")
    if len(ecc.ec_suits) > MAX_PROPOSED_SUITES:
        raise MalformedMessage(f"handshake proposes {len(ecc.ec_suits)} suites (cap {MAX_PROPOSED_SUITES})")
    if ecc.supported_versions and ECC_VERSION not in ecc.supported_versions:
        raise HandshakeRefused(f"peer's ECC protocol versions {list(ecc.supported_versions)}, psiq speaks 1",
                               UNSUPPORTED_VERSION)
    if not request.HasField("io_param"):
        raise HandshakeRefused("handshake request has no PSI data-IO proposal", UNSUPPORTED_PARAMS)
    io = _unpack(request.io_param, psi_pb2.PsiDataIoProposal, "data-IO proposal")
    if io.item_num < 0:
        raise MalformedMessage(f"handshake declares {io.item_num} items")
    if io.result_to_rank not in (-1, 0, 1):
        raise HandshakeRefused(f"result_to_rank {io.result_to_rank} is not -1, 0 or 1", UNSUPPORTED_PARAMS)
    return Proposal(
        requester_rank=request.requester_rank,
        suites=[(s.curve, s.hash, s.hash2curve_strategy) for s in ecc.ec_suits],
        point_formats=list(ecc.point_octet_formats),
        truncation=ecc.support_point_truncation,
        item_count=io.item_num,
        result_to=io.result_to_rank,
    )


def encode_response(suite: Suite, truncation_bits: int, result_to: int, item_count: int) -> bytes:
    result = ecc_pb2.EccProtocolResult(
        version=ECC_VERSION,
        ec_suit=ecc_pb2.EcSuit(curve=suite.curve, hash=suite.hash, hash2curve_strategy=suite.hash2curve),
        point_octet_format=suite.point_format, bit_length_after_truncated=truncation_bits)
    # SecretFlow answers with a PsiDataIoProposal in io_param (not the ...Result the names suggest);
    # psiq does the same so either kind of requester can read it.
    io = psi_pb2.PsiDataIoProposal(supported_versions=[IO_VERSION], item_num=item_count, result_to_rank=result_to)
    response = entry_pb2.HandshakeResponse(
        header=header_pb2.ResponseHeader(error_code=OK), algo=ALGO_ECDH_PSI,
        protocol_families=[FAMILY_ECC], protocol_family_params=[_any(result)], io_param=_any(io))
    return response.SerializeToString()


def encode_refusal(code: int, message: str) -> bytes:
    response = entry_pb2.HandshakeResponse(header=header_pb2.ResponseHeader(error_code=code, error_msg=message))
    return response.SerializeToString()


def parse_response(data: bytes, offered: list[Suite], result_to: int) -> tuple[Suite, int]:
    """Check the responder's answer; returns (chosen suite, truncation bits)."""
    response = _parse(entry_pb2.HandshakeResponse, data, "handshake response")
    if response.header.error_code != OK:
        raise HandshakeRefused(f"peer refused the handshake: code {response.header.error_code}"
                               f" ({response.header.error_msg or 'no message'})", response.header.error_code)
    if response.algo != ALGO_ECDH_PSI:
        raise MalformedMessage(f"handshake response chose algorithm {response.algo}, psiq proposed ECDH-PSI (1)")
    families = list(response.protocol_families)
    if families != [FAMILY_ECC] or len(response.protocol_family_params) != 1:
        raise MalformedMessage(f"handshake response chose protocol families {families}, psiq proposed ECC (1)")
    ecc = _unpack(response.protocol_family_params[0], ecc_pb2.EccProtocolResult, "ECC result")
    chosen = (ecc.ec_suit.curve, ecc.ec_suit.hash, ecc.ec_suit.hash2curve_strategy)
    suite = next((s for s in offered if s.triple == chosen), None)
    if suite is None:
        raise MalformedMessage(f"handshake response chose {describe_triple(*chosen)}, which psiq did not propose")
    if ecc.point_octet_format != suite.point_format:
        raise MalformedMessage(f"handshake response chose point format {ecc.point_octet_format},"
                               f" psiq proposed {suite.point_format}")
    bits = ecc.bit_length_after_truncated
    if bits != -1 and not 64 <= bits <= 8 * suite.point_size:
        raise MalformedMessage(f"handshake response truncates to {bits} bits")
    if response.HasField("io_param"):
        io_result = _io_result_to(response.io_param)
        if io_result is not None and io_result != result_to:
            raise HandshakeRefused(f"peer answered result_to_rank {io_result}, psiq asked for {result_to}",
                                   UNSUPPORTED_PARAMS)
    return suite, bits


def _io_result_to(packed: any_pb2.Any) -> int | None:
    for cls in (psi_pb2.PsiDataIoProposal, psi_pb2.PsiDataIoResult):
        msg = cls()
        if packed.Is(cls.DESCRIPTOR):
            packed.Unpack(msg)
            return msg.result_to_rank
    raise MalformedMessage(f"handshake response io_param has type {packed.type_url!r}")


# -- batches --------------------------------------------------------------------------------------
def encode_batch(kind: str, index: int, last: bool, count: int, data: bytes) -> bytes:
    return ecdh_psi_pb2.EcdhPsiCipherBatch(type=kind, batch_index=index, is_last_batch=last, count=count,
                                           ciphertext=data).SerializeToString()


def parse_batch(data: bytes, kind: str, index: int, width: int, max_count: int) -> CipherBatch:
    """Parse and check one batch: its type, index, count (<= ``max_count``; 0 only when last)
    and ``len(ciphertext) == count * width``."""
    if looks_like_handshake(data):
        raise IncompatiblePeer("peer sent a handshake request where psiq expected a cipher batch;"
                               " run psiq without --no-handshake")
    msg = _parse(ecdh_psi_pb2.EcdhPsiCipherBatch, data, f"{kind} batch {index}")
    if msg.type != kind:
        raise MalformedMessage(f"batch {index}: type {msg.type!r}, expected {kind!r}")
    if msg.batch_index != index:
        raise MalformedMessage(f"{kind} batch: index {msg.batch_index}, expected {index}")
    if msg.count < 0 or msg.count > max_count:
        raise MalformedMessage(f"{kind} batch {index}: count {msg.count} out of range (at most {max_count})")
    if msg.count == 0 and not msg.is_last_batch:
        raise MalformedMessage(f"{kind} batch {index}: empty but not the last batch")
    if len(msg.ciphertext) != msg.count * width:
        raise MalformedMessage(f"{kind} batch {index}: {len(msg.ciphertext)} bytes for {msg.count} values"
                               f" of {width} bytes")
    return CipherBatch(msg.type, msg.batch_index, msg.is_last_batch, msg.count, msg.ciphertext)
