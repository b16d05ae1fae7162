"""SM2 through the system's OpenSSL libcrypto (``libcrypto.so.3``), loaded with :mod:`ctypes`.

Two services, both optional at run time (:func:`available` says whether they can be used):

* **Scalar multiplication of arbitrary SM2 points** in batches (:func:`multiply_x_batch`,
  :func:`multiply_points_batch`): one call per batch; the EC_GROUP, BN_CTX, scalar and the two
  EC_POINTs are made once per thread and reused, each element costs three ctypes calls
  (``EC_POINT_oct2point``, ``EC_POINT_mul``, ``EC_POINT_point2oct``). ``EC_POINT_mul`` with one
  point and no generator term runs OpenSSL's Montgomery ladder (``ossl_ec_scalar_mul_ladder``),
  which is OpenSSL's constant-time path; the scalar's BIGNUM carries ``BN_FLG_CONSTTIME`` and is
  cleared after each batch. ``oct2point`` rejects encodings that are not on the curve or not
  reduced (x >= p); the identity has no 32/33-byte encoding, so it cannot be submitted.
* **SM2 signatures** (GB/T 32918.2) through EVP: :class:`Sm2PrivateKey` / :class:`Sm2PublicKey`
  sign and verify with SM3 and a distinguishing ID (default ``"1234567812345678"``), i.e.
  ``e = SM3(Z_A || M)`` with ``Z_A = SM3(ENTL || ID || a || b || xG || yG || xA || yA)``
  computed by OpenSSL (``EVP_PKEY_CTX_set1_id`` + ``EVP_DigestSign``/``EVP_DigestVerify``).
  Keys are PEM (PKCS#8 private keys, SubjectPublicKeyInfo public keys; a public key may also be
  read out of a PEM certificate).

Choice by measurement (``bench/bench_sm2.py``, n = 200 random points, 3 interleaved rounds,
best round, under ``flock /work/wt/bench.lock`` on the shared 2-core machine, load average 6.0,
OpenSSL 3.0.19), µs per operation, wall / CPU: OpenSSL ladder 592 / 449, psiq's gmpy2 window
code 753 / 662 (both including the point decompression); SM2 sign 996 / 546, verify 777 / 708
(EVP context set up per call). So OpenSSL is both constant time and about 1.5x cheaper in
CPU: it is used whenever libcrypto loads; the gmpy2 code in :mod:`psi.crypto.sm2` (not
constant time) is the fallback and the second implementation the tests compare against.

Loading: ``PSIQ_LIBCRYPTO`` (a path) wins; else ``ctypes.util.find_library("crypto")``, then
the usual sonames ``libcrypto.so.3``. Only OpenSSL 3.x is accepted (the EVP calls used here
are 3.0 API). A failure raises :class:`LibcryptoUnavailable` with the reason, once per process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import os
import sys
import threading
from typing import Sequence

from ..errors import MalformedMessage, PsiqError

__all__ = [
    "LibcryptoUnavailable",
    "DEFAULT_ID",
    "available",
    "load",
    "version",
    "multiply_x_batch",
    "multiply_points_batch",
    "Sm2PrivateKey",
    "Sm2PublicKey",
    "der_to_raw",
    "raw_to_der",
]

DEFAULT_ID = b"1234567812345678"
_NID_SM2 = 1172
_BN_FLG_CONSTTIME = 0x04
_COMPRESSED = 2
_UNCOMPRESSED = 4
_P = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFF
_N = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFF7203DF6B21C6052B53BBF40939D54123


class LibcryptoUnavailable(PsiqError):
    """OpenSSL's libcrypto (3.x) could not be loaded; the message says why."""

    exit_code = 2


_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_error: str | None = None
_vp, _cp, _int, _sz = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_size_t

