"""The ``mb`` backend: Intel's multi-buffer crypto library (``libcrypto_mb`` from ``ipp-crypto``).

``mbx_x25519_mb8`` runs eight X25519 ladders at once in AVX-512 IFMA. The library and its
compiler runtime come from two wheels (``pip install 'psiq[accel]'``: ``ipp-crypto`` and
``intel-cmplr-lib-rt``) that install their ``.so`` files into the environment's data directory
(``<venv>/lib``), not beside a Python package. :func:`load` finds them through the installed
distributions' file lists (``importlib.metadata``), never through ``LD_LIBRARY_PATH`` or
``ctypes.util.find_library``, preloads the runtime libraries globally in dependency order,
then opens ``libcrypto_mb`` and asks it whether it can run here
(``mbx_is_crypto_mb_applicable``: AVX-512 F/DQ/BW/IFMA/VBMI2 and OS support). A known-answer
test (RFC 7748 section 5.2) runs once before the backend is handed out.

``PSIQ_MB_LIBRARY`` names ``libcrypto_mb.so`` explicitly (runtime libraries are then looked for
beside it first); it exists for packagers and for testing a load failure.

Batches: one call computes 8 lanes. The whole batch is packed with numpy (inputs as one
``(lanes, 4)`` uint64 array, canonicalised the way OpenSSL reads a u-coordinate: top bit
masked, ``u >= p`` reduced), the pointer arrays for every group of 8 lanes are built at once
(base address + 32 * index), and the Python loop only makes the calls; a short last group is
padded with the base point. Every lane's 4-bit status is checked.

The same library's P-256 and SM2 ECDH (``mbx_nistp256_ecdh_mb8``, ``mbx_sm2_ecdh_mb8``) and RSA
(``mbx_rsa_private_crt_mb8``, ``mbx_rsa_public_mb8``) are bound too when it exports them
(:mod:`.ippmb_ops` holds their batching); each must reproduce a known answer against the portable
code at load, else it is dropped and that primitive stays on the portable path
(:attr:`MultiBufferBackend.disabled`). These were tested through fakes only: the machine they
were written on has no AVX-512 IFMA.
"""

from __future__ import annotations

import ctypes
import os
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from . import ippmb_ops
from ._base import BackendUnavailable, load_once

if TYPE_CHECKING:
    from .portable import PortableBackend

__all__ = ["MultiBufferBackend", "NotInstalled", "load", "LIBRARY_ENV"]

LIBRARY_ENV = "PSIQ_MB_LIBRARY"
_RUNTIME = ("libintlc.so.5", "libsvml.so", "libimf.so", "libirng.so")  # dependency order
_LIB_DIST, _RUNTIME_DIST = "ipp-crypto", "intel-cmplr-lib-rt"
_LIB_NAMES = ("libcrypto_mb.so", "libcrypto_mb.so.13")
_LANES = 8
_STATUS_LOW_ORDER = 4  # MBX_STATUS_LOW_ORDER_ERR
_MAX64 = np.uint64(2**64 - 1)
_TOP_MASK = np.uint64(2**63 - 1)
_P_LOW = np.uint64(2**64 - 19)
_BASE_POINT = np.array([9, 0, 0, 0], dtype="<u8")

# RFC 7748 section 5.2, first X25519 vector (scalar unclamped, as published).
_KAT = (
    "a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
    "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
    "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552",
)

X25519Mb8 = Callable[[int, int, int], int]

# Known answers for the optional functions: k * G on each curve, and a 1024-bit RSA test key
# (two random 512-bit primes made for this test; they protect nothing).
_KAT_EC_SCALAR = 0x5D1C5AA1F0D3B8E29A7C4E61B2F08D3C7A95E4D1C3B2A1908F7E6D5C4B3A2918
_KAT_RSA_P = int(
    "e3f204ab15e7576e65faf1ba0a67fc33edac5d774ab4b4711f244de6899c1f95"
    "2da3237378b1f57739d7d3ea6f73187f037ea90f10213d71ebc501697660c089", 16)
_KAT_RSA_Q = int(
    "d3d9506f06462442c5e5dd8f84bb0291947fd6cfad5b62773d7dc7415596412f"
    "aaa8ef9bd1a56d9405d6d4191e6701f622b10f9a48b032021200ad373133db0d", 16)


