"""Database sources and sinks against real databases: PostgreSQL 15 (a throwaway server), SQLite, DuckDB.

Two ``psiq`` processes read two banks' tables and write aligned tables back; the answer is
compared with the CSV path on the same data. Then the faults: wrong password, unreachable
server, missing table/column, empty query, a password on the command line, an existing output
table, the connection terminated mid-read and mid-write, a table changed between the passes.
"""

from __future__ import annotations

import csv
import decimal
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

sa = pytest.importorskip("sqlalchemy", reason="the sql extra (SQLAlchemy 2) is not installed")

from psi import api  # noqa: E402
from psi.errors import InputError, TransportError, UsageError  # noqa: E402
from psi.io import SqlSink, SqlSource, write_rows  # noqa: E402
from psi.io import read_keys as io_read_keys  # noqa: E402
from psi.io import sql as sqlio  # noqa: E402
from psi.io import sink as sinkio  # noqa: E402
from psi.normalize import Normalization  # noqa: E402
from psi.records import read_keys as csv_read_keys  # noqa: E402
from psiq_datasets.generate import generate  # noqa: E402

from . import pgserver  # noqa: E402
from .conftest import free_port, psiq_cmd, subprocess_env  # noqa: E402

OPTIONS = api.PsiOptions(reveal="both", workers=1)


# -- fixtures -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def banks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("banks")
    generate(d, rows=600, overlap=0.5, seed=11, blacklist_rows=80)
    return d


@pytest.fixture(scope="session")
def pg() -> Any:
    pytest.importorskip("psycopg", reason="the postgresql extra (psycopg) is not installed")
    try:
        server = pgserver.start(free_port())
    except RuntimeError as err:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the PostgreSQL tests, but the server did not start: {err}")
        pytest.skip(f"PostgreSQL server cannot be started here: {err}")
    yield server
    server.stop()


@pytest.fixture()
def pg_env(pg: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("PSIQ_DB_PASSWORD", pgserver.PASSWORD)
    return pg


def _csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.reader(handle))
    return rows[0], rows[1:]


def _load_pg(pg: Any, banks: Path) -> None:
    import psycopg

    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS bank_a CASCADE; DROP SCHEMA IF EXISTS bank_b CASCADE")
        conn.execute("CREATE SCHEMA bank_a; CREATE SCHEMA bank_b")
        header_a, _ = _csv(banks / "bank_a.csv")
        typed = {"customer_no": "TEXT PRIMARY KEY", "age": "INTEGER", "balance": "NUMERIC(14,2)", "opened_on": "DATE"}
        columns = ", ".join(f"{c} {typed.get(c, 'TEXT')}" for c in header_a)
        conn.execute(f"CREATE TABLE bank_a.customers ({columns})")
        header_b, _ = _csv(banks / "bank_b.csv")
        conn.execute(f"CREATE TABLE bank_b.customers ({', '.join(f'{c} TEXT' for c in header_b)})")
        for bank in ("bank_a", "bank_b"):
            with conn.cursor().copy(f"COPY {bank}.customers FROM STDIN WITH (FORMAT csv, HEADER true)") as copy:
                copy.write((banks / f"{bank}.csv").read_bytes())


def _load_file_db(url: str, csv_path: Path) -> None:
    header, rows = _csv(csv_path)
    engine = sa.create_engine(url)
    metadata = sa.MetaData()
    table = sa.Table("customers", metadata, *(sa.Column(c, sa.Text) for c in header))
    with engine.begin() as conn:
        metadata.create_all(conn)
        conn.execute(sa.insert(table), [dict(zip(header, row)) for row in rows])
    engine.dispose()


def _table_rows(url: str, table: str, order_column: str = "psiq_row",
                positions: bool = True) -> tuple[list[str], list[tuple[Any, ...]]]:
    extra = {"connect_args": {"password": pgserver.PASSWORD}} if url.startswith("postgresql") else {}
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"), **extra)
    with engine.connect() as conn:  # no reflection: duckdb-engine's fails on recent DuckDB
        result = conn.exec_driver_sql(f"SELECT * FROM {table} ORDER BY {order_column}")
        columns, rows = list(result.keys()), result.all()
    engine.dispose()
    if positions:
        assert [r[0] for r in rows] == list(range(len(rows))), "positions are 0..n-1"
    return columns[1:], [tuple(r[1:]) for r in rows]


def _same(a: Any, b: str) -> bool:
    if a is None:
        return b == ""
    if str(a) == b:
        return True
    try:
        return decimal.Decimal(str(a)) == decimal.Decimal(b)
    except decimal.InvalidOperation:
        return False


def _pairs(rows_a: list[Any], rows_b: list[Any], id_a: int, id_b: int) -> set[tuple[str, str]]:
    assert len(rows_a) == len(rows_b)
    for ra, rb in zip(rows_a, rows_b):
        assert str(ra[id_a]) == str(rb[id_b])  # aligned: same customer on both sides
    return {(str(ra[id_a]), str(rb[id_b])) for ra, rb in zip(rows_a, rows_b)}


