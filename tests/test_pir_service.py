"""The service: concurrent clients over TCP+TLS (identity = certificate CN), quotas, audit, reloads."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from pir import api
from pir.service import PirService, QuotaBook
from psi.driver import run_party
from psi.errors import PolicyError
from psi.transport.memory import memory_pair
from psi.transport.tcp import Listener, connect

from .conftest import tls_for


@pytest.fixture()
def db(tmp_path: Path) -> Path:
    entries = [(f"1101011990{i:08d}", f"reason {i}") for i in range(300)]
    api.setup(entries, tmp_path / "db", workers=1)
    return tmp_path / "db"


def test_quota_book_counts_per_client_and_day(tmp_path: Path) -> None:
    now = [1_700_000_000.0]
    log = tmp_path / "audit.jsonl"
    book = QuotaBook(5, log, clock=lambda: now[0])
    book.charge("bank-a", 3)
    book.charge("bank-b", 5)
    with pytest.raises(PolicyError):
        book.charge("bank-a", 3)
    book.charge("bank-a", 2)
    assert book.used("bank-a") == 5
    assert QuotaBook(5, log, clock=lambda: now[0]).used("bank-a") == 5  # replayed after restart
    now[0] += 86_400
    book.charge("bank-a", 5)  # a new day
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert {e["client"] for e in events} == {"bank-a", "bank-b"}
    charges = [e for e in events if e["event"] == "evaluate"]
    assert any(e["refused"] for e in charges)
    assert all(set(e) <= {"time", "event", "client", "count", "day", "day_total", "refused", "remaining", "table_version"}
               for e in charges)


def test_service_over_memory_channel_and_reload(db: Path, tmp_path: Path) -> None:
    service = PirService(db)
    client_end, server_end = memory_pair()
    thread = threading.Thread(target=service.handle, args=(server_end,))
    thread.start()
    cache = api.HintCache(tmp_path / "cache")
    results, stats, _ = api.lookup_over(client_end, ["110101199000000007", " 110101199000000299 ", "nope"], cache=cache)
    thread.join()
    assert [r.label for r in results] == ["reason 7", "reason 299", None]
    first_version = next(iter(cache.known()))
    # a new setup: new version, the cached hint is replaced on the next lookup
    api.setup([("110101199000000007", "moved")], db, workers=1, replace=True)
    client_end, server_end = memory_pair()
    thread = threading.Thread(target=service.handle, args=(server_end,))
    thread.start()
    results, _, client = api.lookup_over(client_end, ["110101199000000007"], cache=cache)
    thread.join()
    assert results[0].label == "moved" and client.fetched_hint is not None
    assert list(cache.known()) != [first_version]


def test_concurrent_tls_clients_and_quota(db: Path, pki: Path, tmp_path: Path) -> None:
    service = PirService(db, quota=QuotaBook(4, tmp_path / "audit.jsonl"))
    stop = threading.Event()
    listener = Listener("127.0.0.1:0", tls_for(pki, "bank-a"))
    address = f"127.0.0.1:{listener.address[1]}"
    server = threading.Thread(target=service.serve, args=(listener,), kwargs={"forever": True, "stop": stop})
    server.start()
    try:
        outcomes: dict[int, object] = {}

        def ask(n: int) -> None:
            try:
                outcomes[n] = api.lookup([f"1101011990{n:08d}"], peer=address, tls=tls_for(pki, "bank-b", "bank-a"),
                                         cache_dir=tmp_path / f"cache{n}", timeout=20)
            except Exception as err:  # noqa: BLE001 - reported by the assertion below
                outcomes[n] = err

        threads = [threading.Thread(target=ask, args=(n,)) for n in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [getattr(outcomes[n], "__getitem__", None) and outcomes[n][0].label for n in range(3)] == ["reason 0", "reason 1", "reason 2"]
        with pytest.raises(PolicyError) as info:
            api.lookup(["a", "b"], peer=address, tls=tls_for(pki, "bank-b", "bank-a"), cache_dir=tmp_path / "c")
        assert info.value.exit_code == 7
        assert service.quota.used("bank-b") == 3
    finally:
        stop.set()
        server.join()
        listener.close()
    log = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert {e["client"] for e in log} == {"bank-b"}
    assert not any("1101011990" in json.dumps(e) for e in log)  # counts only, never ids
