"""GBK/GB18030 and BOM inputs, and the output format from --output's name (issue 11.8, 11.9)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from psi import api
from psi.encodings import resolve_encoding
from psi.errors import InputError, UsageError
from .conftest import tls_args

ROWS = [("110101199003071234", "张三", "北京"), ("220102198512120011", "李四", "上海"),
        ("330103197001010022", "王五", "广州"), ("440104196502020033", "赵六", "深圳")]


def _csv(rows: list[tuple[str, ...]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["id_number", "name", "city"])
    writer.writerows(rows)
    return out.getvalue()


@pytest.fixture()
def banks(tmp_path: Path) -> tuple[Path, Path]:
    a = tmp_path / "a_gbk.csv"
    a.write_bytes(_csv(ROWS[:3]).encode("gbk"))
    b = tmp_path / "b_utf8.csv"
    b.write_bytes(b"\xef\xbb\xbf" + _csv(ROWS[1:]).encode("utf-8"))  # UTF-8 with a BOM
    return a, b


def test_gbk_bank_matches_utf8_bank_and_writes_gbk(banks: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = banks
    out_a = tmp_path / "out_a.csv"
    options = api.PsiOptions(workers=1, encoding="gbk", reveal="both")
    client, server = api.intersect_files(a, b, on=["id_number"], client_output=out_a, options=options)
    assert client.intersection_size == 2
    text = out_a.read_bytes().decode("gbk")  # the output keeps the input's encoding
    assert sorted(r["name"] for r in csv.DictReader(io.StringIO(text))) == sorted(["李四", "王五"])
    assert client.input["file"] == str(a)  # the summary names the real file, not the UTF-8 copy


def test_gbk_without_encoding_names_the_line_and_suggests_gbk(banks: tuple[Path, Path]) -> None:
    a, b = banks
    with pytest.raises(InputError, match=r"line 2.*--encoding gbk"):
        api.intersect_files(a, b, on=["id_number"], options=api.PsiOptions(workers=1))


def test_bom_is_detected(tmp_path: Path) -> None:
    f = tmp_path / "x.csv"
    f.write_bytes(b"\x84\x31\x95\x33" + "id\n张\n".encode("gb18030"))
    assert resolve_encoding(f, None) == "gb18030"
    assert resolve_encoding(f, "gbk") == "gb18030"  # the mark wins
    f.write_bytes(b"\xef\xbb\xbfid\n")
    assert resolve_encoding(f, "gbk") == "utf-8-sig"


def test_gb18030_bom_input_is_read(tmp_path: Path) -> None:
    a = tmp_path / "a.csv"
    a.write_bytes(b"\x84\x31\x95\x33" + _csv(ROWS[:2]).encode("gb18030"))
    b = tmp_path / "b.csv"
    b.write_text(_csv(ROWS[1:2]), encoding="utf-8")
    client, _ = api.intersect_files(a, b, on=["id_number"], options=api.PsiOptions(workers=1))
    assert client.intersection_size == 1


def test_output_format_follows_the_output_name(banks: tuple[Path, Path], tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    _a, b = banks
    plain = tmp_path / "a.csv"
    plain.write_text(_csv(ROWS[:3]), encoding="utf-8")
    parquet_out, tsv_out = tmp_path / "a.parquet", tmp_path / "a.tsv"
    api.intersect_files(plain, b, on=["id_number"], client_output=parquet_out, options=api.PsiOptions(workers=1))
    table = pq.read_table(parquet_out)
    assert table.column("id_number").to_pylist() == [ROWS[1][0], ROWS[2][0]]
    assert table.column("name").to_pylist() == ["李四", "王五"]
    # and back: Parquet input, CSV output named .csv holds CSV text, not Parquet bytes
    csv_out = tmp_path / "back.csv"
    api.intersect_files(parquet_out, b, on=["id_number"], client_output=csv_out, options=api.PsiOptions(workers=1))
    assert not csv_out.read_bytes().startswith(b"PAR1")
    assert [r["name"] for r in csv.DictReader(io.StringIO(csv_out.read_text(encoding="utf-8")))] == ["李四", "王五"]
    api.intersect_files(plain, b, on=["id_number"], client_output=tsv_out, options=api.PsiOptions(workers=1))
    assert tsv_out.read_text(encoding="utf-8").splitlines()[1].split("\t")[1] == "李四"


def test_output_format_contradicting_the_name_is_refused(banks: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = banks
    with pytest.raises(UsageError, match="--output-format parquet"):
        api.connect(a, on=["id_number"], peer="127.0.0.1:1", tls=None, output=tmp_path / "a.csv",
                    options=api.PsiOptions(workers=1, output_format="parquet"))


def test_cli_encoding_option(banks: tuple[Path, Path], tmp_path: Path, pki: Path) -> None:
    from click.testing import CliRunner

    from cli.main import cli

    a, b = banks
    ex = tmp_path / "ex"
    runner = CliRunner()
    import threading

    box: dict[str, object] = {}

    def server() -> None:
        box["s"] = CliRunner().invoke(cli, ["psi", "serve", "--input", str(b), "--on", "id_number", "--via-dir", str(ex),
                                            "--workers", "1", "--quiet", *tls_args(pki, "bank-b")])

    t = threading.Thread(target=server)
    t.start()
    result = runner.invoke(cli, ["psi", "connect", "--input", str(a), "--on", "id_number", "--via-dir", str(ex),
                                 "--encoding", "gbk", "--output", str(tmp_path / "o.csv"), "--workers", "1", "--quiet",
                                 *tls_args(pki, "bank-a")])
    t.join(60)
    assert result.exit_code == 0, result.output
    assert "李四" in (tmp_path / "o.csv").read_bytes().decode("gbk")


def test_pir_setup_reads_gbk_and_names_the_line_without_encoding(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from cli.main import cli

    listed = tmp_path / "blacklist.csv"
    listed.write_bytes("id_number,reason\n110101199003071234,欺诈\n220102198512120011,制裁\n".encode("gbk"))
    bad = CliRunner().invoke(cli, ["pir", "setup", "--input", str(listed), "--on", "id_number", "--label", "reason",
                                   "--out", str(tmp_path / "db1"), "--workers", "1", "--quiet"])
    assert bad.exit_code == 2 and "line 2" in bad.output and "--encoding gbk" in bad.output, bad.output
    assert "codec" not in bad.output
    good = CliRunner().invoke(cli, ["pir", "setup", "--input", str(listed), "--on", "id_number", "--label", "reason",
                                    "--out", str(tmp_path / "db2"), "--workers", "1", "--quiet", "--encoding", "gbk"])
    assert good.exit_code == 0, good.output