_SIGNATURES: dict[str, tuple[object, list[object]]] = {
    "OpenSSL_version_num": (ctypes.c_ulong, []),
    "ERR_clear_error": (None, []),
    "EC_GROUP_new_by_curve_name": (_vp, [_int]),
    "EC_GROUP_free": (None, [_vp]),
    "EC_POINT_new": (_vp, [_vp]),
    "EC_POINT_free": (None, [_vp]),
    "EC_POINT_oct2point": (_int, [_vp, _vp, _cp, _sz, _vp]),
    "EC_POINT_point2oct": (_sz, [_vp, _vp, _int, _cp, _sz, _vp]),
    "EC_POINT_mul": (_int, [_vp, _vp, _vp, _vp, _vp, _vp]),
    "EC_POINT_is_at_infinity": (_int, [_vp, _vp]),
    "BN_CTX_new": (_vp, []),
    "BN_CTX_free": (None, [_vp]),
    "BN_new": (_vp, []),
    "BN_clear_free": (None, [_vp]),
    "BN_clear": (None, [_vp]),
    "BN_bin2bn": (_vp, [_cp, _int, _vp]),
    "BN_set_flags": (None, [_vp, _int]),
    "BIO_new_mem_buf": (_vp, [_cp, _int]),
    "BIO_new": (_vp, [_vp]),
    "BIO_s_mem": (_vp, []),
    "BIO_free": (_int, [_vp]),
    "BIO_ctrl": (ctypes.c_long, [_vp, _int, ctypes.c_long, _vp]),
    "PEM_read_bio_PrivateKey": (_vp, [_vp, _vp, _vp, _vp]),
    "PEM_read_bio_PUBKEY": (_vp, [_vp, _vp, _vp, _vp]),
    "PEM_read_bio_X509": (_vp, [_vp, _vp, _vp, _vp]),
    "PEM_write_bio_PrivateKey": (_int, [_vp, _vp, _vp, _vp, _int, _vp, _vp]),
    "PEM_write_bio_PUBKEY": (_int, [_vp, _vp]),
    "X509_get_pubkey": (_vp, [_vp]),
    "X509_free": (None, [_vp]),
    "EVP_PKEY_free": (None, [_vp]),
    "EVP_PKEY_is_a": (_int, [_vp, _cp]),
    "EVP_PKEY_CTX_new_from_name": (_vp, [_vp, _cp, _cp]),
    "EVP_PKEY_CTX_new_from_pkey": (_vp, [_vp, _vp, _cp]),
    "EVP_PKEY_CTX_free": (None, [_vp]),
    "EVP_PKEY_keygen_init": (_int, [_vp]),
    "EVP_PKEY_generate": (_int, [_vp, ctypes.POINTER(_vp)]),
    "EVP_PKEY_CTX_set1_id": (_int, [_vp, _cp, _int]),
    "EVP_PKEY_get_octet_string_param": (_int, [_vp, _cp, _cp, _sz, ctypes.POINTER(_sz)]),
    "EVP_MD_CTX_new": (_vp, []),
    "EVP_MD_CTX_free": (None, [_vp]),
    "EVP_MD_CTX_set_pkey_ctx": (None, [_vp, _vp]),
    "EVP_MD_fetch": (_vp, [_vp, _cp, _cp]),
    "EVP_MD_free": (None, [_vp]),
    "EVP_DigestSignInit": (_int, [_vp, _vp, _vp, _vp, _vp]),
    "EVP_DigestSign": (_int, [_vp, _cp, ctypes.POINTER(_sz), _cp, _sz]),
    "EVP_DigestVerifyInit": (_int, [_vp, _vp, _vp, _vp, _vp]),
    "EVP_DigestVerify": (_int, [_vp, _cp, _sz, _cp, _sz]),
}


def _candidates() -> list[str]:
    explicit = os.environ.get("PSIQ_LIBCRYPTO")
    if explicit:
        return [explicit]
    if sys.platform == "darwin":  # the system's unversioned libcrypto aborts the process on load
        return ["libcrypto.3.dylib"]
    names = []
    found = ctypes.util.find_library("crypto")
    if found:
        names.append(found)
    names += ["libcrypto.so.3", "libcrypto.3.dylib", "libcrypto-3-x64.dll"]
    return list(dict.fromkeys(names))


