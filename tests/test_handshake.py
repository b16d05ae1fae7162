"""The PSI handshake against a mismatched or hostile peer, for every protocol.

* every setting both sides must agree on, for every protocol, is refused with exit 5 naming it
  when the two sides differ (the settings come from :class:`psi.api.PsiOptions`, so a setting
  left out of the hello makes its case fail; a new option fails ``test_every_option_is_classified``
  until it is classified);
* every parameter the hello builder puts in the hello is compared (a peer that changes or
  drops any one of them is refused, naming it) — derived from the builder, so parameters the
  protocols add later are covered;
* the version, role and protocol checks, a malformed hello, and ``--max-peer-size`` (refused
  before any protocol state is built, on both sides).
"""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from psi import api
from psi.errors import (
    IncompatiblePeer,
    MalformedMessage,
    ParameterMismatch,
    PolicyError,
    PsiqError,
    UnsupportedVersion,
)
from psi.messages import Message, pack_json
from psi.normalize import Normalization
from psi.parallel import Executor
from psi.protocols.base import Role
from psi.protocols.handshake import Hello, check_peer_hello
from psi.records import KeyTable, read_keys
from psi.session import DEFAULT_MAX_PEER_SIZE, PROTOCOLS, exchange_hello, protocol_module
from psi.transport.memory import memory_pair

# Settings both sides must agree on: PsiOptions field -> (a value other than the default, the
# name the mismatch message uses). "protocol" is checked by name (test_protocol_mismatch).
AGREED: dict[str, tuple[Any, str]] = {
    "reveal": ("both", "reveal"),
    "normalization": (Normalization.parse("trim,casefold"), "normalize"),
    "dedup": ("first", "dedup"),
    "join": ("left", "join"),
    "left": ("server", "left"),
    "group": ("ristretto255", "group"),
    "compression": ("raw", "compression"),
    "fpr_bits": (48, "fpr_bits"),
    "key_bits": (3072, "key_bits"),
    "suite": ("gm", "suite"),  # psi.crypto.suite; RSA has no gm form (refused before any hello)
}
# Settings that stay local to one side (deployment, local input handling).
LOCAL = {"workers", "max_peer_size", "server_key", "cache_dir", "prepared", "timeout", "input_format", "skip_empty",
         "encoding", "output_format", "allow_empty", "create_key",
         "sm2_signing"}  # each bank's own files and keys
COMMON = {"reveal", "normalization", "dedup", "join", "left"}  # apply to every protocol
EXECUTOR = Executor(workers=1)


@pytest.fixture(scope="module")
def table_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("hs") / "people.csv"
    path.write_text("id,phone,name\n" + "".join(f"{i},{1000 + i},n{i}\n" for i in range(30)))
    return path


def _table(path: Path, on: list[str], options: api.PsiOptions) -> KeyTable:
    return read_keys(path, on, normalization=options.normalization, dedup=options.dedup)  # type: ignore[arg-type]


