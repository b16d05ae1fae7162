"""``--suite gm``: every psiq protocol on national algorithms only (SM2, SM3, SM4).

* the primitives are pinned by the published SM3 / SM4 vectors (GB/T 32905, GB/T 32907);
* every protocol (ECDH, KKRT, RR22 PSI, IKNP and 1-of-N OT, PIR) under gm gives the plaintext
  answer — with SHA-2, BLAKE2, AES, ChaCha20 and ristretto255 made to raise, so a single call
  left on the gm path fails the test (the same patch makes the standard suite fail: the patch
  bites);
* a peer with the other suite is refused with exit 5 naming both suites (two CLI processes,
  and PIR); RSA and a conflicting ``--group`` are refused with exit 2 before any connection;
* the gm base OT validates SM2 points; the gm PIR OPRF validates SM2 elements.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rbcl
from cryptography.hazmat.primitives.ciphers import aead, algorithms

from psi import api
from psi.crypto import sm2
from psi.crypto.suite import GM, STANDARD, get_suite, hello_params
from psi.driver import run_pair
from psi.errors import MalformedMessage, ParameterMismatch, PsiqError, UsageError
from psi.ot import OneOfNReceiver, OneOfNSender, OtReceiver, OtSender
from psi.ot.base_ot import BaseOtReceiver, BaseOtSender
from psi.parallel import Executor
from psi.protocols.base import Role
from psi.records import read_keys
from psi.transport.memory import memory_pair

from .conftest import free_port, tls_args
from .helpers import run_psiq, start_psiq

VECTORS = json.loads((Path(__file__).parent / "vectors" / "gm_sm3_sm4.json").read_text())
EXECUTOR = Executor(workers=1)  # in-process: the forbidding patches below reach every call


# -- the primitives ---------------------------------------------------------------------------
@pytest.mark.parametrize("case", VECTORS["sm3"], ids=["abc", "abcd*16"])
def test_sm3_published_vectors(case: dict) -> None:
    message = case["message_ascii"].encode()
    assert GM.digest(message).hexdigest() == case["digest"]
    assert hashlib.new("sm3", message).hexdigest() == case["digest"]


def test_sm4_published_vector_through_the_suite() -> None:
    case = VECTORS["sm4"][0]
    key, plain = bytes.fromhex(case["key"]), bytes.fromhex(case["plaintext"])
    assert GM.ecb(key).update(plain).hex() == case["ciphertext"]
    # CTR from counter 0 is E_k(counter) xor data: the keystream's first block is SM4 of zero
    assert GM.ctr(key, plain).update(bytes(16)).hex() == case["ciphertext"]
    assert STANDARD.ecb(key).update(plain).hex() != case["ciphertext"]


def test_suite_hash_and_aead_are_national_under_gm() -> None:
    data = b"psiq"
    h = hashlib.new("sm3", bytes([4]) + b"test" + bytes([32, 0]) + data).digest()
    assert GM.hash(data, person=b"test") == h
    assert STANDARD.hash(data, person=b"test") == hashlib.blake2b(data, digest_size=32, person=b"test").digest()
    key, nonce = bytes(range(16)), bytes(12)
    sealed = GM.seal(key, nonce, b"label", b"aad")
    assert GM.open(key, nonce, sealed, b"aad") == b"label" and len(sealed) == 5 + 16
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers import Cipher, modes

    enc = Cipher(algorithms.SM4(key), modes.GCM(nonce)).encryptor()
    enc.authenticate_additional_data(b"aad")
    assert sealed == enc.update(b"label") + enc.finalize() + enc.tag  # SM4-GCM, nothing else
    with pytest.raises(InvalidTag):
        GM.open(key, nonce, sealed[:-1] + bytes([sealed[-1] ^ 1]), b"aad")


def test_unknown_suite_and_hello_params() -> None:
    with pytest.raises(UsageError):
        get_suite("aes")
    assert hello_params("standard") == {} and hello_params("gm") == {"suite": "gm"}


# -- every protocol under gm, with the standard primitives forbidden ---------------------------
def _forbid_standard_primitives(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make SHA-2, BLAKE2, AES, ChaCha20(-Poly1305), AES-GCM and ristretto255 raise."""

    def forbidden(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("a standard-suite primitive was called on the gm path")

    # cryptography's Rust side looks the cipher classes up on first use and keeps them: make that
    # first use happen now, with the real classes, so the test also passes when run alone
    from cryptography.hazmat.primitives.ciphers import Cipher, modes

    for mode in (modes.ECB(), modes.CTR(bytes(16)), modes.GCM(bytes(12))):
        Cipher(algorithms.SM4(bytes(16)), mode).encryptor()
        Cipher(algorithms.AES(bytes(16)), mode).encryptor()

    for name in ("sha256", "sha512", "sha384", "blake2b", "blake2s", "sha3_256", "shake_256"):
        monkeypatch.setattr(hashlib, name, forbidden)
    real_new = hashlib.new
    monkeypatch.setattr(hashlib, "new", lambda name, *a, **k: real_new(name, *a, **k) if name == "sm3" else forbidden())
    for name in ("AES", "AES128", "AES256", "ChaCha20"):
        monkeypatch.setattr(algorithms, name, forbidden)
    for name in ("ChaCha20Poly1305", "AESGCM"):
        monkeypatch.setattr(aead, name, forbidden)
    for name in dir(rbcl):
        if "ristretto255" in name:
            monkeypatch.setattr(rbcl, name, forbidden)


def _tables(tmp_path: Path) -> tuple[Path, Path, set[str]]:
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text("id\n" + "".join(f"k{i}\n" for i in range(0, 60)))
    b.write_text("id\n" + "".join(f"k{i}\n" for i in range(25, 90)))
    return a, b, {f"k{i}" for i in range(25, 60)}


def _run_both(client_path: Path, server_path: Path, client: api.PsiOptions, server: api.PsiOptions) -> dict[str, Any]:
    ch_client, ch_server = memory_pair()
    out: dict[str, Any] = {}

    def side(name: str, role: Role, channel: Any, path: Path, options: api.PsiOptions) -> None:
        try:
            table = read_keys(path, ["id"])
            out[name] = (api.run_session(role, channel, table, options=options, executor=EXECUTOR), table)
        except BaseException as err:  # noqa: BLE001 - the test inspects it
            out[name] = err

    threads = [threading.Thread(target=side, args=("server", Role.SERVER, ch_server, server_path, server), daemon=True),
               threading.Thread(target=side, args=("client", Role.CLIENT, ch_client, client_path, client), daemon=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not any(t.is_alive() for t in threads)
    return out


@pytest.mark.parametrize("protocol", ["ecdh", "kkrt", "rr22"])
def test_psi_under_gm_matches_plaintext_with_standard_primitives_forbidden(protocol, tmp_path, monkeypatch):
    a, b, expected = _tables(tmp_path)
    options = api.PsiOptions(protocol=protocol, suite="gm", reveal="both", workers=1, timeout=120)
    if protocol == "ecdh":
        assert options.group == "sm2"
    _forbid_standard_primitives(monkeypatch)
    out = _run_both(a, b, options, options)
    for side in ("client", "server"):
        assert not isinstance(out[side], BaseException), out[side]
        summary, table = out[side]
        assert summary.suite == "gm" and summary.as_dict()["suite"] == "gm"
        assert summary.intersection_size == len(expected)


@pytest.mark.parametrize("protocol", ["ecdh", "kkrt", "rr22"])
def test_the_forbidding_patch_stops_the_standard_suite(protocol, tmp_path, monkeypatch):
    """Control: the same patch breaks a standard session, so the gm test above can fail."""
    a, b, _expected = _tables(tmp_path)
    options = api.PsiOptions(protocol=protocol, reveal="both", workers=1, timeout=30)
    _forbid_standard_primitives(monkeypatch)
    out = _run_both(a, b, options, options)
    assert any(isinstance(out[side], BaseException) for side in ("client", "server"))


def test_ot_commands_under_gm(monkeypatch):
    rng = np.random.default_rng(1)
    choices = rng.integers(0, 2, 300)
    _forbid_standard_primitives(monkeypatch)
    sender, receiver = OtSender(300, kind="random", suite="gm"), OtReceiver(choices, kind="random", suite="gm")
    run_pair(receiver, sender)
    x0, x1 = sender.result()
    chosen = receiver.result()
    assert np.array_equal(chosen, np.where(choices[:, None] == 1, x1, x0))
    records = [bytes([i]) * 16 for i in range(5)]
    one_of_n, getter = OneOfNSender(records, suite="gm"), OneOfNReceiver([3], suite="gm")
    run_pair(getter, one_of_n)
    assert getter.result()[0].tobytes() == records[3]


def test_ot_suite_mismatch_is_refused_naming_both():
    sender, receiver = OneOfNSender([b"a" * 16, b"b" * 16], suite="gm"), OneOfNReceiver([1])
    with pytest.raises(ParameterMismatch, match="suite: ours='(standard|gm)' peer='(gm|standard)'") as info:
        run_pair(receiver, sender)
    assert info.value.exit_code == 5


# -- the SM2 base OT ----------------------------------------------------------------------------
def test_sm2_base_ot_keys_and_point_checks():
    session = bytes(32)
    choices = np.array([0, 1, 1, 0], dtype=np.uint8)
    sender, receiver = BaseOtSender(4, session, GM), BaseOtReceiver(choices, session, GM)
    first = sender.first_message()
    assert len(first) == 33 and first[0] in (2, 3)
    reply, chosen = receiver.reply(first)
    keys0, keys1 = sender.finish(reply)
    assert np.array_equal(chosen, np.where(choices[:, None] == 1, keys1, keys0))
    assert not np.array_equal(keys0, keys1)
    # a cheating peer: an uncompressed point, an x off the curve, x >= p, a wrong length
    off_curve = next(x for x in range(2, 100) if sm2._lift_x(sm2.mpz(x), 0) is None)
    bad = [b"\x04" + bytes(32), b"\x02" + off_curve.to_bytes(32, "big"), b"\x02" + int(sm2.P).to_bytes(32, "big"), first[:32]]
    for point in bad:
        with pytest.raises(MalformedMessage):
            BaseOtReceiver(choices, session, GM).reply(point)
        with pytest.raises(MalformedMessage):
            BaseOtSender(1, session, GM).finish(point)


# -- usage errors and the handshake, through the CLI ------------------------------------------
def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip() and not line.startswith("psiq: warning:")]
    assert "Traceback" not in stderr and len(lines) == 1 and lines[0].startswith("psiq: error:"), stderr
    return lines[0]


def test_rsa_refuses_gm_before_listening(tmp_path):
    a, _b, _ = _tables(tmp_path)
    port = free_port()
    run = run_psiq(["psi", "serve", "--protocol", "rsa", "--suite", "gm", "--input", str(a), "--on", "id",
                    "--listen", f"127.0.0.1:{port}", "--insecure", "--create-key", "--server-key", str(tmp_path / "k.pem")], timeout=60)
    assert run.returncode == 2
    assert "RSA" in _one_error_line(run.stderr) and "--suite gm" in run.stderr
    assert not (tmp_path / "k.pem").exists()
    with pytest.raises(UsageError, match="RSA"):
        api.PsiOptions(protocol="rsa", suite="gm")


def test_conflicting_group_is_a_usage_error(tmp_path):
    a, _b, _ = _tables(tmp_path)
    run = run_psiq(["psi", "connect", "--suite", "gm", "--group", "x25519", "--input", str(a), "--on", "id",
                    "--peer", f"127.0.0.1:{free_port()}", "--insecure"], timeout=60)
    assert run.returncode == 2 and "--group x25519" in _one_error_line(run.stderr)
    with pytest.raises(UsageError, match="sm2"):
        api.PsiOptions(suite="gm", group="p256")
    assert api.PsiOptions(suite="gm", group="sm2").group == "sm2"


@pytest.fixture(scope="module")
def sm2_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("gm-sm2keys")
    for party in ("bank-a", "bank-b"):
        result = run_psiq(["certs", "sm2-keygen", str(d), "--party", party])
        assert result.returncode == 0, result.stderr
    return d


def _signed(keys: Path, own: str, peer: str) -> list[str]:
    return ["--sm2-key", str(keys / f"{own}.sm2.key"), "--sm2-peer-key", str(keys / f"{peer}.sm2.pub")]


def test_gm_on_the_cli_needs_sm2_signing(tmp_path, pki, sm2_keys):
    a, _b, _ = _tables(tmp_path)
    base = ["psi", "connect", "--suite", "gm", "--protocol", "kkrt", "--input", str(a), "--on", "id",
            "--peer", f"127.0.0.1:{free_port()}", "--output", str(tmp_path / "out.csv"), *tls_args(pki, "bank-a")]
    run = run_psiq(base, timeout=60)
    assert run.returncode == 2 and "--sm2-key" in _one_error_line(run.stderr)
    run = run_psiq(["psi", "connect", "--suite", "gm", "--input", str(a), "--on", "id",
                    "--via-dir", str(tmp_path / "x"), *tls_args(pki, "bank-a")], timeout=60)
    assert run.returncode == 2 and "--via-dir" in _one_error_line(run.stderr)
    assert not (tmp_path / "out.csv").exists()


def test_suite_mismatch_two_processes_exit_5_naming_both(tmp_path, pki, sm2_keys):
    a, b, _ = _tables(tmp_path)
    port = free_port()
    common = ["--protocol", "kkrt", "--on", "id", "--quiet"]
    server = start_psiq(["psi", "serve", "--suite", "gm", "--input", str(b), "--listen", f"127.0.0.1:{port}",
                         *common, *tls_args(pki, "bank-b"), *_signed(sm2_keys, "bank-b", "bank-a")])
    client = run_psiq(["psi", "connect", "--input", str(a), "--peer", f"127.0.0.1:{port}",
                       "--output", str(tmp_path / "out.csv"), *common, *tls_args(pki, "bank-a"),
                       *_signed(sm2_keys, "bank-a", "bank-b")])
    _s_out, s_err = server.communicate(timeout=120)
    assert client.returncode == 5 and server.returncode == 5, (client.stderr, s_err)
    assert "suite: ours='standard' peer='gm'" in _one_error_line(client.stderr)
    assert "suite: ours='gm' peer='standard'" in s_err
    assert not (tmp_path / "out.csv").exists()


def test_gm_json_summary_over_the_cli(tmp_path, pki, sm2_keys):
    a, b, expected = _tables(tmp_path)
    port = free_port()
    common = ["--protocol", "kkrt", "--suite", "gm", "--on", "id", "--json", "--quiet"]
    server = start_psiq(["psi", "serve", "--input", str(b), "--listen", f"127.0.0.1:{port}", *common,
                         *tls_args(pki, "bank-b"), *_signed(sm2_keys, "bank-b", "bank-a")])
    client = run_psiq(["psi", "connect", "--input", str(a), "--peer", f"127.0.0.1:{port}", *common,
                       *tls_args(pki, "bank-a"), *_signed(sm2_keys, "bank-a", "bank-b")])
    s_out, s_err = server.communicate(timeout=120)
    assert client.returncode == 0 and server.returncode == 0, (client.stderr, s_err)
    for text in (client.stdout, s_out):
        summary = json.loads(text)
        assert summary["suite"] == "gm"
    assert json.loads(client.stdout)["intersection_size"] == len(expected)


# -- PIR -----------------------------------------------------------------------------------------
def _pir_table(tmp_path: Path, suite: str) -> Any:
    from pir import api as pir_api
    from pir.store import load_table

    pir_api.setup([(f"id{i}", f"label{i}") for i in range(40)], tmp_path / f"db-{suite}", workers=1, suite=suite)
    return load_table(tmp_path / f"db-{suite}")


def _pir_lookup(table: Any, ids: list[str], suite: str, tmp_path: Path) -> Any:
    from pir import api as pir_api
    from pir.protocol import PirServerSession
    from psi.driver import run_party

    client_ch, server_ch = memory_pair()
    server = PirServerSession(table, settings=table.settings)
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            run_party(server, server_ch, timeout=60)
        except PsiqError as err:
            errors.append(err)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        results, _stats, _client = pir_api.lookup_over(client_ch, ids, cache=pir_api.HintCache(tmp_path / "cache"),
                                                        suite=suite, timeout=60)
    finally:
        thread.join(60)
    return results, errors


def test_pir_under_gm_with_standard_primitives_forbidden(tmp_path, monkeypatch):
    table = _pir_table(tmp_path, "gm")
    assert table.params.suite == "gm" and json.loads((tmp_path / "db-gm" / "current" / "params.json").read_text())[
        "params"]["suite"] == "gm"
    _forbid_standard_primitives(monkeypatch)
    results, errors = _pir_lookup(table, ["id3", "nobody", "id39"], "gm", tmp_path)
    assert not errors
    assert [(r.listed, r.label) for r in results] == [(True, "label3"), (False, None), (True, "label39")]


@pytest.mark.parametrize("table_suite, query_suite", [("standard", "gm"), ("gm", "standard")])
def test_pir_table_of_one_suite_refuses_a_query_of_the_other(table_suite, query_suite, tmp_path):
    table = _pir_table(tmp_path, table_suite)
    with pytest.raises(PsiqError) as info:
        _pir_lookup(table, ["id3"], query_suite, tmp_path)
    assert info.value.exit_code == 5
    assert f"--suite {table_suite}" in str(info.value) and f"--suite {query_suite}" in str(info.value)


def test_pir_client_refuses_a_hint_of_another_suite(tmp_path):
    """A server that announces gm but hands out a standard table's hint is refused (exit 5)."""
    from pir.protocol import SUITE_GM, _own_hello

    table = _pir_table(tmp_path, "standard")
    from pir.protocol import PirServerSession

    real_init = PirServerSession.__init__

    def lying_init(self: Any, *args: Any, **kwargs: Any) -> None:
        real_init(self, *args, **kwargs)
        hello = self._hello
        self._hello = _own_hello(Role.SERVER, dict(hello.info), {**hello.params, "suite": SUITE_GM})

    PirServerSession.__init__ = lying_init  # type: ignore[method-assign]
    try:
        with pytest.raises(ParameterMismatch, match="set up under suite 'standard'"):
            _pir_lookup(table, ["id3"], "gm", tmp_path)
    finally:
        PirServerSession.__init__ = real_init  # type: ignore[method-assign]


def test_pir_gm_oprf_validates_elements():
    from pir import oprf_sm2

    key = oprf_sm2.generate_key()
    r, blinded = oprf_sm2.blind(b"id")
    evaluated = oprf_sm2.blind_evaluate(key, blinded)
    assert oprf_sm2.finalize(b"id", r, evaluated) == oprf_sm2.evaluate(key, b"id")
    assert oprf_sm2.evaluate(key, b"id") != oprf_sm2.evaluate(key, b"id2")
    off_curve = next(x for x in range(2, 100) if sm2._lift_x(sm2.mpz(x), 0) is None)
    for bad in (off_curve.to_bytes(32, "big"), int(sm2.P).to_bytes(32, "big"), bytes(31)):
        with pytest.raises(MalformedMessage):
            oprf_sm2.blind_evaluate(key, bad)
        with pytest.raises(MalformedMessage):
            oprf_sm2.finalize(b"id", r, bad)


def test_ecdh_prepared_set_under_gm(monkeypatch):
    """Unbalanced mode: an sm2 key and prepared set (SM3 fingerprint and input digest) serve gm."""
    from psi.protocols import ecdh

    client_items = [b"k%d" % i for i in range(30)]
    server_items = [b"k%d" % i for i in range(20, 50)]
    key = ecdh.ServerKey.generate("sm2")
    prepared = ecdh.PreparedSet.from_bytes(ecdh.prepare_server_set(server_items, "sm2", key, EXECUTOR).to_bytes(), key)
    assert prepared.digest == ecdh.input_digest(server_items, GM) != ecdh.input_digest(server_items)
    config = ecdh.Config(group="sm2", suite="gm")
    _forbid_standard_primitives(monkeypatch)
    client = ecdh.Client(client_items, config, peer_size=len(server_items), executor=EXECUTOR)
    server = ecdh.Server(server_items, config, peer_size=len(client_items), executor=EXECUTOR, prepared=prepared)
    run_pair(client, server)
    assert sorted(client_items[i] for i in client.result().indices) == [b"k%d" % i for i in range(20, 30)]
    with pytest.raises(UsageError):
        ecdh.Config(group="x25519", suite="gm")
