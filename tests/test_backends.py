"""Compute backends: selection, fallback, batching, and byte-identical results across backends.

The ``mb`` backend's results are compared with the portable one on the RFC 7748 and Wycheproof
vectors and on random batches wherever Intel's multi-buffer library applies (``psiq[accel]`` on a
CPU with AVX-512 IFMA); elsewhere those tests skip and say why. The batching (pointer arrays,
padding, canonicalisation, per-lane statuses) is tested on every machine by giving
:class:`MultiBufferBackend` a C-callable fake of ``mbx_x25519_mb8`` that computes each lane with
the portable backend.
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import subprocess
from pathlib import Path

import pytest

from psi.crypto import backends
from psi.crypto.backends import ippmb
from psi.crypto.backends.portable import PortableBackend
from psi.crypto.groups import get_group, multiply_batch
from psi.errors import MalformedMessage, UsageError
from psi.parallel import Executor

from .conftest import psiq_cmd, subprocess_env, tls_args

VECTORS = Path(__file__).parent / "vectors"
PORTABLE = PortableBackend()
P = 2**255 - 19
RFC7748 = [  # section 5.2 (scalar, u, output) and section 6.1 (Alice's and Bob's shared secret)
    ("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
     "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
     "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552"),
    ("4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
     "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
     "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957"),
    ("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
     "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f",
     "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"),
]


def _mb_or_skip() -> ippmb.MultiBufferBackend:
    reason = backends.available()["mb"]
    if reason is not None:
        pytest.skip(f"multi-buffer backend not usable here: {reason}")
    return ippmb.load()


def _vectors() -> list[tuple[bytes, bytes, bytes | None]]:
    """(scalar, u, expected or None for 'all-zero: ValueError') from RFC 7748 and Wycheproof."""
    out = [(bytes.fromhex(k), bytes.fromhex(u), bytes.fromhex(s)) for k, u, s in RFC7748]
    for case in json.loads((VECTORS / "wycheproof_x25519.json").read_text())["tests"]:
        shared = bytes.fromhex(case["shared"])
        out.append((bytes.fromhex(case["private"]), bytes.fromhex(case["public"]), shared if any(shared) else None))
    return out


def _random_points(count: int) -> list[bytes]:
    return get_group("x25519").hash_to_group(b"psiq-test-backends", [secrets.token_bytes(8) for _ in range(count)])


def _assert_same_as_portable(backend: backends.Backend) -> None:
    for scalar, u, expected in _vectors():
        if expected is None:
            with pytest.raises(ValueError):
                PORTABLE.x25519_many(scalar, [u])
            with pytest.raises(ValueError):
                backend.x25519_many(scalar, [u])
            continue
        assert PORTABLE.x25519_many(scalar, [u]) == [expected]
        assert backend.x25519_many(scalar, [u]) == [expected], u.hex()
        assert backend.x25519_many(scalar, [u] * 9) == [expected] * 9  # two calls, last one padded
    for count in range(0, 18):
        scalar, points = secrets.token_bytes(32), _random_points(count)
        assert backend.x25519_many(scalar, points) == PORTABLE.x25519_many(scalar, points)
        assert backend.x25519_many(scalar, b"".join(points)) == PORTABLE.x25519_many(scalar, points)


# -- the real library, where it applies -------------------------------------------------------
def test_mb_is_byte_identical_to_portable() -> None:
    _assert_same_as_portable(_mb_or_skip())


def test_group_multiplication_identical_on_both_backends(monkeypatch: pytest.MonkeyPatch) -> None:
    mb = _mb_or_skip()
    group = get_group("x25519")
    scalar, points = group.generate_scalar(), _random_points(1000)
    monkeypatch.setattr(backends, "_selected", backends.Selection(mb, "mb"))
    with_mb = multiply_batch("x25519", scalar, b"".join(points))
    monkeypatch.setattr(backends, "_selected", backends.Selection(PORTABLE, "portable"))
    assert with_mb == multiply_batch("x25519", scalar, b"".join(points))


# -- the batching, with a fake mbx_x25519_mb8 -------------------------------------------------
_MB8 = ctypes.CFUNCTYPE(ctypes.c_uint32, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)


def _fake_mb8(calls: list[str], status: int = 0) -> "ctypes._CFuncPtr":
    """A C-callable mbx_x25519_mb8 that reads the 8 pointer triples and uses the portable backend.

    It logs "call" per call and a complaint for a lane whose scalar is not clamped or whose u is
    not canonical (an exception inside a ctypes callback would only be printed).
    """

    def mb8(out: int, keys: int, points: int) -> int:
        calls.append("call")
        outs = (ctypes.c_void_p * 8).from_address(out)
        ks = (ctypes.c_void_p * 8).from_address(keys)
        us = (ctypes.c_void_p * 8).from_address(points)
        for lane in range(8):
            k, u = ctypes.string_at(ks[lane], 32), ctypes.string_at(us[lane], 32)
            if not (k[0] & 7 == 0 and k[31] & 0xC0 == 0x40):
                calls.append("scalar not clamped")
            if int.from_bytes(u, "little") >= P:
                calls.append("u not canonical")
            try:
                (r,) = PORTABLE.x25519_many(k, [u])
            except ValueError:
                r = bytes(32)
            ctypes.memmove(outs[lane], r, 32)
        return status

    return _MB8(mb8)


def test_batching_with_fake_library_matches_portable() -> None:
    calls: list[str] = []
    fake = _fake_mb8(calls)
    backend = ippmb.MultiBufferBackend(fake, "fake")
    _assert_same_as_portable(backend)
    assert set(calls) == {"call"}  # every lane got a clamped scalar and a canonical u
    calls.clear()
    points = _random_points(17)
    backend.x25519_many(secrets.token_bytes(32), points)
    assert len(calls) == 3  # 17 lanes -> 3 calls of 8
    base, noncanonical = (9).to_bytes(32, "little"), (9 + P).to_bytes(32, "little")  # 9 + p < 2^255
    top = bytearray(points[1])
    top[31] |= 0x80
    scalar = secrets.token_bytes(32)
    assert PORTABLE.x25519_many(scalar, [noncanonical, bytes(top)]) == PORTABLE.x25519_many(scalar, [base, points[1]])
    assert backend.x25519_many(scalar, [noncanonical, bytes(top)]) == PORTABLE.x25519_many(scalar, [base, points[1]])
    assert set(calls) == {"call"}


def test_lane_status_is_checked() -> None:
    calls: list[str] = []
    points = _random_points(3)
    low_order = ippmb.MultiBufferBackend(_fake_mb8(calls, status=ippmb._STATUS_LOW_ORDER << 4), "fake")
    with pytest.raises(ValueError):  # lane 1 of 3 reported low order
        low_order.x25519_many(secrets.token_bytes(32), points)
    padded_only = ippmb.MultiBufferBackend(_fake_mb8(calls, status=0x2 << 28), "fake")
    assert len(padded_only.x25519_many(secrets.token_bytes(32), points)) == 3  # lane 7 is padding
    broken = ippmb.MultiBufferBackend(_fake_mb8(calls, status=0x2), "fake")
    with pytest.raises(RuntimeError, match="lane status"):
        broken.x25519_many(secrets.token_bytes(32), points)


def test_self_test_rejects_a_wrong_library() -> None:
    wrong = _MB8(lambda out, keys, points: 0)  # leaves the output zero
    with pytest.raises(backends.BackendUnavailable, match="self-test"):
        ippmb.MultiBufferBackend(wrong, "fake").self_test()
    ippmb.MultiBufferBackend(_fake_mb8([]), "fake").self_test()


def test_low_order_input_still_rejected_by_group_on_fake_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backends, "_selected", backends.Selection(ippmb.MultiBufferBackend(_fake_mb8([]), "fake"), "mb"))
    scalar = get_group("x25519").generate_scalar()
    with pytest.raises(MalformedMessage, match="identity"):
        get_group("x25519").multiply_own(scalar, [bytes(32)])  # own elements skip validation
    with pytest.raises(MalformedMessage, match="low-order"):
        multiply_batch("x25519", scalar, [(1).to_bytes(32, "little")])


# -- selection ---------------------------------------------------------------------------------
@pytest.fixture
def fresh_selection(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(backends, "_selected", None)
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    yield monkeypatch


def test_auto_falls_back_with_a_note_when_the_library_fails(fresh_selection: pytest.MonkeyPatch) -> None:
    def fail() -> None:
        raise backends.BackendUnavailable("cannot load libcrypto_mb.so: simulated")

    fresh_selection.setattr(backends, "_load_mb", fail)
    sel = backends.select("auto")
    assert sel.backend.name == "portable" and "simulated" in (sel.note or "")
    assert backends.describe()["note"] == sel.note
    with pytest.raises(UsageError, match="not available here: cannot load"):
        backends.select("mb")
    assert backends.available()["mb"] == "cannot load libcrypto_mb.so: simulated"


def test_auto_is_silent_without_the_extra(fresh_selection: pytest.MonkeyPatch) -> None:
    def absent() -> None:
        raise ippmb.NotInstalled("ipp-crypto is not installed")

    fresh_selection.setattr(backends, "_load_mb", absent)
    sel = backends.select()
    assert sel.backend.name == "portable" and sel.note is None and sel.requested == "auto"


def test_auto_prefers_mb_and_names_are_checked(fresh_selection: pytest.MonkeyPatch) -> None:
    fake = ippmb.MultiBufferBackend(_fake_mb8([]), "fake")
    fresh_selection.setattr(backends, "_load_mb", lambda: fake)
    assert backends.select().backend is fake and backends.current() is fake
    assert backends.select("portable").backend.name == "portable"
    fresh_selection.setenv(backends.ENV_VAR, "MB")
    assert backends.select().backend is fake
    with pytest.raises(UsageError, match="unknown backend"):
        backends.select("gpu")


def _backend_in_worker(_: object) -> tuple[str, str]:
    d = backends.describe()
    return str(d["name"]), str(d["requested"])


def test_workers_follow_the_parents_choice(fresh_selection: pytest.MonkeyPatch) -> None:
    fresh_selection.setenv("PSIQ_START_METHOD", "spawn")  # nothing inherited but the environment
    backends.select("portable", export=True)
    assert os.environ[backends.ENV_VAR] == "portable"
    with Executor(workers=2) as ex:
        assert ex.map(_backend_in_worker, [1, 2]) == [("portable", "portable")] * 2


# -- the command line: a library that fails to load --------------------------------------------
def _run(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    full = {**subprocess_env(), **env}
    full.pop(backends.ENV_VAR, None)
    return subprocess.run(psiq_cmd() + args, capture_output=True, text=True, env=full, timeout=120)


def test_cli_load_failure_falls_back_with_one_note(tmp_path: Path) -> None:
    bogus = tmp_path / "libcrypto_mb.so"
    bogus.write_bytes(b"not a shared library")
    done = _run(["--version"], PSIQ_MB_LIBRARY=str(bogus))
    assert done.returncode == 0, done.stderr
    assert "backend: portable (requested auto)" in done.stdout
    notes = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(notes) == 1 and notes[0].startswith("psiq: note: multi-buffer backend unavailable"), done.stderr
    explicit = _run(["--backend", "mb", "--version"], PSIQ_MB_LIBRARY=str(bogus))
    assert explicit.returncode == 2 and explicit.stderr.startswith("psiq: error: backend 'mb' is not available here")
    assert len(explicit.stderr.strip().splitlines()) == 1, explicit.stderr
    portable = _run(["--backend", "portable", "--version"], PSIQ_MB_LIBRARY=str(bogus))
    assert portable.returncode == 0 and portable.stderr == "" and "requested portable" in portable.stdout


@pytest.mark.e2e
def test_session_json_names_the_backend_and_the_note(tmp_path: Path, pki: Path) -> None:
    from psiq_datasets.generate import generate

    generate(tmp_path, rows=300, overlap=0.5, seed=3, blacklist_rows=10)
    bogus = tmp_path / "libcrypto_mb.so"
    bogus.write_bytes(b"\x7fELF truncated")
    exchange = tmp_path / "exchange"
    common = ["--protocol", "ecdh", "--on", "id_number", "--reveal", "both", "--quiet", "--json", "--via-dir", str(exchange)]
    env = {**subprocess_env(), "PSIQ_MB_LIBRARY": str(bogus)}
    env.pop(backends.ENV_VAR, None)
    server = subprocess.Popen(psiq_cmd() + ["--backend", "portable", "psi", "serve", "--input", str(tmp_path / "bank_b.csv"),
                                            "--output", str(tmp_path / "b.csv"), *common, *tls_args(pki, "bank-b")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    client = subprocess.run(psiq_cmd() + ["psi", "connect", "--input", str(tmp_path / "bank_a.csv"),
                                          "--output", str(tmp_path / "a.csv"), *common, *tls_args(pki, "bank-a")],
                            capture_output=True, text=True, env=env, timeout=120)
    s_out, s_err = server.communicate(timeout=60)
    assert client.returncode == 0 and server.returncode == 0, client.stderr + s_err
    c_backend, s_backend = json.loads(client.stdout)["backend"], json.loads(s_out)["backend"]
    assert c_backend["name"] == "portable" and c_backend["requested"] == "auto" and "cannot load" in c_backend["note"]
    assert s_backend == {**s_backend, "name": "portable", "requested": "portable", "note": None}
    assert client.stderr.count("psiq: note:") == 1 and s_err.count("psiq: note:") == 0
    a_ids = [line.split(",")[0] for line in (tmp_path / "a.csv").read_text().splitlines()[1:]]
    assert json.loads(client.stdout)["intersection_size"] == len(a_ids) > 0


def test_real_library_without_ifma_falls_back(fresh_selection: pytest.MonkeyPatch) -> None:
    reason = backends.available()["mb"]
    if reason is None:
        pytest.skip("this CPU has what crypto_mb needs (the byte-identity tests cover it)")
    if "not installed" in reason:
        pytest.skip("psiq[accel] is not installed")
    sel = backends.select("auto")
    assert sel.backend.name == "portable" and sel.note is not None and reason in sel.note
    with pytest.raises(UsageError, match="not available here"):
        backends.select("mb")


def test_load_once_builds_once_and_keeps_a_failure():
    from psi.crypto.backends._base import BackendUnavailable, load_once

    calls: list[str] = []

    def ok() -> str:
        calls.append("ok")
        return "impl"

    def broken() -> str:
        calls.append("broken")
        raise BackendUnavailable("no library here")

    cache: dict[str, object] = {}
    assert load_once(cache, "a", ok) == load_once(cache, "a", ok) == "impl"
    for _ in range(2):
        with pytest.raises(BackendUnavailable, match="no library here"):
            load_once(cache, "b", broken)
    assert calls == ["ok", "broken"]