def open_library() -> ctypes.CDLL:
    """Open and bind a libcrypto 3.x now (no caching: ``PSIQ_LIBCRYPTO`` is read on every call).

    Raises :class:`LibcryptoUnavailable` naming every candidate tried. :func:`load` is the cached
    form; other modules that need their own symbols (``psi.crypto.backends.openssl_rsa``) open the
    library through this function so psiq looks for OpenSSL in one place.
    """
    reasons = []
    for name in _candidates():
        try:
            lib = ctypes.CDLL(name)
        except OSError as err:
            reasons.append(f"{name}: {err}")
            continue
        try:
            for symbol, (restype, argtypes) in _SIGNATURES.items():
                function = getattr(lib, symbol)
                function.restype, function.argtypes = restype, argtypes
        except AttributeError as err:
            reasons.append(f"{name}: missing {err}")
            continue
        number = lib.OpenSSL_version_num()
        if number >> 28 != 3:
            reasons.append(f"{name}: OpenSSL {number:#x} is not 3.x")
            continue
        return lib
    raise LibcryptoUnavailable("OpenSSL libcrypto 3.x not found (" + "; ".join(reasons or ["no candidates"]) +
                               "); install the system's OpenSSL 3 (e.g. apt install libssl3) or set PSIQ_LIBCRYPTO to its path")


def load() -> ctypes.CDLL:
    """The loaded libcrypto (3.x), bound once per process; :class:`LibcryptoUnavailable` if not."""
    global _lib, _error
    if _lib is not None:
        return _lib
    with _lock:
        if _lib is not None:
            return _lib
        if _error is not None:
            raise LibcryptoUnavailable(_error)
        try:
            _lib = open_library()
        except LibcryptoUnavailable as err:
            _error = str(err)
            raise
        return _lib


def available() -> bool:
    """True when libcrypto 3.x loads (the SM2 fast path and signatures can be used)."""
    try:
        load()
    except LibcryptoUnavailable:
        return False
    return True


def version() -> str:
    """OpenSSL's version as ``3.0.19`` (from ``OpenSSL_version_num``)."""
    number = load().OpenSSL_version_num()
    return f"{number >> 28}.{(number >> 20) & 0xFF}.{(number >> 4) & 0xFF}"


# -- scalar multiplication ------------------------------------------------------------------------
class _Curve(threading.local):
    """Per-thread OpenSSL objects for SM2 (made on first use, kept for the thread's life)."""

    ready = False

    def setup(self) -> "_Curve":
        lib = load()
        self.lib = lib
        self.group = lib.EC_GROUP_new_by_curve_name(_NID_SM2)
        self.ctx = lib.BN_CTX_new()
        self.point_in = lib.EC_POINT_new(self.group)
        self.point_out = lib.EC_POINT_new(self.group)
        self.scalar = lib.BN_new()
        if not all((self.group, self.ctx, self.point_in, self.point_out, self.scalar)):
            raise LibcryptoUnavailable("libcrypto could not set up the SM2 curve (no SM2 in this OpenSSL build?)")
        lib.BN_set_flags(self.scalar, _BN_FLG_CONSTTIME)
        self.out = ctypes.create_string_buffer(65)
        self.ready = True
        return self


_curve = _Curve()


def _context() -> _Curve:
    return _curve if _curve.ready else _curve.setup()


def _set_scalar(curve: _Curve, scalar: bytes) -> None:
    if len(scalar) != 32 or not 0 < int.from_bytes(scalar, "big") < _N:
        raise ValueError("an SM2 scalar is 32 bytes big-endian in [1, n-1]")
    if not curve.lib.BN_bin2bn(scalar, 32, curve.scalar):
        raise MemoryError("BN_bin2bn failed")


def _multiply_encoded(curve: _Curve, encoded: bytes, form: int) -> bytes:
    """``scalar * point`` for one SEC 1 encoding (already length-checked), re-encoded in ``form``."""
    lib = curve.lib
    if not lib.EC_POINT_oct2point(curve.group, curve.point_in, encoded, len(encoded), curve.ctx):
        lib.ERR_clear_error()
        raise MalformedMessage("SM2 point: not on the curve or not a canonical encoding")
    if not lib.EC_POINT_mul(curve.group, curve.point_out, None, curve.point_in, curve.scalar, curve.ctx):
        lib.ERR_clear_error()
        raise MalformedMessage("SM2 multiplication failed")
    if lib.EC_POINT_is_at_infinity(curve.group, curve.point_out):  # impossible for k in [1, n)
        raise MalformedMessage("SM2 multiplication reached the identity")
    size = 33 if form == _COMPRESSED else 65
    if lib.EC_POINT_point2oct(curve.group, curve.point_out, form, curve.out, size, curve.ctx) != size:
        raise MalformedMessage("SM2 point encoding failed")
    return curve.out.raw[:size]