def _run_both(client: tuple[KeyTable, api.PsiOptions], server: tuple[KeyTable, api.PsiOptions]) -> dict[str, Any]:
    """Run both sides over a memory pair; returns each side's exception (or summary)."""
    ch_client, ch_server = memory_pair()
    out: dict[str, Any] = {}

    def side(name: str, role: Role, channel: Any, table: KeyTable, options: api.PsiOptions) -> None:
        try:
            out[name] = api.run_session(role, channel, table, options=options, executor=EXECUTOR)
        except Exception as err:  # noqa: BLE001 - the test inspects it
            out[name] = err

    threads = [
        threading.Thread(target=side, args=("server", Role.SERVER, ch_server, *server), daemon=True),
        threading.Thread(target=side, args=("client", Role.CLIENT, ch_client, *client), daemon=True),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a side hung: the mismatch was not caught in the handshake"
    return out


def _applies(protocol: str, field: str) -> bool:
    return field in COMMON or field in {f.name for f in dataclasses.fields(protocol_module(protocol).Config)}


def _mismatch_cases() -> list[tuple[str, str, Any, Any, str]]:
    """(protocol, setting, client options changes, server options changes, name)."""
    cases = []
    for protocol in PROTOCOLS:
        for field, (value, name) in AGREED.items():
            if not _applies(protocol, field):
                continue
            base: dict[str, Any] = {"reveal": "both"} if field in ("join", "left") else {}
            if field == "reveal":
                base = {}
            cases.append((protocol, field, {**base, field: value}, base, name))
        if protocol == "ecdh":  # the case of the issue: a receiver-mode client, a cardinality-mode server
            cases.append((protocol, "reveal-cardinality", {}, {"reveal": "cardinality"}, "reveal"))
        cases.append((protocol, "key-columns", {}, {}, "key_columns"))
    return cases


CASES = _mismatch_cases()


def test_every_option_is_classified():
    fields = {f.name for f in dataclasses.fields(api.PsiOptions)}
    unclassified = fields - set(AGREED) - LOCAL - {"protocol"}
    assert not unclassified, f"classify the new PsiOptions field(s) {unclassified} in AGREED (with a test value) or LOCAL"
    for field, (value, _name) in AGREED.items():
        assert getattr(api.PsiOptions(), field) != value


@pytest.mark.parametrize("protocol, setting, client_changes, server_changes, name", CASES,
                         ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_each_setting_mismatch_is_refused_naming_it(protocol, setting, client_changes, server_changes, name, table_file):
    timeout = {"timeout": 20.0, "workers": 1}
    client_options = api.PsiOptions(protocol=protocol, **timeout, **client_changes)
    server_options = api.PsiOptions(protocol=protocol, **timeout, **server_changes)
    client_on, server_on = (["id"], ["id", "phone"]) if setting == "key-columns" else (["id"], ["id"])
    out = _run_both((_table(table_file, client_on, client_options), client_options),
                    (_table(table_file, server_on, server_options), server_options))
    for side in ("client", "server"):
        err = out[side]
        assert isinstance(err, ParameterMismatch), f"{side} ran on: {err!r}"
        assert err.exit_code == 5
        assert f"{name}: ours=" in str(err)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_every_hello_parameter_is_compared(protocol, table_file):
    # derived from the hello builder itself: whatever a protocol puts in its hello is compared
    options = api.PsiOptions(protocol=protocol, workers=1)
    table = _table(table_file, ["id"], options)
    own = api._hello(Role.CLIENT, options, options.protocol_config(), table)
    assert {"reveal", "key_columns", "normalize", "join", "left", "dedup"} <= set(own.params)
    assert set(protocol_module(protocol).Config().hello_params()) <= set(own.params)
    for key in own.params:
        for params in ({**own.params, key: ["changed", own.params[key]]},
                       {k: v for k, v in own.params.items() if k != key}):
            peer = dataclasses.replace(own, role=Role.SERVER, params=params)
            with pytest.raises(ParameterMismatch, match=f"{key}: ours="):
                check_peer_hello(own, peer)
    check_peer_hello(own, dataclasses.replace(own, role=Role.SERVER))  # identical params pass


def test_protocol_mismatch(table_file):
    client_options = api.PsiOptions(protocol="ecdh", workers=1, timeout=20.0)
    server_options = api.PsiOptions(protocol="kkrt", workers=1, timeout=20.0)
    out = _run_both((_table(table_file, ["id"], client_options), client_options),
                    (_table(table_file, ["id"], server_options), server_options))
    for side in ("client", "server"):
        assert isinstance(out[side], IncompatiblePeer) and out[side].exit_code == 5
        assert "protocol" in str(out[side])


# -- a hostile or confused peer that sends its own hello ---------------------------------------
def _own_hello(protocol: str = "ecdh", role: Role = Role.CLIENT, size: int = 10) -> Hello:
    module = protocol_module(protocol)
    return Hello(module.NAME, module.VERSION, role, module.Config().hello_params(), {"set_size": size})


def _exchange_with(peer_body: dict, own: Hello, **kw: Any) -> tuple[BaseException, Message]:
    """Run exchange_hello against a peer that sends ``peer_body`` as its hello; returns the
    error raised here and the message this side sent back after the hello."""
    mine, theirs = memory_pair()
    theirs.send(Message("hello", pack_json(peer_body)))
    # The fake peer also stops after its hello (as a real one would on our error frame), so this
    # side's send_error does not linger for a hang-up that a memory pair never gives.
    theirs.send(Message("error", pack_json({"code": 5, "message": "the fake peer stops too"})))
    with pytest.raises(PsiqError) as info:
        exchange_hello(mine, own, **kw)
    assert theirs.recv(1).kind == "hello"
    return info.value, theirs.recv(1)


def _body(hello: Hello, **changes: Any) -> dict:
    body = json.loads(hello.to_message().body)
    body.update(changes)
    return body


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_client_talking_to_a_client_is_refused(protocol):
    own = _own_hello(protocol, Role.CLIENT)
    err, reply = _exchange_with(_body(own), own)
    assert isinstance(err, IncompatiblePeer) and err.exit_code == 5
    assert "both sides are clients" in str(err)
    assert reply.kind == "error" and json.loads(reply.body)["code"] == 5  # the peer is told why
    own = _own_hello(protocol, Role.SERVER)
    err, _ = _exchange_with(_body(own), own)
    assert "both sides are servers" in str(err)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_an_unsupported_version_is_refused(protocol):
    own = _own_hello(protocol)
    for version in (own.version + 1, own.version - 1, 0):
        err, reply = _exchange_with(_body(own, role="server", version=version), own)
        assert isinstance(err, UnsupportedVersion) and err.exit_code == 5
        assert f"version {version}, this side speaks {own.version}" in str(err)
        assert json.loads(reply.body)["code"] == 5


@pytest.mark.parametrize("changes", [
    {"role": "admin"}, {"role": None}, {"protocol": None}, {"version": "3"}, {"version": True}, {"params": []}, {"info": "x"},
    {"info": {}}, {"info": {"set_size": -1}}, {"info": {"set_size": True}}, {"info": {"set_size": "10"}},
    {"info": {"set_size": 1.5}},
])
def test_a_malformed_hello_is_a_protocol_violation(changes):
    own = _own_hello()
    err, reply = _exchange_with(_body(own, **{"role": "server", **changes}), own)
    assert isinstance(err, MalformedMessage) and err.exit_code == 4, repr(err)


# -- --max-peer-size --------------------------------------------------------------------------
def test_default_cap_is_set_and_fits_memory():
    assert api.PsiOptions().max_peer_size == DEFAULT_MAX_PEER_SIZE
    # measured peak per side with both sets of size n (README): <= 574 bytes per n (KKRT 2^20)
    assert 10**7 <= DEFAULT_MAX_PEER_SIZE and DEFAULT_MAX_PEER_SIZE * 600 <= 20 * 2**30


@pytest.mark.parametrize("role", [Role.CLIENT, Role.SERVER])
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_peer_above_the_cap_is_refused_before_any_protocol_state(protocol, role, table_file, monkeypatch):
    module = protocol_module(protocol)

    def no_party(*args: Any, **kw: Any) -> None:
        raise AssertionError("protocol state was built for a peer above the cap")

    monkeypatch.setattr(module, "Client", no_party)
    monkeypatch.setattr(module, "Server", no_party)
    options = api.PsiOptions(protocol=protocol, workers=1, max_peer_size=1000, timeout=5.0)
    table = _table(table_file, ["id"], options)
    own = api._hello(role, options, options.protocol_config(), table)
    peer_role = Role.SERVER if role is Role.CLIENT else Role.CLIENT
    peer = dataclasses.replace(own, role=peer_role, info={"set_size": 1001})
    mine, theirs = memory_pair()
    theirs.send(peer.to_message())
    theirs.send(Message("error", pack_json({"code": 5, "message": "the fake peer stops too"})))  # no linger
    with pytest.raises(PolicyError) as info:
        api.run_session(role, mine, table, options=options, executor=EXECUTOR)
    assert info.value.exit_code == 7
    assert "1,001 keys, above the cap of 1,000 keys" in str(info.value) and "--max-peer-size" in str(info.value)
    theirs.recv(1)  # our hello
    assert json.loads(theirs.recv(1).body)["code"] == 7  # the peer learns why
    # at the cap exactly the session goes on (to the patched party constructor)
    mine, theirs = memory_pair()
    theirs.send(dataclasses.replace(peer, info={"set_size": 1000}).to_message())
    with pytest.raises(AssertionError, match="protocol state was built"):
        api.run_session(role, mine, table, options=options, executor=EXECUTOR)


def test_default_cap_applies_without_the_option(table_file, monkeypatch):
    options = api.PsiOptions(workers=1, timeout=5.0)
    table = _table(table_file, ["id"], options)
    own = api._hello(Role.CLIENT, options, options.protocol_config(), table)
    mine, theirs = memory_pair()
    theirs.send(dataclasses.replace(own, role=Role.SERVER, info={"set_size": DEFAULT_MAX_PEER_SIZE + 1}).to_message())
    theirs.send(Message("error", pack_json({"code": 5, "message": "the fake peer stops too"})))  # no linger
    with pytest.raises(PolicyError, match="above the cap of 30,000,000 keys"):
        api.run_session(Role.CLIENT, mine, table, options=options, executor=EXECUTOR)
