"""Every local mistake is reported before the party listens or connects (issue 11.3, 11.4, 11.12).

``psi.api.Listener`` and ``psi.api.tcp_connect`` are replaced by stubs that fail the test: a
command that reaches them has made the partner wait for a mistake it could have seen alone.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from psi import api

from .conftest import ROOT, tls_args

SAMPLE = ROOT / "datasets" / "sample"


class Reached(KeyboardInterrupt):
    """Raised by the network stubs; the CLI turns it into exit code 99 (like a signal stop)."""

    exit_code = 99
    reason = "reached the network"


@pytest.fixture()
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def listener(*_a: object, **_k: object) -> None:
        raise Reached("listened")

    monkeypatch.setattr(api, "Listener", listener)
    monkeypatch.setattr(api, "tcp_connect", listener)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("small")
    for name in ("bank_a.csv", "bank_b.csv"):
        lines = (SAMPLE / name).read_text(encoding="utf-8").splitlines(keepends=True)
        (d / name).write_text("".join(lines[:301]), encoding="utf-8")
    return d


def _serve(small: Path, pki: Path, *extra: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["psi", "serve", "--input", str(small / "bank_b.csv"), "--on", "id_number",
                                      "--listen", "127.0.0.1:1", "--workers", "1", "--quiet", *tls_args(pki, "bank-b"),
                                      *extra])
    return (-1 if result.exit_code == 99 else result.exit_code), result.output


def _connect(small: Path, pki: Path, *extra: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["psi", "connect", "--input", str(small / "bank_a.csv"), "--on", "id_number",
                                      "--peer", "127.0.0.1:1", "--workers", "1", "--quiet", *tls_args(pki, "bank-a"),
                                      *extra])
    return (-1 if result.exit_code == 99 else result.exit_code), result.output


def _prepared(small: Path, tmp_path: Path, on: str = "id_number") -> tuple[Path, Path]:
    key, prepared = tmp_path / "b.key", tmp_path / "b.prepared"
    result = CliRunner().invoke(cli, ["psi", "prepare", "--input", str(small / "bank_b.csv"), "--on", on,
                                      "--server-key", str(key), "--out", str(prepared), "--workers", "1"])
    assert result.exit_code == 0, result.output
    return key, prepared


@pytest.mark.parametrize("args,needle", [
    (["--reveal", "receiver", "--output", "{tmp}/b.csv"], "learns no intersection"),
    (["--reveal", "cardinality", "--output", "{tmp}/b.csv"], "only the match count"),
    (["--protocol", "rsa", "--reveal", "cardinality"], "cardinality"),
    (["--protocol", "kkrt", "--reveal", "cardinality"], "cardinality"),
    (["--protocol", "rsa", "--prepared", "{tmp}/x.prepared", "--server-key", "{tmp}/k"], "ECDH option"),
    (["--prepared", "{tmp}/x.prepared"], "needs the --server-key"),
    (["--protocol", "rsa", "--server-key", "{tmp}/missing.pem"], "server key not found"),
    (["--protocol", "ecdh", "--key-bits", "3072"], "--key-bits applies to the rsa protocol"),
    (["--protocol", "rsa", "--group", "p256"], "--group applies to the ecdh protocol"),
    (["--reveal", "both", "--output", "{tmp}/no/such/dir/b.csv"], "does not exist"),
    (["--reveal", "both", "--output", "{tmp}"], "is a folder, not a file name"),
    (["--reveal", "both", "--forever", "--output", "{tmp}/b.csv"], "overwrite"),
    (["--reveal", "both", "--output", "{tmp}/b-{bank}.csv"], "unknown field"),
], ids=["receiver-output", "cardinality-output", "rsa-cardinality", "kkrt-cardinality", "rsa-prepared",
        "prepared-no-key", "rsa-missing-key", "ecdh-key-bits", "rsa-group", "output-dir-missing",
        "output-is-dir", "forever-overwrite", "template-unknown-field"])
def test_server_mistakes_stop_before_listening(args: list[str], needle: str, small: Path, pki: Path,
                                               tmp_path: Path, no_network: None) -> None:
    code, output = _serve(small, pki, *[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert code == 2, output
    assert needle in output
    assert not (tmp_path / "missing.pem").exists(), "a mistyped --server-key must not create a key"


def test_prepared_set_problems_stop_before_listening(small: Path, pki: Path, tmp_path: Path, no_network: None) -> None:
    key, prepared = _prepared(small, tmp_path)
    other_key, _ = _prepared(small, tmp_path / "other") if (tmp_path / "other").mkdir() is None else (None, None)
    # right files: the server gets as far as listening
    assert _serve(small, pki, "--prepared", str(prepared), "--server-key", str(key))[0] == -1
    code, output = _serve(small, pki, "--prepared", str(prepared), "--server-key", str(tmp_path / "typo.key"))
    assert code == 2 and "server key not found" in output and not (tmp_path / "typo.key").exists()
    code, output = _serve(small, pki, "--prepared", str(tmp_path / "nope.prepared"), "--server-key", str(key))
    assert code == 2 and "not found" in output
    code, output = _serve(small, pki, "--prepared", str(prepared), "--server-key", str(other_key))
    assert code == 2, output
    code, output = _serve(small, pki, "--prepared", str(prepared), "--server-key", str(key), "--on", "phone")
    assert code == 2 and "another input" in output


def test_client_mistakes_stop_before_connecting(small: Path, pki: Path, tmp_path: Path, no_network: None) -> None:
    code, output = _connect(small, pki, "--reveal", "cardinality", "--output", str(tmp_path / "a.csv"))
    assert code == 2 and "only the match count" in output
    code, output = _connect(small, pki, "--output", str(tmp_path / "missing" / "a.csv"))
    assert code == 2 and "does not exist" in output
    assert _connect(small, pki, "--output", str(tmp_path / "a.csv"))[0] == -1  # fine: goes on to connect


def test_unwritable_output_folder_is_refused(small: Path, pki: Path, tmp_path: Path, no_network: None) -> None:
    import os

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user that ignores permissions")
        code, output = _connect(small, pki, "--output", str(locked / "a.csv"))
        assert code == 2 and "cannot create a file" in output
    finally:
        locked.chmod(0o700)


def test_header_only_input_says_no_keys(pki: Path, tmp_path: Path, no_network: None) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("id_number,name\n", encoding="utf-8")
    result = CliRunner().invoke(cli, ["psi", "connect", "--input", str(empty), "--on", "id_number",
                                      "--peer", "127.0.0.1:1", *tls_args(pki, "bank-a")])
    assert result.exit_code == 2 and "no keys" in result.output and "--allow-empty" in result.output
    result = CliRunner().invoke(cli, ["psi", "connect", "--input", str(empty), "--on", "id_number", "--allow-empty",
                                      "--peer", "127.0.0.1:1", *tls_args(pki, "bank-a")])
    assert result.exit_code == 99, result.output


def test_rsa_key_is_created_only_with_create_key(small: Path, tmp_path: Path) -> None:
    from psi.parallel import Executor
    from psi.records import read_keys

    table = read_keys(small / "bank_b.csv", ["id_number"])
    key = tmp_path / "rsa.pem"
    options = api.PsiOptions(protocol="rsa", server_key=key, workers=1)
    with Executor(1) as ex:
        with pytest.raises(Exception, match="server key not found"):
            api.server_state(options, table, ex)
        assert not key.exists()
        state = api.server_state(options.replace(create_key=True), table, ex)
    assert key.exists() and state["key"] is not None


def test_output_templates() -> None:
    from psi.preflight import expand_output

    out = expand_output("out/b-{peer}-{session}-{time}.csv", peer="bank-a/../x", session=3, when=0)
    assert str(out) == "out/b-bank-a_.._x-3-19700101T000000Z.csv"
    assert str(expand_output("plain.csv", peer=None, session=1)) == "plain.csv"
    assert str(expand_output("b-{peer}.csv", peer=None, session=1)) == "b-peer.csv"


def test_output_needs_free_space_for_the_estimate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import collections

    from psi import preflight
    from psi.errors import InputError

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda _p: usage(100, 90, 10))
    preflight.check_output(tmp_path / "a.csv", estimate_bytes=10)
    with pytest.raises(InputError, match="bytes free"):
        preflight.check_output(tmp_path / "a.csv", estimate_bytes=11)
    assert list(tmp_path.iterdir()) == []  # the probe file is gone