def multiply_x_batch(scalar: bytes, xs: Sequence[bytes]) -> list[bytes]:
    """The 32-byte x of ``scalar * P`` for each 32-byte big-endian x (standing for {P, -P}).

    Raises :class:`MalformedMessage` for an x that is not 32 bytes, not reduced (x >= p) or not
    the x of a curve point; ``ValueError`` for a scalar outside [1, n).
    """
    curve = _context()
    _set_scalar(curve, scalar)
    try:
        out = []
        for x in xs:
            if len(x) != 32:
                raise MalformedMessage(f"SM2 x-coordinate: {len(x)} bytes, expected 32")
            out.append(_multiply_encoded(curve, b"\x02" + bytes(x), _COMPRESSED)[1:])
        return out
    finally:
        curve.lib.BN_clear(curve.scalar)


def multiply_points_batch(scalar: bytes, points: Sequence[bytes], *, compressed: bool = True) -> list[bytes]:
    """``scalar * P`` for each SEC 1 point (33-byte ``02/03 || X`` or 65-byte ``04 || X || Y``),
    encoded compressed (33 bytes) or uncompressed (65). Same errors as :func:`multiply_x_batch`;
    hybrid (``06/07``) and identity (``00``) encodings are refused."""
    curve = _context()
    _set_scalar(curve, scalar)
    form = _COMPRESSED if compressed else _UNCOMPRESSED
    try:
        out = []
        for point in points:
            if not ((len(point) == 33 and point[0] in (2, 3)) or (len(point) == 65 and point[0] == 4)):
                raise MalformedMessage(f"SM2 point: not a compressed or uncompressed encoding ({len(point)} bytes)")
            out.append(_multiply_encoded(curve, bytes(point), form))
        return out
    finally:
        curve.lib.BN_clear(curve.scalar)


# -- signatures -----------------------------------------------------------------------------------
def _bio_from(data: bytes) -> int:
    bio = load().BIO_new_mem_buf(data, len(data))
    if not bio:
        raise MemoryError("BIO_new_mem_buf failed")
    return bio


def _bio_read_all(bio: int) -> bytes:
    lib = load()
    pointer = ctypes.c_char_p()
    length = lib.BIO_ctrl(bio, 3, 0, ctypes.byref(pointer))  # BIO_CTRL_INFO = BIO_get_mem_data
    return ctypes.string_at(pointer, length)


class _Key:
    """An EVP_PKEY holding an SM2 key (freed with the object)."""

    def __init__(self, pkey: int) -> None:
        lib = load()
        if not pkey:
            raise ValueError("no key")
        if not lib.EVP_PKEY_is_a(pkey, b"SM2"):
            lib.EVP_PKEY_free(pkey)
            raise ValueError("the key is not an SM2 key (curve SM2, OID 1.2.156.10197.1.301)")
        self._pkey = pkey

    def __del__(self) -> None:
        pkey, self._pkey = getattr(self, "_pkey", None), None
        if pkey and _lib is not None:
            _lib.EVP_PKEY_free(pkey)

    def public_point(self) -> bytes:
        """The public key as ``04 || X || Y`` (65 bytes)."""
        buffer, size = ctypes.create_string_buffer(65), ctypes.c_size_t()
        if not load().EVP_PKEY_get_octet_string_param(self._pkey, b"encoded-pub-key", buffer, 65, ctypes.byref(size)):
            raise ValueError("could not read the SM2 public key")
        return buffer.raw[: size.value]

    def fingerprint(self) -> str:
        """SHA-256 of the uncompressed public point, first 16 hex digits (for messages and logs)."""
        return hashlib.sha256(self.public_point()).hexdigest()[:16]

    def public_pem(self) -> bytes:
        lib = load()
        bio = lib.BIO_new(lib.BIO_s_mem())
        try:
            if not lib.PEM_write_bio_PUBKEY(bio, self._pkey):
                raise ValueError("could not write the SM2 public key")
            return _bio_read_all(bio)
        finally:
            lib.BIO_free(bio)

    def _md_ctx(self, distinguishing_id: bytes, sign: bool) -> tuple[int, int]:
        lib = load()
        pctx = lib.EVP_PKEY_CTX_new_from_pkey(None, self._pkey, None)
        mctx = lib.EVP_MD_CTX_new()
        if not pctx or not mctx:
            raise MemoryError("EVP context allocation failed")
        if lib.EVP_PKEY_CTX_set1_id(pctx, distinguishing_id, len(distinguishing_id)) <= 0:
            lib.EVP_PKEY_CTX_free(pctx)
            lib.EVP_MD_CTX_free(mctx)
            raise ValueError("could not set the SM2 distinguishing ID")
        lib.EVP_MD_CTX_set_pkey_ctx(mctx, pctx)  # mctx does not own pctx: both freed by the caller
        init = lib.EVP_DigestSignInit if sign else lib.EVP_DigestVerifyInit
        if init(mctx, None, _sm3(), None, self._pkey) != 1:
            lib.ERR_clear_error()
            lib.EVP_MD_CTX_free(mctx)
            lib.EVP_PKEY_CTX_free(pctx)
            raise ValueError("EVP_DigestSignInit/VerifyInit with SM3 failed")
        return mctx, pctx


