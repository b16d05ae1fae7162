"""Quotas: finite default, whole-session reservation before any OPRF work, per-session cap,
warning near the quota, a client that asks for more than it announced, empty ids never charged."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from pir import api, oprf
from pir.protocol import OPRF, PirClient, PirServerSession
from pir.quota import DEFAULT_DAILY_QUOTA, QuotaBook
from pir.service import PirService
from psi.errors import InputError, MalformedMessage, PolicyError, QuotaExceeded
from psi.messages import Message, pack_items
from psi.transport.memory import memory_pair


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pirq") / "db"
    api.setup([(f"1101011990{i:08d}", f"reason {i}") for i in range(200)], d, workers=1)
    return d


def _audit(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _session(service: PirService, ids: list[str], cache: Path, client: str = "bank-b"):
    """One lookup through ``service.handle`` over a memory pair; returns (results or error, audit event)."""
    client_end, server_end = memory_pair()
    server_end.peer_name = client
    events: list[dict] = []
    thread = threading.Thread(target=lambda: events.append(service.handle(server_end, timeout=30)))
    thread.start()
    try:
        outcome: object = api.lookup_over(client_end, ids, cache=api.HintCache(cache), timeout=30)[0]
    except Exception as err:  # noqa: BLE001 - returned to the test
        outcome = err
    finally:
        client_end.close()
        thread.join(30)
    return outcome, events[0]


def test_default_quota_is_finite() -> None:
    assert DEFAULT_DAILY_QUOTA == 10_000
    assert QuotaBook().limit == 10_000
    from cli.pir import serve_command

    quota = next(p for p in serve_command.params if p.name == "quota_text")
    assert quota.default == "10000"


def test_default_quota_refuses_a_session_over_it(db: Path, tmp_path: Path) -> None:
    service = PirService(db, quota=QuotaBook(audit_log=tmp_path / "audit.jsonl"), max_lookups=20_000)
    ids = [f"{i:018d}" for i in range(10_001)]
    error, event = _session(service, ids, tmp_path / "cache")
    assert isinstance(error, PolicyError) and error.exit_code == 7
    assert "quota of 10000" in str(error) and "10001 asked" in str(error)
    assert event["evaluations"] == 0 and service.quota.used("bank-b") == 0


def test_batch_larger_than_the_remainder_is_refused_whole_before_any_work(db: Path, tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    service = PirService(db, quota=QuotaBook(3000, log))
    service.quota.charge("bank-b", 1000)
    error, event = _session(service, [f"1101011990{i:08d}" for i in range(2500)], tmp_path / "cache")
    assert isinstance(error, PolicyError) and error.exit_code == 7  # PolicyError at the client
    text = str(error)
    assert "1000 used today" in text and "2000 remaining" in text and "2500 asked" in text, text
    assert "nothing was charged" in text
    assert service.quota.used("bank-b") == 1000 and service.quota.remaining("bank-b") == 2000
    assert event["outcome"] == "error" and event["evaluations"] == 0 and event["exit_code"] == 7
    refused = [e for e in _audit(log) if e["event"] == "evaluate" and e["refused"]]
    assert refused and refused[-1]["count"] == 2500 and refused[-1]["remaining"] == 2000
    # what fits is served in full
    results, event = _session(service, [f"1101011990{i:08d}" for i in range(150, 200)] + ["x"], tmp_path / "cache")
    assert [r.label for r in results[:2]] == ["reason 150", "reason 151"] and results[-1].label is None
    assert service.quota.used("bank-b") == 1051 and event["evaluations"] == 51


def test_concurrent_sessions_cannot_overbook(tmp_path: Path) -> None:
    book = QuotaBook(10, tmp_path / "audit.jsonl")
    first = book.reserve("bank-b", 7)
    with pytest.raises(QuotaExceeded) as info:
        book.reserve("bank-b", 4)  # 7 are held by a session still running
    assert "7 held by sessions still running" in str(info.value) and "3 remaining" in str(info.value)
    first.charge(5)
    first.release()  # 2 given back
    book.reserve("bank-b", 5).release()
    assert book.used("bank-b") == 5 and book.remaining("bank-b") == 5


def test_per_session_cap(db: Path, tmp_path: Path) -> None:
    service = PirService(db, quota=QuotaBook(None, tmp_path / "audit.jsonl"), max_lookups=5)
    error, event = _session(service, [str(i) for i in range(6)], tmp_path / "cache")
    assert isinstance(error, PolicyError) and "at most 5 per session" in str(error)
    assert event["evaluations"] == 0
    results, _ = _session(service, [str(i) for i in range(5)], tmp_path / "cache")
    assert len(results) == 5


def test_warning_near_the_quota_once_per_day(tmp_path: Path) -> None:
    now = [1_700_000_000.0]
    log = tmp_path / "audit.jsonl"
    seen: list[dict] = []
    book = QuotaBook(10, log, warn_at=0.8, clock=lambda: now[0], on_warning=seen.append)
    book.charge("bank-b", 7)
    assert not seen
    book.charge("bank-b", 1)
    assert [(w["client"], w["day_total"], w["limit"]) for w in seen] == [("bank-b", 8, 10)]
    book.charge("bank-b", 1)
    assert len(seen) == 1
    warnings = [e for e in _audit(log) if e["event"] == "quota_warning"]
    assert len(warnings) == 1 and warnings[0]["day_total"] == 8
    restarted = QuotaBook(10, log, warn_at=0.8, clock=lambda: now[0], on_warning=seen.append)
    restarted.charge("bank-b", 1)
    assert len(seen) == 1  # replayed: already warned today
    now[0] += 86_400
    restarted.charge("bank-b", 9)
    assert len(seen) == 2  # a new day warns again


def test_client_asking_more_than_it_announced_is_refused_before_evaluation(db: Path) -> None:
    from pir.store import load_table

    table = load_table(db)
    charged: list[int] = []
    client = PirClient([b"a"])  # announces 1 lookup
    server = PirServerSession(table, charge=charged.append)
    for m in client.outgoing():
        server.receive(m)
    server.outgoing()
    body = bytes.fromhex(table.version) + pack_items([oprf.blind(b"a")[1], oprf.blind(b"b")[1]], 32)
    with pytest.raises(MalformedMessage, match="beyond the 1 lookups announced"):
        server.receive(Message(OPRF, body))
    assert charged == [] and server.evaluations == 0


def test_empty_id_is_refused_without_charging(db: Path, tmp_path: Path) -> None:
    service = PirService(db, quota=QuotaBook(100, tmp_path / "audit.jsonl"))
    error, _event = _session(service, ["110101199000000001", "   "], tmp_path / "cache")
    assert isinstance(error, InputError) and "id number 2 is empty" in str(error)
    assert service.quota.used("bank-b") == 0
    with pytest.raises(InputError):  # refused before connecting (the port is closed)
        api.lookup(["\u3000"], peer="127.0.0.1:9", tls=None)


def test_cli_query_skips_or_refuses_empty_ids(tmp_path: Path) -> None:
    from cli.pir import pir_group

    ids = tmp_path / "ids.csv"
    ids.write_text("id_number,name\n110101199003070002,a\n ,b\n")
    result = CliRunner().invoke(pir_group, ["query", "--peer", "127.0.0.1:9", "--insecure", "--input", str(ids),
                                            "--on", "id_number"])
    assert result.exit_code == 2 and "data row 2: empty id" in result.output