def _csv_reference(banks: Path, tmp: Path) -> tuple[list[str], list[list[str]], list[str], list[list[str]]]:
    out_a, out_b = tmp / "ref_a.csv", tmp / "ref_b.csv"
    api.intersect_files(banks / "bank_a.csv", banks / "bank_b.csv", on=["id_number"], client_output=out_a,
                        server_output=out_b, options=OPTIONS)
    return (*_csv(out_a), *_csv(out_b))  # type: ignore[return-value]


def _run_pair(url_a: str, table_a: str, url_b: str, table_b: str, out_a: str, out_b: str, extra: list[str] = (),
              env: dict[str, str] | None = None) -> None:
    port = free_port()
    environment = {**subprocess_env(), **(env or {})}
    common = ["--on", "id_number", "--reveal", "both", "--insecure", "--workers", "1", "--json", "--quiet", *extra]
    server = subprocess.Popen(psiq_cmd() + ["psi", "serve", "--listen", f"127.0.0.1:{port}", "--input", url_b,
                                            "--table", table_b, "--output", out_b, "--output-table", "aligned_b",
                                            *common], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=environment)
    try:
        client = subprocess.run(psiq_cmd() + ["psi", "connect", "--peer", f"127.0.0.1:{port}", "--input", url_a,
                                              "--table", table_a, "--output", out_a, "--output-table", "aligned_a",
                                              *common], capture_output=True, text=True, env=environment, timeout=180)
        _out, server_err = server.communicate(timeout=60)
    finally:
        server.kill()
    assert client.returncode == 0, client.stderr
    assert server.returncode == 0, server_err
    assert pgserver.PASSWORD not in client.stdout + client.stderr + server_err


# -- end to end: two processes, compared with the CSV path ---------------------------------
@pytest.mark.parametrize("backend", ["postgresql", "sqlite", "duckdb"])
def test_two_processes_read_and_write_tables_like_csv(backend: str, banks: Path, tmp_path: Path,
                                                       request: pytest.FixtureRequest) -> None:
    env = None
    if backend == "postgresql":
        pg = request.getfixturevalue("pg")
        _load_pg(pg, banks)
        url_a = url_b = pg.url()
        table_a, table_b = "bank_a.customers", "bank_b.customers"
        out_tables = ("aligned_a", "aligned_b")
        env = {"PSIQ_DB_PASSWORD": pgserver.PASSWORD}
    else:
        if backend == "duckdb":
            pytest.importorskip("duckdb_engine", reason="the duckdb extra is not installed")
        url_a, url_b = f"{backend}:///{tmp_path / 'a.db'}", f"{backend}:///{tmp_path / 'b.db'}"
        _load_file_db(url_a, banks / "bank_a.csv")
        _load_file_db(url_b, banks / "bank_b.csv")
        table_a = table_b = "customers"
        out_tables = ("aligned_a", "aligned_b")
    _run_pair(url_a, table_a, url_b, table_b, url_a, url_b, env=env)
    cols_a, rows_a = _table_rows(url_a, out_tables[0])
    cols_b, rows_b = _table_rows(url_b, out_tables[1])
    ref_header_a, ref_a, ref_header_b, ref_b = _csv_reference(banks, tmp_path)
    assert cols_a == ref_header_a and cols_b == ref_header_b
    assert len(rows_a) == len(ref_a) > 0
    id_a, id_b = cols_a.index("id_number"), cols_b.index("id_number")
    assert _pairs(rows_a, rows_b, id_a, id_b) == _pairs(ref_a, ref_b, id_a, id_b)
    by_id = {row[id_a]: row for row in ref_a}
    for row in rows_a:  # every column carried over, value for value
        assert all(_same(v, w) for v, w in zip(row, by_id[str(row[id_a])])), (row, by_id[str(row[id_a])])
    if backend == "postgresql":  # column types carried over from the source table
        engine = sa.create_engine(url_a.replace("postgresql://", "postgresql+psycopg://"),
                                  connect_args={"password": pgserver.PASSWORD})
        with engine.connect() as conn:
            types = dict(conn.exec_driver_sql(
                "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'aligned_a'").all())
        engine.dispose()
        assert types["age"] == "integer" and types["balance"] == "numeric" and types["opened_on"] == "date"
        assert types["psiq_row"] == "bigint"


