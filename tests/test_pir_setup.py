"""``pir setup``: PSI's rules for duplicate and empty ids, and replacing a live table safely."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.pir import pir_group
from pir import api
from pir.database import Table
from pir.protocol import PirClient, PirServerSession
from pir.store import load_table
from psi.driver import run_pair
from psi.errors import InputError, UsageError


def _labels(db: Path, ids: list[str]) -> list[str | None]:
    table = load_table(db)
    client = PirClient([i.encode() for i in ids], settings=table.settings)
    run_pair(client, PirServerSession(table, settings=table.settings))
    return [r.label.decode() if r.label is not None else None for r in client.result()]


def _setup(tmp_path: Path, text: str, *args: str, out: str = "db"):
    source = tmp_path / "list.csv"
    source.write_text(text, encoding="utf-8")
    return CliRunner().invoke(pir_group, ["setup", "--input", str(source), "--on", "id", "--label", "reason",
                                          "--out", str(tmp_path / out), "--workers", "1", *args])


CONFLICT = "id,reason\n1001,fraud\n1002,ok\n 1001 ,sanctions\n"


def test_duplicate_ids_stop_by_default_naming_both_lines(tmp_path: Path) -> None:
    result = _setup(tmp_path, CONFLICT)
    assert result.exit_code == 2
    assert "line 4: duplicate key (first seen on line 2)" in result.output and "--dedup" in result.output
    assert not (tmp_path / "db").exists() or not any((tmp_path / "db").iterdir())  # nothing written


def test_dedup_first_and_keep_all(tmp_path: Path) -> None:
    result = _setup(tmp_path, CONFLICT, "--dedup", "first", "--json", out="first")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["entries"] == 2 and json.loads(result.stdout)["duplicates"] == 1
    assert _labels(tmp_path / "first", ["1001", "1002"]) == ["fraud", "ok"]
    result = _setup(tmp_path, CONFLICT + "1001,fraud\n", "--dedup", "keep-all", out="all")
    assert result.exit_code == 0, result.output
    assert _labels(tmp_path / "all", ["1001", "1002"]) == ["fraud; sanctions", "ok"]


def test_empty_ids_stop_unless_skipped(tmp_path: Path) -> None:
    text = "id,reason\n1001,fraud\n  ,lost label\n1003,x\n"
    result = _setup(tmp_path, text)
    assert result.exit_code == 2 and "line 3: empty value in key column 'id'" in result.output
    result = _setup(tmp_path, text, "--skip-empty-keys", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["skipped"] == 1 and json.loads(result.stdout)["entries"] == 2
    assert _labels(tmp_path / "db", ["1001", "1003"]) == ["fraud", "x"]


def test_python_api_applies_the_same_rules(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="entry 3: duplicate key .first seen on entry 1"):
        api.setup([("7", "a"), ("8", "b"), ("7", "c")], tmp_path / "db", workers=1)
    with pytest.raises(InputError, match="entry 2: empty value"):
        api.setup([("7", "a"), ("", "b")], tmp_path / "db", workers=1)
    report = api.setup([("7", "a"), ("", "b"), ("7", "c")], tmp_path / "db", workers=1, dedup="keep-all",
                       skip_empty=True)
    assert (report.entries, report.duplicates, report.skipped) == (1, 1, 1)
    assert _labels(tmp_path / "db", ["7"]) == ["a; c"]


def test_replacing_a_live_table_needs_replace(tmp_path: Path) -> None:
    assert _setup(tmp_path, "id,reason\n1,old\n").exit_code == 0
    before = load_table(tmp_path / "db").version
    result = _setup(tmp_path, "id,reason\n1,new\n")
    assert result.exit_code == 2 and "--replace" in result.output
    assert load_table(tmp_path / "db").version == before and _labels(tmp_path / "db", ["1"]) == ["old"]
    assert _setup(tmp_path, "id,reason\n1,new\n", "--replace").exit_code == 0
    assert load_table(tmp_path / "db").version != before and _labels(tmp_path / "db", ["1"]) == ["new"]
    with pytest.raises(UsageError):
        api.setup([("1", "x")], tmp_path / "db", workers=1)


def test_a_failed_replacement_leaves_the_previous_version_live(tmp_path: Path, monkeypatch) -> None:
    api.setup([("1", "old")], tmp_path / "db", workers=1)
    before = load_table(tmp_path / "db").version
    real_save = Table.save

    def save_then_fail(self: Table, directory: Path) -> None:
        real_save(self, directory)
        (directory / "matrix.npy").write_bytes(b"half")  # a crash mid-way through the new version
        raise OSError("disk full")

    monkeypatch.setattr(Table, "save", save_then_fail)
    with pytest.raises(OSError):
        api.setup([("1", "new")], tmp_path / "db", workers=1, replace=True)
    monkeypatch.undo()
    assert load_table(tmp_path / "db").version == before and _labels(tmp_path / "db", ["1"]) == ["old"]
    assert not [p for p in os.listdir(tmp_path / "db") if p.startswith(".")]  # no temporary left


def test_flat_tables_of_earlier_builds_still_load_and_are_replaced(tmp_path: Path) -> None:
    api.setup([("1", "old")], tmp_path / "new", workers=1)
    flat = tmp_path / "flat"
    load_table(tmp_path / "new").save(flat)  # the earlier layout: files straight in the directory
    assert _labels(flat, ["1"]) == ["old"]
    with pytest.raises(UsageError):
        api.setup([("1", "x")], flat, workers=1)
    api.setup([("1", "x")], flat, workers=1, replace=True)
    assert _labels(flat, ["1"]) == ["x"] and not (flat / "params.json").exists()
