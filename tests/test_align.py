"""Aligned join output: both sides' row orders line up row for row, as SQL would join them."""

from __future__ import annotations

import random
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from psi.alignment import AlignmentExchange, JOIN_TYPES, compute_row_order
from psi.driver import run_pair
from psi.errors import MalformedMessage, ParameterMismatch, PolicyError, UsageError
from psi.messages import Message, pack_json
from psi.protocols.base import PsiOutcome, Role
from psi.records import KeyTable, read_keys, write_rows


def make_table(directory: Path, name: str, row_keys: list[str], dedup: str) -> KeyTable:
    path = directory / f"{name}.csv"
    lines = ["key,row"] + [f"{key},{i}" for i, key in enumerate(row_keys)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return read_keys(path, ["key"], dedup=dedup)


def fake_outcomes(client: KeyTable, server: KeyTable, seed: int) -> tuple[PsiOutcome, PsiOutcome]:
    """What a both-reveal PSI run would give: the plaintext intersection in a shared random order."""
    server_pos = {key: i for i, key in enumerate(server.keys)}
    common = [(i, server_pos[key]) for i, key in enumerate(client.keys) if key in server_pos]
    random.Random(seed).shuffle(common)
    return (
        PsiOutcome([c for c, _s in common], len(common)),
        PsiOutcome([s for _c, s in common], len(common)),
    )


def align(client: KeyTable, server: KeyTable, join: str, left: str, seed: int = 0):
    client_outcome, server_outcome = fake_outcomes(client, server, seed)
    a = AlignmentExchange(Role.CLIENT, client_outcome, client, join, left)
    b = AlignmentExchange(Role.SERVER, server_outcome, server, join, left)
    run_pair(a, b)
    return a.result(), b.result()


def kept_rows(row_keys: list[str], dedup: str) -> list[int]:
    if dedup == "keep-all":
        return list(range(len(row_keys)))
    seen: set[str] = set()
    rows = []
    for i, key in enumerate(row_keys):
        if key not in seen:
            seen.add(key)
            rows.append(i)
    return rows


def sql_join(left_keys: list[str], right_keys: list[str], left_dedup: str, right_dedup: str, join: str):
    left_rows, right_rows = kept_rows(left_keys, left_dedup), kept_rows(right_keys, right_dedup)
    right_set = {right_keys[r] for r in right_rows}
    left_set = {left_keys[r] for r in left_rows}
    pairs = [(l, r) for l in left_rows for r in right_rows if left_keys[l] == right_keys[r]]
    if join in ("left", "full"):
        pairs += [(l, None) for l in left_rows if left_keys[l] not in right_set]
    if join in ("right", "full"):
        pairs += [(None, r) for r in right_rows if right_keys[r] not in left_set]
    return pairs


def check_alignment(client_keys, server_keys, client_dedup, server_dedup, join, left, seed=0):
    with tempfile.TemporaryDirectory() as tmp:
        client = make_table(Path(tmp), "client", client_keys, client_dedup)
        server = make_table(Path(tmp), "server", server_keys, server_dedup)
        client_result, server_result = align(client, server, join, left, seed)
    crow, srow = client_result.row_order(), server_result.row_order()
    assert len(crow) == len(srow)
    for c, s in zip(crow, srow):
        assert c is not None or s is not None
        if c is not None and s is not None:
            assert client_keys[c] == server_keys[s]
    if left == "client":
        got = list(zip(crow, srow))
        want = sql_join(client_keys, server_keys, client_dedup, server_dedup, join)
        left_col, right_col, left_keys = crow, srow, client_keys
    else:
        got = list(zip(srow, crow))
        want = sql_join(server_keys, client_keys, server_dedup, client_dedup, join)
        left_col, right_col, left_keys = srow, crow, server_keys
    assert Counter(got) == Counter(want)
    # order: matched pairs first, then the left side's unmatched rows, then the right side's
    kinds = [0 if l is not None and r is not None else (1 if r is None else 2) for l, r in got]
    assert kinds == sorted(kinds)
    left_unmatched = [l for l, r in got if r is None]
    right_unmatched = [r for l, r in got if l is None]
    assert left_unmatched == sorted(left_unmatched) and right_unmatched == sorted(right_unmatched)
    # every matched key forms one contiguous block, left-major inside the block
    matched = [(l, r) for l, r in got if l is not None and r is not None]
    blocks: list[str] = []
    for l, _r in matched:
        if not blocks or blocks[-1] != left_keys[l]:
            blocks.append(left_keys[l])
    assert len(blocks) == len(set(blocks))
    for key in blocks:
        block = [(l, r) for l, r in matched if left_keys[l] == key]
        assert block == sorted(block)
    return client_result, server_result


@pytest.mark.parametrize("join", JOIN_TYPES)
@pytest.mark.parametrize("left", ["client", "server"])
def test_example_every_join(join: str, left: str) -> None:
    client_keys = ["a", "b", "c", "a", "d", "e"]
    server_keys = ["c", "a", "x", "a", "a", "b", "y"]
    check_alignment(client_keys, server_keys, "keep-all", "keep-all", join, left)
    check_alignment(client_keys, server_keys, "first", "keep-all", join, left)
    check_alignment(client_keys, server_keys, "first", "first", join, left)


def test_sql_expansion_counts() -> None:
    # key "k": 2 rows on the client, 3 on the server -> 6 rows on both sides
    client_result, server_result = check_alignment(["k", "k", "u"], ["k", "k", "k", "v"], "keep-all", "keep-all",
                                                   "full", "client")
    assert client_result.matched_rows == server_result.matched_rows == 6
    assert client_result.row_order() == [0, 0, 0, 1, 1, 1, 2, None]
    assert server_result.row_order() == [0, 1, 2, 0, 1, 2, None, 3]
    assert client_result.summary()["empty_rows"] == 1


def test_inner_reveals_no_unmatched_count_and_no_counts_without_duplicates() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        client = make_table(Path(tmp), "c", ["a", "b", "z"], "error")
        server = make_table(Path(tmp), "s", ["b", "a", "q", "r"], "error")
    client_outcome, server_outcome = fake_outcomes(client, server, 1)
    party = AlignmentExchange("client", client_outcome, client, "inner", "client")
    sent = party.outgoing()
    assert [m.kind for m in sent] == ["align.info"]
    assert b'"unmatched":null' in sent[0].body and b'"multi":false' in sent[0].body
    left_party = AlignmentExchange("client", client_outcome, client, "left", "client")
    assert b'"unmatched":1' in left_party.outgoing()[0].body
    right_party = AlignmentExchange("server", server_outcome, server, "left", "client")
    assert b'"unmatched":null' in right_party.outgoing()[0].body


def test_write_rows_line_up(tmp_path: Path) -> None:
    client = make_table(tmp_path, "c", ["a", "b", "c", "a"], "keep-all")
    server = make_table(tmp_path, "s", ["c", "a", "q"], "keep-all")
    client_result, server_result = align(client, server, "full", "server", seed=3)
    write_rows(client.path, client_result.rows, tmp_path / "c_out.csv")
    write_rows(server.path, server_result.rows, tmp_path / "s_out.csv")
    c_lines = (tmp_path / "c_out.csv").read_text().splitlines()
    s_lines = (tmp_path / "s_out.csv").read_text().splitlines()
    assert len(c_lines) == len(s_lines) == 1 + 2 + 1 + 1 + 1  # header, a x2, c, q, b
    for c_line, s_line in zip(c_lines[1:], s_lines[1:]):
        c_key, s_key = c_line.split(",")[0], s_line.split(",")[0]
        assert c_key == s_key or "" in (c_key, s_key)


# -- hypothesis: every join type and dedup policy ---------------------------------------------
keys_strategy = st.lists(st.sampled_from("abcdefgh"), max_size=12)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    client_keys=keys_strategy,
    server_keys=keys_strategy,
    client_dedup=st.sampled_from(["error", "first", "keep-all"]),
    server_dedup=st.sampled_from(["error", "first", "keep-all"]),
    join=st.sampled_from(JOIN_TYPES),
    left=st.sampled_from(["client", "server"]),
    seed=st.integers(0, 2**32),
)
def test_alignment_property(client_keys, server_keys, client_dedup, server_dedup, join, left, seed) -> None:
    if client_dedup == "error":
        client_keys = list(dict.fromkeys(client_keys))
    if server_dedup == "error":
        server_keys = list(dict.fromkeys(server_keys))
    check_alignment(client_keys, server_keys, client_dedup, server_dedup, join, left, seed)


