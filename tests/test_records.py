"""Reading key columns (CSV/TSV/Parquet), error messages, and atomic row output."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from psi import records
from psi.errors import InputError, UsageError
from psi.normalize import Normalization
from psi.records import count_rows, detect_format, encode_key, read_keys, write_rows


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


@pytest.fixture
def people(tmp_path: Path) -> Path:
    return write(
        tmp_path / "people.csv",
        "id,name,phone\n"
        "1,Alice,138 0013 8000\n"
        "2,\"Bob, Jr.\",13900139000\n"
        "\n"
        "3,\"multi\nline\",13700137000\n"
        "1,Alice again,13600136000\n",
    )


def test_read_keys_basic_and_counts(people: Path) -> None:
    table = read_keys(people, ["id"], dedup="first")
    assert table.header == ["id", "name", "phone"]
    assert table.keys == [b"1", b"2", b"3"]
    assert table.rows_read == 4 and table.unique_keys == 3 and table.duplicate_rows == 1
    assert table.row_numbers.tolist() == [0, 1, 2]
    assert table.counts().tolist() == [1, 1, 1]


def test_keep_all_groups_rows(people: Path) -> None:
    table = read_keys(people, ["id"], dedup="keep-all")
    assert table.counts().tolist() == [2, 1, 1]
    assert table.rows_of(0).tolist() == [0, 3]
    assert table.rows_of(2).tolist() == [2]
    assert table.summary()["duplicate_rows"] == 1


def test_duplicate_error_names_both_lines(people: Path) -> None:
    with pytest.raises(InputError, match=r"people.csv line 7: duplicate key \(first seen on line 2\)"):
        read_keys(people, ["id"])


def test_normalisation_applies(people: Path) -> None:
    table = read_keys(people, ["phone"], normalization=Normalization(phone=True))
    assert table.keys[0] == b"13800138000"


def test_composite_keys_are_unambiguous(tmp_path: Path) -> None:
    assert encode_key(["a,b", "c"]) != encode_key(["a", "b,c"])
    assert encode_key(["ab", ""]) != encode_key(["a", "b"])
    assert encode_key(["x"]) == b"x"
    path = write(tmp_path / "k.csv", 'a,b\n"x,y",z\nx,"y,z"\n')
    table = read_keys(path, ["a", "b"])
    assert len(table.keys) == 2 and table.keys[0] != table.keys[1]
    assert table.keys[0] == b"\x00\x00\x00\x03x,y\x00\x00\x00\x01z"


def test_utf8_bom_and_crlf(tmp_path: Path) -> None:
    path = write(tmp_path / "b.csv", b"\xef\xbb\xbfid,name\r\n\xe5\xbc\xa0,x\r\n")
    table = read_keys(path, ["id"])
    assert table.header == ["id", "name"] and table.keys == ["张".encode()]


def test_tsv_by_extension_and_format(tmp_path: Path) -> None:
    path = write(tmp_path / "t.tsv", 'id\tname\n1\t"quoted"\n')
    assert detect_format(path) == "tsv"
    assert read_keys(path, ["name"]).keys == [b'"quoted"']  # TSV has no quoting
    other = write(tmp_path / "t.txt", "id\tname\n1\tx\n")
    with pytest.raises(UsageError, match="--format"):
        read_keys(other, ["id"])
    assert read_keys(other, ["id"], fmt="tsv").keys == [b"1"]


@pytest.mark.parametrize(
    "content, on, message",
    [
        (b"", ["id"], r"e\.csv: file is empty"),
        (b"\n\n", ["id"], r"e\.csv: file is empty"),
        (b"id,name\n1,a\n", ["ID"], r"no key column 'ID'; the columns are: 'id', 'name'; did you mean 'id'"),
        (b"id,name\n1,a\n", ["phone"], r"no key column 'phone'; the columns are: 'id', 'name'$"),
        (b"110101199003071234,a\n", ["id"], r"does the file have a header row\?"),
        (b"id,name\n1,a\n2,b,c\n", ["id"], r"e\.csv line 3: 3 fields, but the header has 2"),
        (b"id,name\n1,a\n2\n", ["id"], r"e\.csv line 3: 1 fields, but the header has 2"),
        (b"id,name\n1,a\n\xff\xfe,b\n", ["id"], r"e\.csv line 3: not valid UTF-8"),
        (b"id,name\n1,a\n ,b\n", ["id"], r"e\.csv line 3: empty value in key column 'id'"),
        (b"id,name\n1,a\n\n\n2,\"b\nc\n", ["id"], r"e\.csv line 6: malformed CSV"),
        (b"id,name\n1,a\n2,\"b\"x\n", ["id"], r"e\.csv line 3: malformed CSV"),
        (b"id,id\n1,2\n", ["id"], r"key column 'id' appears 2 times"),
    ],
)
def test_malformed_inputs_name_file_and_line(tmp_path: Path, content: bytes, on: list[str], message: str) -> None:
    path = write(tmp_path / "e.csv", content)
    with pytest.raises(InputError, match=message) as info:
        read_keys(path, on)
    assert "\n" not in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        read_keys(tmp_path / "nope.csv", ["id"])


def test_error_never_shows_key_values(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "id\n110101199003071234\n110101199003071234\n")
    with pytest.raises(InputError) as info:
        read_keys(path, ["id"])
    assert "110101199003071234" not in str(info.value)


def test_skip_empty_keys_counts(tmp_path: Path) -> None:
    path = write(tmp_path / "s.csv", "id,x\n1,a\n,b\n  ,c\n2,d\n")
    table = read_keys(path, ["id"], skip_empty=True)
    assert table.keys == [b"1", b"2"] and table.skipped_rows == 2
    assert table.row_numbers.tolist() == [0, 3]


def test_regex_mismatch_is_error_or_skipped(tmp_path: Path) -> None:
    path = write(tmp_path / "r.csv", "id\nID-1\nbad\n")
    norm = Normalization(regex=r"ID-(\d+)")
    with pytest.raises(InputError, match=r"line 3: value in key column 'id' does not match the key regex"):
        read_keys(path, ["id"], normalization=norm)
    assert read_keys(path, ["id"], normalization=norm, skip_empty=True).keys == [b"1"]


def test_header_only_file_has_no_keys(tmp_path: Path) -> None:
    path = write(tmp_path / "h.csv", "id,name\n")
    table = read_keys(path, ["id"])
    assert table.keys == [] and table.rows_read == 0
    with pytest.raises(InputError, match="no key column"):
        read_keys(path, ["nope"])


def test_progress_callback(people: Path) -> None:
    seen: list[int] = []
    read_keys(people, ["id"], dedup="first", progress=seen.append)
    assert seen[-1] == 4


# -- writing ---------------------------------------------------------------------------------
def read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8-sig") as handle:
        return list(csv.reader(handle))


def test_write_rows_any_order_with_empty_rows(people: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    assert write_rows(people, [3, None, 0, 2, 2], out) == 5
    rows = read_csv(out)
    assert rows[0] == ["id", "name", "phone"]
    assert rows[1] == ["1", "Alice again", "13600136000"]
    assert rows[2] == ["", "", ""]
    assert rows[3] == ["1", "Alice", "138 0013 8000"]
    assert rows[4] == rows[5] == ["3", "multi\nline", "13700137000"]
    assert count_rows(out) == 5


def test_write_rows_numpy_order_and_bytes_preserved(tmp_path: Path) -> None:
    src = write(tmp_path / "s.csv", b'\xef\xbb\xbfid,amount\r\n1,"0012"\r\n2,3.50')
    out = tmp_path / "o.csv"
    write_rows(src, np.array([1, -1, 0]), out)
    assert out.read_bytes() == b'\xef\xbb\xbfid,amount\r\n2,3.50\r\n,\r\n1,"0012"\r\n'


def test_write_rows_single_column_empty_row_is_not_blank(tmp_path: Path) -> None:
    src = write(tmp_path / "one.csv", "id\na\nb\n")
    out = tmp_path / "o.csv"
    write_rows(src, [1, None, 0], out)
    assert read_keys(out, ["id"], skip_empty=True).rows_read == 3


def test_write_rows_tsv(tmp_path: Path) -> None:
    src = write(tmp_path / "s.tsv", "a\tb\n1\tx\n2\ty\n")
    out = tmp_path / "o.tsv"
    write_rows(src, [1, None], out)
    assert out.read_text() == "a\tb\n2\ty\n\t\n"


def test_write_rows_range_checked(people: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.csv"
    with pytest.raises(UsageError, match="row 4 requested but the file has 4 data rows"):
        write_rows(people, [0, 4], out)
    assert not out.exists()
    assert os.listdir(tmp_path) == ["people.csv"]


def test_write_rows_detects_a_changed_source(people: Path, tmp_path: Path) -> None:
    table = read_keys(people, ["id"], dedup="first")
    write_rows(people, [0], tmp_path / "ok.csv", expect_rows=table.rows_read)
    with people.open("a") as handle:
        handle.write("9,late,1\n")
    with pytest.raises(InputError, match="the file changed during the run"):
        write_rows(people, [0], tmp_path / "o.csv", expect_rows=table.rows_read)
    assert not (tmp_path / "o.csv").exists()


def test_write_rows_refuses_to_overwrite_its_input(people: Path) -> None:
    with pytest.raises(UsageError):
        write_rows(people, [0], people)


def test_atomic_write_leaves_nothing_when_interrupted(people: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    out.write_text("previous result\n")

    def order():
        yield 0
        yield 1
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        write_rows(people, order(), out)
    assert out.read_text() == "previous result\n"
    assert sorted(os.listdir(tmp_path)) == ["out.csv", "people.csv"]


def test_atomic_write_interrupted_mid_copy(people: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out.csv"
    real = records._write_csv

    def failing(src, fmt, order, handle, expect_rows):
        handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(records, "_write_csv", failing)
    with pytest.raises(InputError, match="cannot write the output .disk full."):
        write_rows(people, [0], out)
    assert sorted(os.listdir(tmp_path)) == ["people.csv"]
    monkeypatch.setattr(records, "_write_csv", real)
    write_rows(people, [0], out)
    assert sorted(os.listdir(tmp_path)) == ["out.csv", "people.csv"]


# -- Parquet ---------------------------------------------------------------------------------
def test_parquet_round_trip(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow", reason="pyarrow is not installed")
    pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow is not installed")
    table = pa.table({"id": ["a", "b", None, "a", "c"], "n": [1, 2, 3, 4, 5], "phone": [138, 139, 140, 141, 142]})
    src = tmp_path / "in.parquet"
    pq.write_table(table, src, row_group_size=2)
    with pytest.raises(InputError, match=r"in.parquet row 3: empty value in key column 'id'"):
        read_keys(src, ["id"], dedup="keep-all")
    keys = read_keys(src, ["id"], dedup="keep-all", skip_empty=True)
    assert keys.keys == [b"a", b"b", b"c"] and keys.counts().tolist() == [2, 1, 1]
    assert read_keys(src, ["phone"]).keys[0] == b"138"
    with pytest.raises(InputError, match=r"in.parquet row 4: duplicate key \(first seen on row 1\)"):
        read_keys(src, ["id"], skip_empty=True)
    with pytest.raises(InputError, match="no key column 'x'; the columns are: 'id', 'n', 'phone'"):
        read_keys(src, ["x"])
    out = tmp_path / "out.parquet"
    write_rows(src, [4, None, 0, 3, 1], out)
    back = pq.read_table(out)
    assert back.schema == table.schema
    assert back.column("n").to_pylist() == [5, None, 1, 4, 2]
    assert back.column("id").to_pylist() == ["c", None, "a", "a", "b"]
    assert count_rows(out) == 5
    write_rows(src, [], tmp_path / "empty.parquet")
    assert pq.read_table(tmp_path / "empty.parquet").num_rows == 0


def test_parquet_not_parquet(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow", reason="pyarrow is not installed")
    path = write(tmp_path / "x.parquet", "id\n1\n")
    with pytest.raises(InputError, match="not a readable Parquet file"):
        read_keys(path, ["id"])


def test_parquet_without_pyarrow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_pyarrow(name, *args, **kwargs):
        if name.startswith("pyarrow"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    with pytest.raises(InputError, match="needs pyarrow"):
        read_keys(write(tmp_path / "x.parquet", b"PAR1"), ["id"])


# -- the plain fast path equals the csv-module path -------------------------------------------

_PIECES = ["a", "b", "7", "12", " ", "  ", ",", "\t", '"', '""', "\n", "\r\n", "\r", "\u200b", "\ufeff",
           "\u3000", "１", "Ａ", "张", "é", "ß", "+86 138", "-", "x"]
_NORMS = [Normalization(), Normalization(trim=False), Normalization(fullwidth=True, casefold=True),
          Normalization(regex=r"(\d+)"), Normalization(phone=True), Normalization(casefold=True)]


def _field() -> st.SearchStrategy[str]:
    return st.lists(st.sampled_from(_PIECES), max_size=3).map("".join)


@st.composite
def _csv_files(draw: st.DrawFn) -> tuple[bytes, str]:
    fmt = draw(st.sampled_from(["csv", "tsv"]))
    sep = "," if fmt == "csv" else "\t"
    width = draw(st.integers(1, 3))
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    header = sep.join(f"c{i}" for i in range(width))
    rows = draw(st.lists(st.one_of(
        st.lists(st.sampled_from(["1", "2", "3", " 1", "Ａ", "a", "张", "", "a b"]), min_size=width, max_size=width),
        st.lists(_field(), min_size=width, max_size=width),
        st.lists(_field(), min_size=1, max_size=4),
    ), max_size=12))
    lines = [header]
    raw = draw(st.booleans())  # raw: no quoting at all (tricky and malformed input)
    for fields in rows:
        if raw or fmt == "tsv":
            lines.append(sep.join(fields))
        else:
            lines.append(sep.join('"' + f.replace('"', '""') + '"' if any(c in f for c in ',"\r\n') else f
                                  for f in fields))
        if draw(st.integers(0, 9)) == 0:
            lines.append("")  # a blank line
    text = newline.join(lines) + draw(st.sampled_from([newline, "", "\n\n"]))
    data = text.encode("utf-8")
    if draw(st.booleans()):
        data = b"\xef\xbb\xbf" + data
    if draw(st.integers(0, 19)) == 0:
        at = draw(st.integers(0, len(data)))
        data = data[:at] + b"\xff" + data[at:]
    return data, fmt


def _outcome(path: Path, fmt: str, on: list[str], **options: object) -> object:
    try:
        t = read_keys(path, on, fmt=fmt, **options)  # type: ignore[arg-type]
    except (InputError, UsageError) as err:
        return type(err).__name__, str(err)
    return (t.header, t.columns, t.keys, t.row_numbers.tolist(), t.row_keys.tolist(), t.rows_read,
            t.duplicate_rows, t.skipped_rows)


def _write_with_offsets(path: Path, fmt: str, on: list[str], out: Path) -> object:
    """Write as the session does: with the row offsets read_keys recorded (no second scan)."""
    try:
        t = read_keys(path, on, fmt=fmt, dedup="keep-all", skip_empty=True)
    except (InputError, UsageError):
        return None
    total = t.rows_read
    write_rows(path, [*range(total - 1, -1, -1), None, *range(total)], out, fmt=fmt, expect_rows=total,
               offsets=t.offsets)
    return total, out.read_bytes()


def _write_outcome(path: Path, fmt: str, out: Path) -> object:
    try:
        total = count_rows(path, fmt=fmt)
        # expect_rows: the row offsets go into one preallocated array (without: grown in parts)
        write_rows(path, [*range(total - 1, -1, -1), None, *range(total)], out, fmt=fmt,
                   expect_rows=total if total % 2 else None)
    except (InputError, UsageError) as err:
        return type(err).__name__, str(err)
    return total, out.read_bytes()


@settings(max_examples=int(os.environ.get("PSIQ_FUZZ_EXAMPLES", "400")), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(file=_csv_files(), block=st.sampled_from([1, 7, 16, 64, 1 << 22]), norm=st.sampled_from(_NORMS),
       dedup=st.sampled_from(["error", "first", "keep-all"]), skip_empty=st.booleans(),
       on=st.sampled_from([["c0"], ["c1"], ["c0", "c1"], ["c2", "c0"]]))
@example(file=(b'c0,c1\n"x\ny",1\n2,3\n', "csv"), block=1, norm=Normalization(), dedup="error",
         skip_empty=False, on=["c0"])
def test_fast_path_matches_csv_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, file: tuple[bytes, str],
                                      block: int, norm: Normalization, dedup: str, skip_empty: bool,
                                      on: list[str]) -> None:
    data, fmt = file
    path = write(tmp_path / "in.dat", data)
    options = dict(normalization=norm, dedup=dedup, skip_empty=skip_empty)
    with monkeypatch.context() as patch:
        patch.setattr(records, "_FAST", False)
        expected = _outcome(path, fmt, on, **options)
        expected_write = _write_outcome(path, fmt, tmp_path / "slow.out")
        slow_offsets = _write_with_offsets(path, fmt, on, tmp_path / "slow2.out")
    with monkeypatch.context() as patch:
        patch.setattr(records, "_SCAN_BLOCK", block)
        assert _outcome(path, fmt, on, **options) == expected
        assert _write_outcome(path, fmt, tmp_path / "fast.out") == expected_write
        fast_offsets = _write_with_offsets(path, fmt, on, tmp_path / "fast2.out")
        assert fast_offsets == slow_offsets
        if fast_offsets is not None:
            assert fast_offsets == expected_write


def test_recorded_offsets_are_not_trusted_after_the_file_changed(tmp_path: Path) -> None:
    path = write(tmp_path / "in.csv", "id,v\n1,a\n2,b\n")
    table = read_keys(path, ["id"])
    assert table.offsets is not None and table.offsets.count == 2
    write(path, "id,v\n1,aaaa\n2,bbbb\n")  # same rows, other bytes: the writer scans again
    os.utime(path, ns=(1, 1))
    write_rows(path, [1, 0], tmp_path / "out.csv", expect_rows=2, offsets=table.offsets)
    assert (tmp_path / "out.csv").read_bytes() == b"id,v\n2,bbbb\n1,aaaa\n"
    write(path, "id,v\n1,a\n")  # and a changed row count is still refused
    with pytest.raises(InputError, match="the file changed during the run"):
        write_rows(path, [0], tmp_path / "out2.csv", expect_rows=2, offsets=table.offsets)


def test_fast_path_big_clean_file_matches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = ["id,name,phone"] + [f"{i % 5000:06d},张{i},+86 138{i:08d}" for i in range(20_000)]
    rows[7000] = ' 12,"quoted, name",1'  # one quoted stretch in the middle
    path = write(tmp_path / "big.csv", "\r\n".join(rows) + "\r\n")
    monkeypatch.setattr(records, "_SCAN_BLOCK", 4096)
    for on, norm, dedup in [(["id"], Normalization(), "first"), (["id", "name"], Normalization(), "keep-all"),
                            (["phone"], Normalization(phone=True), "error"), (["id"], Normalization(), "error")]:
        fast = _outcome(path, "csv", on, normalization=norm, dedup=dedup)
        monkeypatch.setattr(records, "_FAST", False)
        assert _outcome(path, "csv", on, normalization=norm, dedup=dedup) == fast
        monkeypatch.setattr(records, "_FAST", True)


def test_write_rows_uses_the_recorded_offsets_without_scanning_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The offsets recorded while reading the keys are what the writer copies by (rowoffsets.py):
    with the rescan made to fail, the output is still right."""
    path = write(tmp_path / "in.csv", 'id,v\n1,a\n2,"b,\nc"\n3,d\n')
    table = read_keys(path, ["id"])
    assert table.offsets is not None and table.offsets.count == 3

    def no_rescan(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the input was scanned again")

    monkeypatch.setattr(records, "_scan_offsets", no_rescan)
    write_rows(path, [2, 0, 1], tmp_path / "out.csv", expect_rows=3, offsets=table.offsets)
    assert (tmp_path / "out.csv").read_bytes() == b'id,v\n3,d\n1,a\n2,"b,\nc"\n'