def _ec_reference(curve: str, k: int) -> bytes:
    """x(k * G), 32 bytes big-endian, from the portable code (``cryptography`` / gmpy2)."""
    if curve == "p256":
        from cryptography.hazmat.primitives.asymmetric import ec

        return ec.derive_private_key(k, ec.SECP256R1()).public_key().public_numbers().x.to_bytes(32, "big")
    from .. import sm2

    return sm2.multiply_x(k, sm2.G)


class NotInstalled(BackendUnavailable):
    """The ``accel`` extra is not installed (not worth a note: it is the default install)."""


def _dist_file(dist: str, names: Sequence[str]) -> Path | None:
    try:
        files = metadata.distribution(dist).files or []
    except metadata.PackageNotFoundError:
        return None
    found = {f.name: f for f in files if f.name in names}
    for name in names:
        if name in found:
            return Path(str(metadata.distribution(dist).locate_file(found[name]))).resolve()
    return None


def _locate() -> tuple[Path, list[Path]]:
    """(libcrypto_mb, runtime libraries in load order); raises :class:`NotInstalled`."""
    explicit = os.environ.get(LIBRARY_ENV)
    if explicit:
        library = Path(explicit)
        runtime = [library.parent / name for name in _RUNTIME]
        runtime = [p if p.exists() else _dist_file(_RUNTIME_DIST, (p.name,)) for p in runtime]
        return library, [p for p in runtime if p is not None]
    library = _dist_file(_LIB_DIST, _LIB_NAMES)
    if library is None:
        raise NotInstalled(f"{_LIB_DIST} is not installed (pip install 'psiq[accel]')")
    runtime = [_dist_file(_RUNTIME_DIST, (name,)) for name in _RUNTIME]
    missing = [name for name, p in zip(_RUNTIME, runtime) if p is None]
    if missing:
        raise BackendUnavailable(f"{_RUNTIME_DIST} does not provide {', '.join(missing)} (pip install 'psiq[accel]')")
    return library, [p for p in runtime if p is not None]


class _Version(ctypes.Structure):
    _fields_ = [
        ("major", ctypes.c_int),
        ("minor", ctypes.c_int),
        ("revision", ctypes.c_int),
        ("name", ctypes.c_char_p),
        ("build_date", ctypes.c_char_p),
        ("str_version", ctypes.c_char_p),
    ]


_OPTIONAL = {  # keyword of MultiBufferBackend -> (symbol, ctypes prototype)
    "p256": ("mbx_nistp256_ecdh_mb8", "EC_PROTO"),
    "sm2": ("mbx_sm2_ecdh_mb8", "EC_PROTO"),
    "rsa_crt": ("mbx_rsa_private_crt_mb8", "RSA_CRT_PROTO"),
    "rsa_pub": ("mbx_rsa_public_mb8", "RSA_PUB_PROTO"),
}


def _optional(lib: ctypes.CDLL) -> dict[str, Any]:
    """The library's P-256, SM2 and RSA functions that it exports (a missing one stays None)."""
    out: dict[str, Any] = {}
    for keyword, (symbol, proto) in _OPTIONAL.items():
        try:
            out[keyword] = getattr(ippmb_ops, proto)((symbol, lib))
        except AttributeError:
            out[keyword] = None
    return out


def _open() -> tuple[X25519Mb8, str, dict[str, Any]]:
    """Load the library, check it applies to this CPU; (mbx_x25519_mb8, version text, others)."""
    library, runtime = _locate()
    try:
        for path in runtime:
            ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
        lib = ctypes.CDLL(str(library))
        lib.mbx_get_cpu_features.restype = ctypes.c_uint64
        lib.mbx_get_cpu_features.argtypes = []
        lib.mbx_is_crypto_mb_applicable.restype = ctypes.c_int
        lib.mbx_is_crypto_mb_applicable.argtypes = [ctypes.c_uint64]
        lib.mbx_getversion.restype = ctypes.POINTER(_Version)
        lib.mbx_getversion.argtypes = []
        fn = lib.mbx_x25519_mb8
        fn.restype = ctypes.c_uint32
        fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    except (OSError, AttributeError) as err:
        raise BackendUnavailable(f"cannot load {library.name}: {err}") from None
    version = lib.mbx_getversion().contents.str_version.decode("ascii", "replace")
    features = lib.mbx_get_cpu_features()
    if not lib.mbx_is_crypto_mb_applicable(features):
        raise BackendUnavailable(
            f"this CPU lacks what {version} needs (AVX-512 IFMA; CPU features {features:#x})"
        )
    return fn, version, _optional(lib)