_md_sm3: int | None = None


def _sm3() -> int:
    global _md_sm3
    if _md_sm3 is None:
        md = load().EVP_MD_fetch(None, b"SM3", None)
        if not md:
            raise LibcryptoUnavailable("this OpenSSL has no SM3 digest")
        _md_sm3 = md
    return _md_sm3


class Sm2PublicKey(_Key):
    """An SM2 public key that verifies GB/T 32918.2 signatures (SM3, distinguishing ID)."""

    @classmethod
    def from_pem(cls, data: bytes) -> "Sm2PublicKey":
        """Read a ``PUBLIC KEY`` PEM, or the public key of a ``CERTIFICATE`` PEM."""
        lib = load()
        bio = _bio_from(data)
        try:
            if b"-----BEGIN CERTIFICATE-----" in data:
                cert = lib.PEM_read_bio_X509(bio, None, None, None)
                if not cert:
                    lib.ERR_clear_error()
                    raise ValueError("not a readable PEM certificate")
                try:
                    pkey = lib.X509_get_pubkey(cert)
                finally:
                    lib.X509_free(cert)
            else:
                pkey = lib.PEM_read_bio_PUBKEY(bio, None, None, None)
            if not pkey:
                lib.ERR_clear_error()
                raise ValueError("not a PEM public key (-----BEGIN PUBLIC KEY-----) or certificate")
        finally:
            lib.BIO_free(bio)
        return cls(pkey)

    def verify(self, signature: bytes, message: bytes, distinguishing_id: bytes = DEFAULT_ID) -> bool:
        """True iff ``signature`` (DER ``SEQUENCE{r, s}``) is valid for ``message`` under this key."""
        lib = load()
        mctx, pctx = self._md_ctx(distinguishing_id, sign=False)
        try:
            ok = lib.EVP_DigestVerify(mctx, signature, len(signature), message, len(message)) == 1
            if not ok:
                lib.ERR_clear_error()
            return ok
        finally:
            lib.EVP_MD_CTX_free(mctx)
            lib.EVP_PKEY_CTX_free(pctx)