def test_database_input_to_csv_output_matches_csv_path(banks: Path, tmp_path: Path) -> None:
    url_a, url_b = f"sqlite:///{tmp_path / 'a.db'}", f"sqlite:///{tmp_path / 'b.db'}"
    _load_file_db(url_a, banks / "bank_a.csv")
    _load_file_db(url_b, banks / "bank_b.csv")
    out_a, out_b = tmp_path / "a.csv", tmp_path / "b.csv"
    api.intersect_files(SqlSource(url_a, table="customers"), SqlSource(url_b, table="customers"), on=["id_number"],
                        client_output=out_a, server_output=out_b, options=OPTIONS)
    header_a, ref_a, header_b, ref_b = _csv_reference(banks, tmp_path)
    got_header_a, got_a = _csv(out_a)
    _header_b, got_b = _csv(out_b)
    assert got_header_a == header_a
    id_a, id_b = header_a.index("id_number"), header_b.index("id_number")
    assert _pairs(got_a, got_b, id_a, id_b) == _pairs(ref_a, ref_b, id_a, id_b)
    assert sorted(got_a) == sorted(ref_a)  # CSV text identical to the CSV path's
    assert (out_a.stat().st_mode & 0o777) == 0o600
    assert not list(tmp_path.glob(".psiq-spill-*"))


