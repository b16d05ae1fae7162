"""The Python API: every protocol and reveal mode against a plaintext intersection, in one process."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

import psi
from psi import api
from psi.errors import InputError, ParameterMismatch, UsageError
from psi.normalize import Normalization

from psiq_datasets.generate import generate

from .conftest import tls_for


@pytest.fixture(scope="module")
def tables(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("api")
    generate(d, rows=400, overlap=0.3, seed=11, blacklist_rows=50, rows_b=300)
    return d


def _column(path: Path, name: str) -> list[str]:
    with open(path, newline="", encoding="utf-8-sig") as fh:
        return [r[name] for r in csv.DictReader(fh)]


def _plain(tables: Path, column: str = "id_number") -> set[str]:
    return set(_column(tables / "bank_a.csv", column)) & set(_column(tables / "bank_b.csv", column))


CASES = [
    ("rsa", "receiver"), ("rsa", "both"),
    ("ecdh", "receiver"), ("ecdh", "both"), ("ecdh", "cardinality"),
    ("kkrt", "receiver"), ("kkrt", "both"),
]


@pytest.mark.parametrize("protocol,reveal", CASES)
def test_protocols_and_reveal_modes_match_plaintext(protocol: str, reveal: str, tables: Path, tmp_path: Path) -> None:
    out_a, out_b = tmp_path / "a.csv", tmp_path / "b.csv"
    options = api.PsiOptions(protocol=protocol, reveal=reveal, workers=1)
    client, server = api.intersect_files(
        tables / "bank_a.csv", tables / "bank_b.csv", on=["id_number"],
        client_output=out_a if reveal != "cardinality" else None,
        server_output=out_b if reveal == "both" else None, options=options)
    expected = _plain(tables)
    assert client.intersection_size == len(expected)
    if reveal == "cardinality":
        assert not out_a.exists()
        return
    assert set(_column(out_a, "id_number")) == expected
    if reveal == "both":
        assert _column(out_a, "id_number") == _column(out_b, "id_number")
        assert server.intersection_size == len(expected)
    else:
        assert server.intersection_size is None


def test_composite_key_over_tls(tables: Path, pki: Path, tmp_path: Path) -> None:
    out_a, out_b = tmp_path / "a.csv", tmp_path / "b.csv"
    client, _server = api.intersect_files(
        tables / "bank_a.csv", tables / "bank_b.csv", on=["phone", "id_number"], client_output=out_a,
        server_output=out_b, options=api.PsiOptions(reveal="both", workers=1),
        tls=(tls_for(pki, "bank-a", "bank-b"), tls_for(pki, "bank-b", "bank-a")))
    pairs_a = list(zip(_column(out_a, "phone"), _column(out_a, "id_number")))
    pairs_b = list(zip(_column(out_b, "phone"), _column(out_b, "id_number")))
    assert pairs_a == pairs_b and len(pairs_a) == client.intersection_size == len(_plain(tables))
    assert client.peer_name == "bank-b"


def test_normalisation_makes_messy_keys_match(tmp_path: Path) -> None:
    a = tmp_path / "a.csv"
    b = tmp_path / "b.csv"
    a.write_text("phone,x\n+86 138-0013-8000,1\n13900000000,2\n", encoding="utf-8")
    b.write_text("tel,y\n１３８００１３８０００,9\n13700000000,8\n", encoding="utf-8")
    norm = Normalization.parse("trim,fullwidth,phone")
    client, _ = api.intersect_files(a, b, on=["phone"], server_on=["tel"], client_output=tmp_path / "o.csv",
                                    options=api.PsiOptions(normalization=norm, workers=1))
    assert client.intersection_size == 1
    assert _column(tmp_path / "o.csv", "x") == ["1"]


def test_settings_mismatch_refused_before_data(tables: Path) -> None:
    from psi.protocols.base import Role
    from psi.records import read_keys
    from psi.transport.memory import memory_pair
    import threading

    table = read_keys(tables / "bank_a.csv", ["id_number"])
    ch_a, ch_b = memory_pair()
    box: dict = {}

    def other() -> None:
        try:
            api.run_session(Role.SERVER, ch_b, table, options=api.PsiOptions(dedup="first", workers=1))
        except Exception as err:  # noqa: BLE001
            box["err"] = err

    t = threading.Thread(target=other)
    t.start()
    with pytest.raises(ParameterMismatch, match="dedup"):
        api.run_session(Role.CLIENT, ch_a, table, options=api.PsiOptions(workers=1))
    t.join(10)
    assert isinstance(box["err"], ParameterMismatch)


def test_output_refused_where_the_party_learns_nothing(tables: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="learns no intersection"):
        api.intersect_files(tables / "bank_a.csv", tables / "bank_b.csv", on=["id_number"],
                            server_output=tmp_path / "b.csv", options=api.PsiOptions(workers=1))
    with pytest.raises(UsageError, match="needs --reveal both"):
        api.PsiOptions(join="left")


def test_left_join_aligns_with_empty_rows(tables: Path, tmp_path: Path) -> None:
    out_a, out_b = tmp_path / "a.csv", tmp_path / "b.csv"
    api.intersect_files(tables / "bank_a.csv", tables / "bank_b.csv", on=["id_number"], client_output=out_a,
                        server_output=out_b, options=api.PsiOptions(reveal="both", join="left", workers=1))
    ids_a, ids_b = _column(out_a, "id_number"), _column(out_b, "id_number")
    assert len(ids_a) == len(ids_b) == 400
    assert set(ids_a) == set(_column(tables / "bank_a.csv", "id_number"))
    for x, y in zip(ids_a, ids_b):
        assert y == x or y == ""


def test_parquet_round_trip(tables: Path, tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow is not installed (pip install -e '.[parquet]')")
    import pyarrow.csv as pacsv

    for name in ("bank_a", "bank_b"):
        pq.write_table(pacsv.read_csv(tables / f"{name}.csv",
                                      convert_options=pacsv.ConvertOptions(column_types={"id_number": "string",
                                                                                          "phone": "string"})),
                       tmp_path / f"{name}.parquet")
    out = tmp_path / "out.parquet"
    client, _ = api.intersect_files(tmp_path / "bank_a.parquet", tmp_path / "bank_b.parquet", on=["id_number"],
                                    client_output=out, options=api.PsiOptions(workers=1))
    assert set(pq.read_table(out).column("id_number").to_pylist()) == _plain(tables)
    assert client.output_rows == len(_plain(tables))


def test_rsa_signed_set_cache_is_reused_and_invalidated(tables: Path, tmp_path: Path) -> None:
    key, cache = tmp_path / "server.pem", tmp_path / "cache"
    options = api.PsiOptions(protocol="rsa", workers=1, server_key=key, cache_dir=cache, create_key=True)
    first, server = api.intersect_files(tables / "bank_a.csv", tables / "bank_b.csv", on=["id_number"], options=options)
    files = list(cache.iterdir())
    assert len(files) == 1 and key.exists()
    assert any("persisted key" in n for n in server.notes)
    mtime = files[0].stat().st_mtime_ns
    again, _ = api.intersect_files(tables / "bank_a.csv", tables / "bank_b.csv", on=["id_number"], options=options)
    assert again.intersection_size == first.intersection_size == len(_plain(tables))
    assert [f.stat().st_mtime_ns for f in cache.iterdir()] == [mtime]  # reused, not rewritten
    # another input (phone column) gets its own cache entry
    api.intersect_files(tables / "bank_a.csv", tables / "bank_b.csv", on=["phone"], options=options)
    assert len(list(cache.iterdir())) == 2


def test_ecdh_prepared_set_unbalanced_mode(tables: Path, tmp_path: Path) -> None:
    from psi.parallel import Executor
    from psi.records import read_keys
    from psi.server_state import prepare_ecdh

    key, prepared = tmp_path / "ecdh.key", tmp_path / "b.prepared"
    table = read_keys(tables / "bank_b.csv", ["id_number"])
    with Executor(1) as ex:
        prepare_ecdh(table.keys, group="x25519", key_path=key, out=prepared, executor=ex)
    options = api.PsiOptions(protocol="ecdh", workers=1, server_key=key, prepared=prepared)
    client, _ = api.intersect_files(tables / "bank_a.csv", tables / "bank_b.csv", on=["id_number"], options=options)
    assert client.intersection_size == len(_plain(tables))
    with pytest.raises(InputError, match="another input"):
        api.intersect_files(tables / "bank_a.csv", tables / "bank_b.csv", on=["phone"], server_on=["phone"],
                            options=options)


def test_lazy_top_level_api() -> None:
    assert psi.connect is api.connect and psi.align is api.align and psi.intersect is api.intersect