class MultiBufferBackend:
    """X25519 through ``mbx_x25519_mb8``; P-256 and SM2 ECDH and RSA's private (CRT) and public
    operations through the library's functions when given (each any callable with the C
    signature, for tests; a missing or self-test-failing one leaves that primitive on the
    portable path)."""

    name = "mb"

    def __init__(
        self,
        x25519_mb8: X25519Mb8,
        version: str,
        *,
        p256: Any = None,
        sm2: Any = None,
        rsa_crt: Any = None,
        rsa_pub: Any = None,
    ) -> None:
        self._x25519_mb8 = x25519_mb8
        self._version = version
        self._ec = {name: fn for name, fn in (("p256", p256), ("sm2", sm2)) if fn is not None}
        self._rsa_crt = rsa_crt
        self._rsa_pub = rsa_pub
        self._fallback: PortableBackend | None = None
        self.disabled: dict[str, str] = {}  # primitive -> why it runs on the portable path

    @property
    def ec_curves(self) -> tuple[str, ...]:
        """The curves :meth:`ec_x_many` computes here (``p256``, ``sm2``)."""
        return tuple(self._ec)

    def describe(self) -> dict[str, object]:
        portable = self._portable()
        out: dict[str, object] = {"x25519": f"{self._version} mbx_x25519_mb8"}
        for curve in ("p256", "sm2"):
            if curve in self._ec:
                out[curve] = f"{self._version} {_OPTIONAL[curve][0]}"
        rsa = str(portable.describe()["rsa_private"])
        out["rsa_private"] = f"{self._version} mbx_rsa_private_crt_mb8 (else {rsa})" if self._rsa_crt else rsa
        if self.disabled:
            out["disabled"] = dict(self.disabled)
        return out

    def ec_x_many(self, curve: str, scalar: bytes, xs: bytes, ys: bytes) -> bytes:
        """x(k * P) for affine points P = (x, y) on ``curve`` (32-byte big-endian each; valid
        points, checked by the caller); ``ValueError`` if the library finds one invalid."""
        return ippmb_ops.ec_x_many(self._ec[curve], curve, scalar, xs, ys)

    def rsa_public_many(self, n: int, e: int, blob: bytes) -> bytes:
        if self._rsa_pub is not None and e == 65537 and n.bit_length() in ippmb_ops.RSA_BITS:
            return ippmb_ops.rsa_public_many(self._rsa_pub, n, blob)
        return self._portable().rsa_public_many(n, e, blob)

    def _portable(self) -> "PortableBackend":
        if self._fallback is None:
            from .portable import PortableBackend

            self._fallback = PortableBackend()
        return self._fallback

    def rsa_private_many(self, params: Sequence[int], blob: bytes) -> bytes:
        if self._rsa_crt is not None and ippmb_ops.rsa_supported(params):
            return ippmb_ops.rsa_private_crt_many(self._rsa_crt, params, blob)
        return self._portable().rsa_private_many(params, blob)

    def self_test(self) -> None:
        """Raise :class:`BackendUnavailable` unless the RFC 7748 vector comes out right."""
        scalar, u, expected = (bytes.fromhex(h) for h in _KAT)
        try:
            got = self.x25519_many(scalar, [u] * 3)  # one call: 3 lanes used, 5 padded
        except (ValueError, RuntimeError) as err:
            raise BackendUnavailable(f"{self._version} self-test failed: {err}") from None
        if got != [expected] * 3:
            raise BackendUnavailable(f"{self._version} self-test failed: wrong X25519 result")

    def self_test_optional(self) -> None:
        """Known answers for P-256, SM2 and RSA (1024-bit test key) against the portable code;
        a function that fails is dropped (its primitive stays portable) and named in
        :attr:`disabled` (shown by :meth:`describe`)."""
        k = _KAT_EC_SCALAR
        for curve in list(self._ec):
            gx, gy = ippmb_ops.CURVES[curve]
            expected = _ec_reference(curve, k)
            try:
                got = self.ec_x_many(curve, k.to_bytes(32, "big"), gx.to_bytes(32, "big") * 3, gy.to_bytes(32, "big") * 3)
                ok = got == expected * 3
            except (ValueError, RuntimeError) as err:
                ok, got = False, str(err).encode()
            if not ok:
                del self._ec[curve]
                self.disabled[curve] = f"{_OPTIONAL[curve][0]} failed its self-test"
        p, q = _KAT_RSA_P, _KAT_RSA_Q
        n, e = p * q, 65537
        d = pow(e, -1, (p - 1) * (q - 1))
        ys = [2, n - 1, 0x0123456789ABCDEF << 500]
        blob = b"".join(y.to_bytes(128, "big") for y in ys)
        checks = (
            ("rsa_crt", lambda: self.rsa_private_many((n, e, p, q, d % (p - 1), d % (q - 1), pow(q, -1, p)), blob), d),
            ("rsa_pub", lambda: self.rsa_public_many(n, e, blob), e),
        )
        for attr, run, exponent in checks:
            if getattr(self, "_" + attr) is None:
                continue
            try:
                ok = run() == b"".join(pow(y, exponent, n).to_bytes(128, "big") for y in ys)
            except (ValueError, RuntimeError):
                ok = False
            if not ok:
                setattr(self, "_" + attr, None)
                self.disabled[attr] = f"{_OPTIONAL[attr][0]} failed its self-test"

    def x25519_many(self, scalar: bytes, elements: Sequence[bytes] | bytes) -> list[bytes]:
        if isinstance(elements, (bytes, bytearray, memoryview)):
            blob = bytes(elements)
        else:
            blob = b"".join(elements)
            if len(blob) != 32 * len(elements) or any(len(e) != 32 for e in elements):
                raise ValueError("an x25519 element is 32 bytes")
        if len(blob) % 32:
            raise ValueError("x25519 element buffer is not a whole number of 32-byte elements")
        if len(bytes(scalar)) != 32:
            raise ValueError("an x25519 scalar is 32 bytes")
        count = len(blob) // 32
        if count == 0:
            return []
        lanes = -(-count // _LANES) * _LANES
        points = np.empty((lanes, 4), dtype="<u8")
        points[:count] = np.frombuffer(blob, dtype="<u8").reshape(count, 4)
        points[count:] = _BASE_POINT
        _canonicalise(points)
        key = np.frombuffer(_clamp(bytes(scalar)), dtype=np.uint8).copy()
        out = np.zeros((lanes, 4), dtype="<u8")
        calls = lanes // _LANES
        offsets = np.arange(lanes, dtype=np.uint64) * np.uint64(32)
        in_ptrs = np.uint64(points.ctypes.data) + offsets  # one pointer per lane, 8 per call
        out_ptrs = np.uint64(out.ctypes.data) + offsets
        key_ptrs = np.full(_LANES, key.ctypes.data, dtype=np.uint64)
        row = np.arange(calls, dtype=np.uint64) * np.uint64(8 * _LANES)
        in_rows = (np.uint64(in_ptrs.ctypes.data) + row).tolist()
        out_rows = (np.uint64(out_ptrs.ctypes.data) + row).tolist()
        fn, key_row = self._x25519_mb8, key_ptrs.ctypes.data
        statuses = [fn(o, key_row, i) for o, i in zip(out_rows, in_rows)]
        if any(statuses):
            _check_statuses(statuses, count)
        if not out[:count].any(axis=1).all():
            raise ValueError("x25519 shared secret is all-zero (low-order input)")
        flat = out[:count].tobytes()
        return [flat[i : i + 32] for i in range(0, len(flat), 32)]


def _clamp(scalar: bytes) -> bytes:
    k = bytearray(scalar)
    k[0] &= 248
    k[31] &= 127
    k[31] |= 64
    return bytes(k)


def _canonicalise(points: np.ndarray) -> None:
    """Read each u as RFC 7748 says (top bit masked) and reduce u >= p = 2^255 - 19, in place."""
    points[:, 3] &= _TOP_MASK
    over = (points[:, 3] == _TOP_MASK) & (points[:, 1] == _MAX64) & (points[:, 2] == _MAX64) & (points[:, 0] >= _P_LOW)
    if over.any():
        low = points[over, 0] - _P_LOW
        points[over] = 0
        points[over, 0] = low


def _check_statuses(statuses: list[int], count: int) -> None:
    for call, status in enumerate(statuses):
        for lane in range(_LANES):
            code = (status >> (4 * lane)) & 0xF
            if code and call * _LANES + lane < count:
                if code == _STATUS_LOW_ORDER:
                    raise ValueError("x25519 shared secret is all-zero (low-order input)")
                raise RuntimeError(f"mbx_x25519_mb8 lane status {code:#x}")


_LOADED: dict[str, Any] = {}


def load() -> MultiBufferBackend:
    """The backend, loaded and self-tested once per process; raises :class:`BackendUnavailable`."""

    def build() -> MultiBufferBackend:
        fn, version, optional = _open()
        backend = MultiBufferBackend(fn, version, **optional)
        backend.self_test()
        backend.self_test_optional()
        return backend

    return load_once(_LOADED, "backend", build)
