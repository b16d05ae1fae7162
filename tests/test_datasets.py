"""Synthetic dataset generator, the committed samples and the ``datasets`` CLI group."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.datasets import datasets_group
from psiq_datasets import SAMPLE_SEED, sample_dir
from psiq_datasets.generate import MOBILE_PREFIXES, REGIONS, generate, id_check_character, validate_id_number
from psi.records import read_keys


def rows_of(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("ds")
    return out, generate(out, 2000, 0.25, seed=7, blacklist_rows=1500)


def test_known_id_numbers() -> None:
    # the example number printed in GB 11643-1999
    assert id_check_character("11010519491231002") == "X"
    assert validate_id_number("11010519491231002X")
    assert validate_id_number("11010519491231002x")
    assert not validate_id_number("110105194912310021")  # wrong check character
    assert not validate_id_number("11010519491331002X")  # month 13
    assert not validate_id_number("01010519491231002X")
    assert not validate_id_number("1101051949123100X")
    assert not validate_id_number("１１０１０５１９４９１２３１００２X")  # full-width digits


def test_keys_are_valid_and_plausible(small) -> None:
    out, _summary = small
    regions = {code for code, _name in REGIONS}
    for name in ("bank_a.csv", "bank_b.csv"):
        rows = rows_of(out / name)
        assert len(rows) == 2000
        for row in rows:
            assert validate_id_number(row["id_number"]), row["id_number"]
            assert row["id_number"][:6] in regions
            assert 1950 <= int(row["id_number"][6:10]) <= 2005
            assert len(row["phone"]) == 11 and row["phone"].isdigit() and row["phone"][:3] in MOBILE_PREFIXES
            assert row["email"].count("@") == 1
        for key in ("id_number", "phone", "email"):
            assert len({row[key] for row in rows}) == len(rows)
    for row in rows_of(out / "blacklist.csv"):
        assert validate_id_number(row["id_number"])
        assert row["reason"] in {"fraud", "overdue-90d", "aml-watch", "sanctions", "identity-theft", "court-enforcement"}


def test_overlap_and_expected_counts(small) -> None:
    out, summary = small
    expected = json.loads((out / "expected.json").read_text())
    assert expected["intersection"]["bank_a&bank_b"] == 500 == summary["intersection"]["bank_a&bank_b"]
    a_rows, b_rows = rows_of(out / "bank_a.csv"), rows_of(out / "bank_b.csv")
    for key in ("id_number", "phone", "email"):
        assert len({r[key] for r in a_rows} & {r[key] for r in b_rows}) == 500
    # the shared customers agree on every key at once
    by_id = {r["id_number"]: r for r in a_rows}
    for r in b_rows:
        if r["id_number"] in by_id:
            other = by_id[r["id_number"]]
            assert (other["phone"], other["email"], other["name"]) == (r["phone"], r["email"], r["name"])
    blacklist = {r["id_number"] for r in rows_of(out / "blacklist.csv")}
    assert len(blacklist) == 1500 == expected["rows"]["blacklist"]
    a_ids, b_ids = {r["id_number"] for r in a_rows}, {r["id_number"] for r in b_rows}
    assert len(a_ids & blacklist) == expected["intersection"]["bank_a&blacklist"] > 0
    assert len(b_ids & blacklist) == expected["intersection"]["bank_b&blacklist"] > 0
    assert len(a_ids & b_ids & blacklist) == expected["intersection"]["bank_a&bank_b&blacklist"]


def test_deterministic_per_seed(tmp_path: Path, small) -> None:
    out, _summary = small
    again = tmp_path / "again"
    generate(again, 2000, 0.25, seed=7, blacklist_rows=1500)
    assert digest(again) == digest(out)
    other = tmp_path / "other"
    generate(other, 2000, 0.25, seed=8, blacklist_rows=1500)
    assert digest(other)["bank_a.csv"] != digest(out)["bank_a.csv"]


@pytest.mark.parametrize("rows, rows_b, overlap, shared", [(0, None, 0.5, 0), (10, None, 1.0, 10),
                                                           (10, None, 0.0, 0), (100, 40, 0.5, 20)])
def test_edge_sizes(tmp_path: Path, rows: int, rows_b: int | None, overlap: float, shared: int) -> None:
    summary = generate(tmp_path, rows, overlap, seed=1, blacklist_rows=30, rows_b=rows_b)
    assert summary["intersection"]["bank_a&bank_b"] == shared
    a = set(read_keys(tmp_path / "bank_a.csv", ["id_number"]).keys)
    b = set(read_keys(tmp_path / "bank_b.csv", ["id_number"]).keys)
    assert len(a & b) == shared and len(b) == (rows if rows_b is None else rows_b)


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        generate(tmp_path, 10, 1.5, seed=1)
    with pytest.raises(ValueError):
        generate(tmp_path, -1, 0.5, seed=1)


def test_cli_generate(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        datasets_group, ["generate", "--out", str(tmp_path), "--rows", "300", "--overlap", "0.5", "--seed", "3",
                         "--blacklist-rows", "100"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["intersection"]["bank_a&bank_b"] == 150
    assert (tmp_path / "expected.json").exists()
    bad = CliRunner().invoke(datasets_group, ["generate", "--out", str(tmp_path), "--overlap", "2"])
    assert bad.exit_code == 2


def test_committed_samples_match_the_generator(tmp_path: Path) -> None:
    sample = sample_dir()
    expected = json.loads((sample / "expected.json").read_text())
    assert expected["seed"] == SAMPLE_SEED
    generate(tmp_path, expected["rows"]["bank_a"], expected["overlap"], SAMPLE_SEED, expected["rows"]["blacklist"])
    assert digest(tmp_path) == digest(sample)
    assert sum(p.stat().st_size for p in sample.iterdir()) < 5_000_000


def test_small_banks_are_not_all_blacklisted(tmp_path) -> None:
    """Issue 11.12: '--rows 2000' with the default 20,000-entry blacklist listed every customer."""
    import importlib.util
    from pathlib import Path

    # this checkout's generator (an installed psiq_datasets may be another checkout's)
    spec = importlib.util.spec_from_file_location(
        "_psiq_generate_here", Path(__file__).resolve().parent.parent / "datasets" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    generate = module.generate

    summary = generate(tmp_path, 2000, 0.3, 1, None)
    assert summary["intersection"]["bank_a&blacklist"] <= 2000 * 2 // 5
    assert summary["intersection"]["bank_b&blacklist"] <= 2000 * 2 // 5
    assert summary["rows"]["blacklist"] == 20_000