# -- validation --------------------------------------------------------------------------------
@pytest.fixture
def pair(tmp_path: Path):
    client = make_table(tmp_path, "c", ["a", "b", "a"], "keep-all")
    server = make_table(tmp_path, "s", ["a", "b", "c"], "keep-all")
    outcomes = fake_outcomes(client, server, 0)
    return client, server, outcomes


def test_join_settings_must_match(pair) -> None:
    client, server, (co, so) = pair
    a = AlignmentExchange("client", co, client, "left", "client")
    b = AlignmentExchange("server", so, server, "inner", "client")
    with pytest.raises(ParameterMismatch, match="join settings differ"):
        run_pair(a, b)


def test_bad_options_and_outcomes(pair) -> None:
    client, _server, (co, _so) = pair
    with pytest.raises(UsageError, match="unknown join type"):
        AlignmentExchange("client", co, client, "outer", "client")
    with pytest.raises(UsageError, match="left side"):
        AlignmentExchange("client", co, client, "left", "peer")
    with pytest.raises(UsageError, match="--reveal both"):
        AlignmentExchange("client", PsiOutcome(None, 2), client)
    with pytest.raises(UsageError, match="out of range"):
        AlignmentExchange("client", PsiOutcome([0, 7], 2), client)
    with pytest.raises(UsageError, match="repeat"):
        AlignmentExchange("client", PsiOutcome([0, 0], 2), client)