class Sm2PrivateKey(_Key):
    """An SM2 private key that signs per GB/T 32918.2 (SM3, distinguishing ID, fresh random k)."""

    @classmethod
    def generate(cls) -> "Sm2PrivateKey":
        lib = load()
        ctx = lib.EVP_PKEY_CTX_new_from_name(None, b"SM2", None)
        pkey = _vp()
        try:
            if not ctx or lib.EVP_PKEY_keygen_init(ctx) != 1 or lib.EVP_PKEY_generate(ctx, ctypes.byref(pkey)) != 1:
                lib.ERR_clear_error()
                raise LibcryptoUnavailable("this OpenSSL cannot generate SM2 keys")
        finally:
            lib.EVP_PKEY_CTX_free(ctx)
        return cls(pkey.value)

    @classmethod
    def from_pem(cls, data: bytes) -> "Sm2PrivateKey":
        """Read an unencrypted ``PRIVATE KEY`` (PKCS#8) or ``EC PRIVATE KEY`` (SEC 1) PEM."""
        lib = load()
        bio = _bio_from(data)
        try:
            pkey = lib.PEM_read_bio_PrivateKey(bio, None, None, b"")  # empty passphrase: encrypted keys fail
        finally:
            lib.BIO_free(bio)
        if not pkey:
            lib.ERR_clear_error()
            raise ValueError("not an unencrypted PEM private key")
        return cls(pkey)

    @classmethod
    def from_scalar(cls, scalar: int) -> "Sm2PrivateKey":
        """The key with private scalar ``d`` in [1, n-2] (known-answer tests)."""
        from . import sm2

        if not 0 < scalar < _N - 1:
            raise ValueError("an SM2 private key is in [1, n-2]")
        public = sm2.encode_uncompressed(sm2.multiply(scalar, sm2.G))
        oid = bytes.fromhex("06082a811ccf5501822d")  # 1.2.156.10197.1.301
        body = (b"\x02\x01\x01" + b"\x04\x20" + scalar.to_bytes(32, "big") + b"\xa0" + bytes([len(oid)]) + oid
                + b"\xa1\x44\x03\x42\x00" + public)
        der = b"\x30" + bytes([len(body)]) + body
        import base64

        pem = b"-----BEGIN EC PRIVATE KEY-----\n" + base64.encodebytes(der) + b"-----END EC PRIVATE KEY-----\n"
        return cls.from_pem(pem)

    def private_pem(self) -> bytes:
        """Unencrypted PKCS#8 PEM (store with mode 0600)."""
        lib = load()
        bio = lib.BIO_new(lib.BIO_s_mem())
        try:
            if not lib.PEM_write_bio_PrivateKey(bio, self._pkey, None, None, 0, None, None):
                raise ValueError("could not write the SM2 private key")
            return _bio_read_all(bio)
        finally:
            lib.BIO_free(bio)

    def public_key(self) -> Sm2PublicKey:
        return Sm2PublicKey.from_pem(self.public_pem())

    def sign(self, message: bytes, distinguishing_id: bytes = DEFAULT_ID) -> bytes:
        """A DER ``SEQUENCE{r, s}`` signature of ``message`` (randomised: OpenSSL draws k)."""
        lib = load()
        mctx, pctx = self._md_ctx(distinguishing_id, sign=True)
        try:
            size = ctypes.c_size_t(80)
            buffer = ctypes.create_string_buffer(80)
            if lib.EVP_DigestSign(mctx, buffer, ctypes.byref(size), message, len(message)) != 1:
                lib.ERR_clear_error()
                raise ValueError("SM2 signing failed")
            return buffer.raw[: size.value]
        finally:
            lib.EVP_MD_CTX_free(mctx)
            lib.EVP_PKEY_CTX_free(pctx)


# -- signature encodings --------------------------------------------------------------------------
def _der_integer(value: int) -> bytes:
    body = value.to_bytes((value.bit_length() + 8) // 8 or 1, "big")  # a leading 0 keeps it positive
    return b"\x02" + bytes([len(body)]) + body


def raw_to_der(raw: bytes) -> bytes:
    """``r || s`` (32 + 32 bytes) to DER ``SEQUENCE{INTEGER r, INTEGER s}``."""
    if len(raw) != 64:
        raise ValueError("a raw SM2 signature is 64 bytes")
    body = _der_integer(int.from_bytes(raw[:32], "big")) + _der_integer(int.from_bytes(raw[32:], "big"))
    return b"\x30" + bytes([len(body)]) + body


def der_to_raw(der: bytes) -> bytes:
    """DER ``SEQUENCE{r, s}`` (as OpenSSL writes it) to fixed ``r || s`` (64 bytes)."""
    if len(der) < 8 or der[0] != 0x30 or der[1] != len(der) - 2:
        raise ValueError("not a DER SM2 signature")
    values, offset = [], 2
    for _ in range(2):
        if der[offset] != 0x02:
            raise ValueError("not a DER SM2 signature")
        length = der[offset + 1]
        values.append(int.from_bytes(der[offset + 2 : offset + 2 + length], "big"))
        offset += 2 + length
    if offset != len(der) or not all(0 < v < _N for v in values):
        raise ValueError("not a DER SM2 signature")
    return values[0].to_bytes(32, "big") + values[1].to_bytes(32, "big")