def test_dataframes_in_and_out(banks: Path, tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas", reason="pandas is optional")
    from psi.io import FrameSink

    frame_a = pd.read_csv(banks / "bank_a.csv", dtype=str, keep_default_na=False)
    frame_b = pd.read_csv(banks / "bank_b.csv", dtype=str, keep_default_na=False)
    sink_a, sink_b = FrameSink(), FrameSink()
    client, _server = api.intersect_files(frame_a, frame_b, on=["id_number"], client_output=sink_a,
                                          server_output=sink_b, options=OPTIONS)
    header_a, ref_a, header_b, ref_b = _csv_reference(banks, tmp_path)
    assert list(sink_a.frame.columns) == header_a and client.output == "DataFrame"
    rows_a = sink_a.frame.values.tolist()
    rows_b = sink_b.frame.values.tolist()
    id_a, id_b = header_a.index("id_number"), header_b.index("id_number")
    assert _pairs(rows_a, rows_b, id_a, id_b) == _pairs(ref_a, ref_b, id_a, id_b)


# -- the key pipeline is the CSV one ----------------------------------------------------------
def test_keys_from_a_table_equal_keys_from_the_same_csv(tmp_path: Path) -> None:
    values = [" 13800138000 ", "＋86 138-0013-8001", None, "+86 (138) 0013 8002", "line\nbreak", "X1", "x1", "13800138000"]
    url = f"sqlite:///{tmp_path / 'k.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (n INTEGER PRIMARY KEY, phone TEXT, code INTEGER)")
        for i, value in enumerate(values):
            conn.exec_driver_sql("INSERT INTO t VALUES (?, ?, ?)", (i, value, 1000 + i % 3))
    engine.dispose()
    with open(tmp_path / "k.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["n", "phone", "code"])
        for i, value in enumerate(values):
            writer.writerow([i, value or "", 1000 + i % 3])
    for normalization in (Normalization(), Normalization.parse("trim,fullwidth,phone,casefold")):
        for on in (["phone"], ["phone", "code"]):
            kwargs = dict(normalization=normalization, dedup="keep-all", skip_empty=True)
            from_db = io_read_keys(SqlSource(url, table="t"), on, **kwargs)
            from_csv = csv_read_keys(tmp_path / "k.csv", on, **kwargs)
            assert from_db.keys == from_csv.keys
            assert from_db.row_numbers.tolist() == from_csv.row_numbers.tolist()
            assert from_db.row_keys.tolist() == from_csv.row_keys.tolist()
            assert from_db.skipped_rows == from_csv.skipped_rows == 1


def test_a_query_source_and_a_duplicate_key_error(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'q.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (id TEXT, region TEXT)")
        conn.exec_driver_sql("INSERT INTO t VALUES ('a', 'n'), ('b', 's'), ('a', 's'), ('c', 'n')")
    engine.dispose()
    table = io_read_keys(SqlSource(url, query="SELECT id FROM t WHERE region = 'n'"), ["id"])
    assert sorted(table.keys) == [b"a", b"c"]
    with pytest.raises(InputError, match=r"row 2: duplicate key \(first seen on row 1\)"):
        io_read_keys(SqlSource(url, table="t"), ["id"])


# -- faults -----------------------------------------------------------------------------------
def _cli(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(psiq_cmd() + args, capture_output=True, text=True, timeout=120,
                          env={**subprocess_env(), **(env or {})})


def _error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("psiq: error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def _connect_args(url: str, *extra: str) -> list[str]:
    return ["psi", "connect", "--insecure", "--peer", f"127.0.0.1:{free_port()}", "--input", url, "--on", "id_number",
            "--timeout", "1", *extra]


def test_wrong_password_and_unreachable_server_exit_3_naming_the_host(pg: Any, banks: Path) -> None:
    _load_pg(pg, banks)
    result = _cli(_connect_args(pg.url(), "--table", "bank_a.customers"), env={"PSIQ_DB_PASSWORD": "wrong-pw-8812"})
    line = _error_line(result)
    assert result.returncode == 3 and f"127.0.0.1:{pg.port}" in line and "password authentication failed" in line
    assert "wrong-pw-8812" not in result.stderr + result.stdout
    dead = free_port()
    result = _cli(_connect_args(f"postgresql://psiq@127.0.0.1:{dead}/postgres", "--table", "t"))
    assert result.returncode == 3 and f"cannot connect to the database at 127.0.0.1:{dead}" in _error_line(result)


def test_a_password_in_the_url_is_refused_and_never_printed(tmp_path: Path) -> None:
    result = _cli(_connect_args("postgresql://psiq:hunter2-secret@127.0.0.1:5/db", "--table", "t"))
    line = _error_line(result)
    assert result.returncode == 2 and "contains a password" in line and "PSIQ_DB_PASSWORD" in line
    assert "hunter2-secret" not in result.stderr + result.stdout
    output = _cli(_connect_args(str(tmp_path / "x.csv"), "--output", "postgresql://u:hunter2-secret@h/db",
                                "--output-table", "o"))
    assert output.returncode == 2 and "hunter2-secret" not in output.stderr


def test_password_file_is_used(pg_env: Any, banks: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _load_pg(pg_env, banks)
    monkeypatch.delenv("PSIQ_DB_PASSWORD")
    secret = tmp_path / "pw"
    secret.write_text(pgserver.PASSWORD + "\n")
    table = io_read_keys(SqlSource(pg_env.url(), table="bank_b.customers", password_file=secret), ["id_number"])
    assert table.rows_read == 600 and table.summary()["file"] == f"{pg_env.url()} table bank_b.customers"


def test_missing_table_or_column_and_empty_query_exit_2(tmp_path: Path, banks: Path) -> None:
    url = f"sqlite:///{tmp_path / 'a.db'}"
    _load_file_db(url, banks / "bank_a.csv")
    result = _cli(_connect_args(url, "--table", "nosuch"))
    assert result.returncode == 2 and "no table 'nosuch'" in _error_line(result)
    result = _cli(["psi", "connect", "--insecure", "--peer", "127.0.0.1:9", "--input", url, "--table", "customers",
                   "--on", "nope"])
    assert result.returncode == 2 and "no key column 'nope'" in _error_line(result)
    empty = ["--query", "SELECT * FROM customers WHERE 1 = 0"]
    result = _cli(_connect_args(url, *empty))
    assert result.returncode == 2 and "returned no rows" in _error_line(result)
    result = _cli(_connect_args(url, *empty, "--allow-empty"))
    assert result.returncode == 3, result.stderr  # read fine; then nobody at the peer address
    result = _cli(_connect_args(str(tmp_path / "missing.db").join(["sqlite:///", ""]), "--table", "t"))
    assert result.returncode == 2 and "no such database file" in _error_line(result)


def test_existing_output_table_with_if_exists_fail_exits_2_before_listening(tmp_path: Path, banks: Path) -> None:
    url = f"sqlite:///{tmp_path / 'a.db'}"
    _load_file_db(url, banks / "bank_a.csv")
    args = ["--input", url, "--table", "customers", "--on", "id_number", "--reveal", "both", "--output", url,
            "--output-table", "customers", "--insecure"]
    started = time.monotonic()
    result = _cli(["psi", "serve", "--listen", f"127.0.0.1:{free_port()}", *args])
    assert result.returncode == 2 and "already exists" in _error_line(result) and "listening" not in result.stderr
    assert time.monotonic() - started < 30
    result = _cli(["psi", "connect", "--peer", f"127.0.0.1:{free_port()}", *args])  # exit 3 if it tried to connect
    assert result.returncode == 2 and "--if-exists fail" in _error_line(result)


def _terminate(pg: Any, pattern: str) -> int:
    import psycopg

    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        return len(conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                "WHERE pid <> pg_backend_pid() AND query LIKE %s", (pattern,)).fetchall())


def _pg_table_exists(pg: Any, name: str) -> bool:
    import psycopg

    with psycopg.connect(pg.dsn()) as conn:
        return conn.execute("SELECT to_regclass(%s)", (name,)).fetchone()[0] is not None


def test_connection_terminated_mid_read_exits_3(pg_env: Any, banks: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _load_pg(pg_env, banks)
    monkeypatch.setattr(sqlio.pgcopy, "BLOCK_BYTES", 1000)
    real_blocks = sqlio.pgcopy.blocks

    def blocks(connection: Any, statement: str) -> Any:
        for i, block in enumerate(real_blocks(connection, statement)):
            if i == 1:
                assert _terminate(pg_env, "COPY (SELECT%") == 1  # the reading backend
            yield block

    monkeypatch.setattr(sqlio.pgcopy, "blocks", blocks)
    with pytest.raises(TransportError, match=f"lost the connection to the database at 127.0.0.1:{pg_env.port}") as err:
        io_read_keys(SqlSource(pg_env.url(), table="bank_a.customers"), ["id_number"])
    assert err.value.exit_code == 3


@pytest.mark.parametrize("if_exists", ["fail", "replace"])
def test_connection_terminated_mid_write_leaves_no_table(if_exists: str, pg_env: Any, banks: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import psycopg

    _load_pg(pg_env, banks)
    with psycopg.connect(pg_env.dsn(), autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS bank_a.out")
        if if_exists == "replace":
            conn.execute("CREATE TABLE bank_a.out AS SELECT 'old' AS marker")
    table = io_read_keys(SqlSource(pg_env.url(), table="bank_a.customers"), ["id_number"])
    monkeypatch.setattr(sinkio, "BATCH", 50)
    monkeypatch.setattr(sqlio, "BATCH", 50)
    monkeypatch.setattr(sqlio.pgcopy, "BLOCK_BYTES", 4000)
    real_chain = sinkio._chain

    def chain(*args: Any) -> Any:
        for i, item in enumerate(real_chain(*args)):
            if i == 2:
                assert _terminate(pg_env, "COPY %.out%FROM STDIN") == 1  # the writing backend
            yield item

    monkeypatch.setattr(sinkio, "_chain", chain)
    order = table.row_numbers[::-1].copy()
    with pytest.raises(TransportError, match="lost the connection") as err:
        write_rows(table, order, SqlSink(pg_env.url(), "bank_a.out", if_exists=if_exists))
    assert err.value.exit_code == 3
    if if_exists == "fail":
        assert not _pg_table_exists(pg_env, "bank_a.out")
    else:  # the old table is untouched
        with psycopg.connect(pg_env.dsn()) as conn:
            assert conn.execute("SELECT marker FROM bank_a.out").fetchall() == [("old",)]


def _disk_full_at(monkeypatch: pytest.MonkeyPatch, batch: int) -> None:
    """The sink's row chain raises a simulated full disk when batch ``batch`` is reached."""
    real_chain = sinkio._chain

    def chain(*args: Any) -> Any:
        for i, item in enumerate(real_chain(*args)):
            if i == batch:
                raise OSError("disk full (simulated)")
            yield item

    monkeypatch.setattr(sinkio, "_chain", chain)


def test_sqlite_failure_mid_write_leaves_no_table(tmp_path: Path, banks: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'a.db'}"
    _load_file_db(url, banks / "bank_a.csv")
    table = io_read_keys(SqlSource(url, table="customers"), ["id_number"])
    monkeypatch.setattr(sinkio, "BATCH", 50)
    monkeypatch.setattr(sqlio, "BATCH", 50)
    _disk_full_at(monkeypatch, 2)
    with pytest.raises(InputError, match="disk full"):
        write_rows(table, table.row_numbers.copy(), SqlSink(url, "out"))
    assert not sa.inspect(sa.create_engine(url)).has_table("out")


def test_a_table_changed_between_the_passes_writes_nothing(tmp_path: Path, banks: Path) -> None:
    url = f"sqlite:///{tmp_path / 'a.db'}"
    _load_file_db(url, banks / "bank_a.csv")
    source = SqlSource(url, table="customers")
    table = io_read_keys(source, ["id_number"])
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE customers SET id_number = id_number || '0' WHERE customer_no = "
                             "(SELECT min(customer_no) FROM customers)")
    with pytest.raises(InputError, match="changed since its keys were read"):
        write_rows(table, table.row_numbers.copy(), SqlSink(url, "out"))
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO customers (customer_no, id_number) VALUES ('zzz', 'new')")
    table = io_read_keys(source, ["id_number"])
    with engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM customers WHERE customer_no = 'zzz'")
    with pytest.raises(InputError, match="changed during the run"):
        write_rows(table, table.row_numbers.copy(), SqlSink(url, "out"))
    assert not sa.inspect(engine).has_table("out")


def test_append_and_replace(tmp_path: Path, banks: Path) -> None:
    url = f"sqlite:///{tmp_path / 'a.db'}"
    _load_file_db(url, banks / "bank_a.csv")
    table = io_read_keys(SqlSource(url, table="customers"), ["id_number"])
    order = table.row_numbers[:5].copy()
    order[2] = -1  # an empty row: all NULL but its position
    write_rows(table, order, SqlSink(url, "out"))
    with pytest.raises(UsageError, match="already exists"):
        SqlSink(url, "out").check()
    write_rows(table, order, SqlSink(url, "out", if_exists="append"))
    _cols, rows = _table_rows(url, "out", positions=False)
    assert len(rows) == 10 and rows[4] == rows[5] == (None,) * len(table.header)
    write_rows(table, order[:3], SqlSink(url, "out", if_exists="replace", order_column="psiq_row"))
    assert len(_table_rows(url, "out")[1]) == 3
    with pytest.raises(UsageError, match="no column 'pos'"):
        SqlSink(url, "out", if_exists="append", order_column="pos").check()


def test_pir_setup_from_a_table(tmp_path: Path, banks: Path) -> None:
    from click.testing import CliRunner

    from cli.pir import pir_group

    url = f"sqlite:///{tmp_path / 'bl.db'}"
    _load_file_db(url, banks / "blacklist.csv")
    runner = CliRunner()
    from_db = runner.invoke(pir_group, ["setup", "--input", url, "--table", "customers", "--on", "id_number",
                                        "--label", "reason", "--out", str(tmp_path / "db1"), "--workers", "1", "--json"])
    from_csv = runner.invoke(pir_group, ["setup", "--input", str(banks / "blacklist.csv"), "--on", "id_number",
                                         "--label", "reason", "--out", str(tmp_path / "db2"), "--workers", "1", "--json"])
    assert from_db.exit_code == 0, from_db.output
    import json

    a, b = json.loads(from_db.stdout), json.loads(from_csv.stdout)
    assert a["entries"] == b["entries"] == 80 and a["duplicates"] == b["duplicates"]


def test_pir_batch_lookup_reads_ids_from_and_writes_answers_to_tables(tmp_path: Path, banks: Path) -> None:
    from click.testing import CliRunner

    from cli.pir import pir_group

    url = f"sqlite:///{tmp_path / 'bank.db'}"
    _load_file_db(url, banks / "blacklist.csv")  # table customers: the list (setup from it, too)
    setup = CliRunner().invoke(pir_group, ["setup", "--input", url, "--table", "customers", "--on", "id_number",
                                           "--label", "reason", "--out", str(tmp_path / "db"), "--workers", "1"])
    assert setup.exit_code == 0, setup.output
    _header, listed_rows = _csv(banks / "blacklist.csv")
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE asks (n INTEGER PRIMARY KEY, id_number TEXT)")
        conn.exec_driver_sql("INSERT INTO asks VALUES (1, ?), (2, '999'), (3, ?)", (listed_rows[0][0], listed_rows[5][0]))
    engine.dispose()
    port = free_port()
    server = subprocess.Popen(psiq_cmd() + ["pir", "serve", "--db", str(tmp_path / "db"), "--listen",
                                            f"127.0.0.1:{port}", "--insecure"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env())
    try:
        result = _cli(["pir", "query", "--peer", f"127.0.0.1:{port}", "--insecure", "--cache-dir", str(tmp_path / "c"),
                       "--input", url, "--table", "asks", "--on", "id_number", "--output", url,
                       "--output-table", "answers"])
        assert result.returncode == 0, result.stderr
    finally:
        server.terminate()
        server.communicate(timeout=10)
    columns, rows = _table_rows(url, "answers")
    assert columns == ["n", "id_number", "listed", "label"]
    assert [(r[0], bool(r[2]), r[3]) for r in rows] == [(1, True, listed_rows[0][1]), (2, False, ""),
                                                         (3, True, listed_rows[5][1])]


# -- the Python API by URL ----------------------------------------------------------------------
def test_api_serve_and_connect_by_url_with_postgresql(pg_env: Any, banks: Path, tmp_path: Path) -> None:
    """psi.api.serve/connect take the URL, table=, output_table=, if_exists= as the CLI does; two
    parties (two threads) read from and write to the real server; compared with the CSV path."""
    import threading

    import psycopg

    _load_pg(pg_env, banks)
    url, port = pg_env.url(), free_port()
    with psycopg.connect(pg_env.dsn(), autocommit=True) as conn:  # replace= must drop this one
        conn.execute("DROP TABLE IF EXISTS bank_b.api_out; CREATE TABLE bank_b.api_out AS SELECT 1 AS old")
    listening = threading.Event()
    served: dict[str, Any] = {}

    def server() -> None:
        try:
            served["summary"] = api.serve(url, table="bank_b.customers", on=["id_number"], listen=f"127.0.0.1:{port}",
                                          tls=None, output_table="bank_b.api_out", if_exists="replace",
                                          options=OPTIONS, on_listening=lambda _address: listening.set(),
                                          accept_timeout=60)
        except BaseException as err:  # noqa: BLE001 - reported by the main thread
            served["error"] = err
            listening.set()

    thread = threading.Thread(target=server)
    thread.start()
    assert listening.wait(60) and "error" not in served, served.get("error")
    client = api.connect(url, table="bank_a.customers", on=["id_number"], peer=f"127.0.0.1:{port}", tls=None,
                         output=url, output_table="bank_a.api_out", options=OPTIONS)
    thread.join(60)
    assert "error" not in served, served.get("error")
    assert pgserver.PASSWORD not in str(client.output) and "bank_a.api_out" in str(client.output)
    cols_a, rows_a = _table_rows(url, "bank_a.api_out")
    cols_b, rows_b = _table_rows(url, "bank_b.api_out")
    ref_header_a, ref_a, ref_header_b, ref_b = _csv_reference(banks, tmp_path)
    assert cols_a == ref_header_a and cols_b == ref_header_b and len(rows_a) == len(ref_a) == client.intersection_size
    id_a, id_b = cols_a.index("id_number"), cols_b.index("id_number")
    assert _pairs(rows_a, rows_b, id_a, id_b) == _pairs(ref_a, ref_b, id_a, id_b)
    with pytest.raises(UsageError, match="already exists"):  # if_exists="fail" (the default), before any protocol
        api.connect(url, table="bank_a.customers", on=["id_number"], peer="127.0.0.1:9", tls=None,
                    output_table="bank_a.api_out", options=OPTIONS)
    with pytest.raises(UsageError, match="needs output_table="):
        api.connect(url, table="bank_a.customers", on=["id_number"], peer="127.0.0.1:9", tls=None, output=url)
    with pytest.raises(UsageError, match="needs a table or a query"):
        api.connect(url, on=["id_number"], peer="127.0.0.1:9", tls=None)


def test_api_dataframe_in_and_out_against_a_postgresql_party(pg_env: Any, banks: Path, tmp_path: Path) -> None:
    """A notebook party (DataFrame in, FrameSink out) against a party reading PostgreSQL."""
    pd = pytest.importorskip("pandas", reason="pandas is optional")
    from psi.io import FrameSink

    _load_pg(pg_env, banks)
    frame_a = pd.read_csv(banks / "bank_a.csv", dtype=str, keep_default_na=False)
    sink_a = FrameSink()
    client, _server = api.intersect_files(frame_a, SqlSource(pg_env.url(), table="bank_b.customers"),
                                          on=["id_number"], client_output=sink_a,
                                          server_output=SqlSink(pg_env.url(), "bank_b.frame_out", if_exists="replace"),
                                          options=OPTIONS)
    ref_header_a, ref_a, ref_header_b, ref_b = _csv_reference(banks, tmp_path)
    assert list(sink_a.frame.columns) == ref_header_a and client.output == "DataFrame"
    cols_b, rows_b = _table_rows(pg_env.url(), "bank_b.frame_out")
    id_a, id_b = ref_header_a.index("id_number"), cols_b.index("id_number")
    assert _pairs(sink_a.frame.values.tolist(), rows_b, id_a, id_b) == _pairs(ref_a, ref_b, id_a, id_b)


def test_psi_prepare_from_a_database_equals_prepare_from_the_csv(pg_env: Any, banks: Path, tmp_path: Path) -> None:
    """psiq psi prepare --input URL --table: the same keys (count) as from the CSV file, and the
    prepared set serves a session whose answer matches the CSV path."""
    _load_pg(pg_env, banks)
    env = {"PSIQ_DB_PASSWORD": pgserver.PASSWORD}
    common = ["--on", "id_number", "--server-key", str(tmp_path / "server.key"), "--workers", "1", "--json"]
    from_db = _cli(["psi", "prepare", "--input", pg_env.url(), "--table", "bank_b.customers",
                    "--out", str(tmp_path / "db.prep"), *common], env=env)
    assert from_db.returncode == 0, from_db.stderr
    from_csv = _cli(["psi", "prepare", "--input", str(banks / "bank_b.csv"), "--out", str(tmp_path / "csv.prep"),
                     *common], env=env)
    assert from_csv.returncode == 0, from_csv.stderr
    import json

    assert json.loads(from_db.stdout)["keys"] == json.loads(from_csv.stdout)["keys"] == 600
    from psi.protocols.ecdh import PreparedSet, input_digest
    from psi.server_state import load_or_create_ecdh_key

    key = load_or_create_ecdh_key(tmp_path / "server.key", "x25519", create=False)
    db_set = PreparedSet.from_bytes((tmp_path / "db.prep").read_bytes(), key)
    csv_set = PreparedSet.from_bytes((tmp_path / "csv.prep").read_bytes(), key)
    size = len(db_set.elements) // db_set.count
    chunks = [sorted(s.elements[i:i + size] for i in range(0, len(s.elements), size)) for s in (db_set, csv_set)]
    assert chunks[0] == chunks[1]  # the same encrypted set, in the table's order instead of the file's
    served = io_read_keys(SqlSource(pg_env.url(), table="bank_b.customers"), ["id_number"])
    assert db_set.digest == input_digest(served.keys)  # what 'psi serve --input URL --prepared' checks
    missing = _cli(["psi", "prepare", "--input", pg_env.url(), "--table", "bank_b.nosuch",
                    "--out", str(tmp_path / "x.prep"), *common], env=env)
    assert missing.returncode == 2 and "no table 'bank_b.nosuch'" in _error_line(missing)


def test_abandoning_the_write_pass_mid_copy_releases_the_reading_connection(pg_env: Any, banks: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A sink that fails closes the reading stream while its COPY is still running: that must end
    at once and leave no backend holding the source (closing the connection with the COPY still
    open made psycopg wait forever for a ROLLBACK reply: the old mid-write hang)."""
    import threading

    import psycopg

    _load_pg(pg_env, banks)
    monkeypatch.setattr(sqlio.pgcopy, "BLOCK_BYTES", 1000)
    table = io_read_keys(SqlSource(pg_env.url(), table="bank_a.customers"), ["id_number"])
    _header, _types, batches, _empty = sqlio.stream_rows(table, table.row_numbers.copy(), lines=True)
    next(batches)  # the COPY is under way
    closed = threading.Event()
    thread = threading.Thread(target=lambda: (batches.close(), closed.set()), daemon=True)
    thread.start()
    assert closed.wait(30), "closing the write pass hung"
    with psycopg.connect(pg_env.dsn(), autocommit=True) as conn:
        for _ in range(50):  # the server notices the closed socket within moments
            left = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
                                "AND query LIKE 'COPY (SELECT%'").fetchone()[0]
            if not left:
                break
            time.sleep(0.1)
        assert left == 0, "a backend still holds the source table"


def test_csv_rows_into_postgresql_keep_every_character(pg_env: Any, tmp_path: Path) -> None:
    """A CSV source written to PostgreSQL: plain batches go as one COPY text buffer, values with a
    backslash, tab, newline or carriage return (which COPY text would read as escapes) row by row;
    the table holds exactly the CSV's text either way."""
    rows = [[f"c{i}", f"id{i:04d}", f"plain {i}"] for i in range(300)]
    rows[7][2], rows[150][2], rows[151][2], rows[299][2] = "back\\slash \\N", "tab\there", "new\nline", "cr\rhere"
    rows[40][2] = ""  # an empty string stays an empty string, not NULL
    path = tmp_path / "odd.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["cust", "id_number", "note"])
        writer.writerows(rows)
    table = csv_read_keys(path, ["id_number"])
    monkeypatch_batch = 100  # several batches: some plain, some needing the row-by-row path
    original = sinkio.BATCH
    try:
        sinkio.BATCH = monkeypatch_batch
        write_rows(table, table.row_numbers[::-1].copy(), SqlSink(pg_env.url(), "odd_out", if_exists="replace"))
    finally:
        sinkio.BATCH = original
    columns, written = _table_rows(pg_env.url(), "odd_out")
    assert columns == ["cust", "id_number", "note"]
    assert [list(r) for r in written] == rows[::-1]


def test_staged_write_path_for_dialects_whose_ddl_commits(tmp_path: Path, banks: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The MySQL/Oracle/Hive write path (fill ``psiq_stage_*``, then rename or insert-select),
    forced onto SQLite: same rows as the transactional path for fail/append/replace, and a
    failure mid-write leaves neither the target nor a staging table."""
    url = f"sqlite:///{tmp_path / 'a.db'}"
    _load_file_db(url, banks / "bank_a.csv")
    table = io_read_keys(SqlSource(url, table="customers"), ["id_number"])
    order = table.row_numbers[:6].copy()
    order[2] = -1
    write_rows(table, order, SqlSink(url, "direct"))
    expected = _table_rows(url, "direct")[1]
    staged: list[str] = []
    real_staged = sinkio.SqlSink._write_staged

    def spy(self: Any, *args: Any, **kwargs: Any) -> Any:
        staged.append(self.table)
        return real_staged(self, *args, **kwargs)

    monkeypatch.setattr(sinkio, "_TRANSACTIONAL_DDL", ())
    monkeypatch.setattr(sinkio.SqlSink, "_write_staged", spy)
    write_rows(table, order, SqlSink(url, "out"))
    assert staged == ["out"] and _table_rows(url, "out")[1] == expected
    write_rows(table, order, SqlSink(url, "out", if_exists="append"))
    assert _table_rows(url, "out", positions=False)[1] == [row for row in expected for _ in range(2)]
    write_rows(table, order[:3], SqlSink(url, "out", if_exists="replace"))
    assert _table_rows(url, "out")[1] == expected[:3]
    with pytest.raises(UsageError, match="already exists"):
        write_rows(table, order, SqlSink(url, "out"))

    monkeypatch.setattr(sinkio, "BATCH", 2)
    _disk_full_at(monkeypatch, 1)
    monkeypatch.setattr(sqlio, "BATCH", 2)
    with pytest.raises(InputError, match="disk full"):
        write_rows(table, table.row_numbers.copy(), SqlSink(url, "fresh"))
    names = sa.inspect(sa.create_engine(url)).get_table_names()
    assert "fresh" not in names and not [n for n in names if n.startswith("psiq_stage_")], names
    assert staged == ["out", "out", "out", "fresh"]  # the refused write stopped before staging