def info(**overrides) -> Message:
    body = {"join": "full", "left": "client", "matched": 2, "multi": True, "unmatched": 1}
    body.update(overrides)
    return Message("align.info", pack_json(body))


@pytest.mark.parametrize(
    "message, error",
    [
        (info(matched=3), MalformedMessage),
        (info(matched=True), MalformedMessage),
        (info(multi=1), MalformedMessage),
        (info(unmatched=None), MalformedMessage),
        (info(unmatched=-1), MalformedMessage),
        (info(unmatched=2**32), MalformedMessage),
        (info(extra=1), MalformedMessage),
        (Message("align.info", b"[1]"), MalformedMessage),
        (Message("align.counts", b""), Exception),
    ],
)
def test_info_validation(pair, message: Message, error: type[Exception]) -> None:
    client, _server, (co, _so) = pair
    party = AlignmentExchange("client", co, client, "full", "client")
    party.outgoing()
    with pytest.raises(error):
        party.receive(message)
    assert party.failed


@pytest.mark.parametrize(
    "body",
    [
        b"",
        (2).to_bytes(4, "big") + (1).to_bytes(4, "big"),
        (2).to_bytes(4, "big") + (1).to_bytes(4, "big") * 3,
        (3).to_bytes(4, "big") + (1).to_bytes(4, "big") * 2,
        (2).to_bytes(4, "big") + (1).to_bytes(4, "big") + (0).to_bytes(4, "big"),
    ],
)
def test_counts_validation(pair, body: bytes) -> None:
    client, _server, (co, _so) = pair
    party = AlignmentExchange("client", co, client, "full", "client")
    party.outgoing()
    party.receive(info())
    with pytest.raises(MalformedMessage):
        party.receive(Message("align.counts", body))


def test_output_size_cap(pair) -> None:
    client, _server, (co, _so) = pair
    party = AlignmentExchange("client", co, client, "full", "client", max_output_rows=1000)
    party.outgoing()
    party.receive(info(unmatched=5000))
    with pytest.raises(PolicyError, match="cap of 1000"):
        party.receive(Message("align.counts", (2).to_bytes(4, "big") + (1).to_bytes(4, "big") * 2))
    party2 = AlignmentExchange("client", co, client, "inner", "client", max_output_rows=1000)
    party2.outgoing()
    party2.receive(info(join="inner", unmatched=None))
    huge = (2).to_bytes(4, "big") + (2**32 - 1).to_bytes(4, "big") * 2
    with pytest.raises(PolicyError):
        party2.receive(Message("align.counts", huge))


def test_compute_row_order_direct(pair) -> None:
    client, _server, (co, _so) = pair
    rows, matched, own_tail, empty = compute_row_order(client, co.indices, np.array([1, 1]), is_left=True,
                                                       join="inner")
    assert matched == 3 and own_tail == 0 and empty == 0
    assert sorted(rows.tolist()) == [0, 1, 2]


def test_compute_row_order_refuses_repeated_or_out_of_range_indices(pair) -> None:
    client, _server, (co, _so) = pair
    first = int(co.indices[0])
    with pytest.raises(UsageError, match="repeat"):
        compute_row_order(client, [first, first], np.array([1, 1]), is_left=True, join="inner")
    with pytest.raises(UsageError, match="out of range"):
        compute_row_order(client, [client.unique_keys], np.array([1]), is_left=True, join="inner")
