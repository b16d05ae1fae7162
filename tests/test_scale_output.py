"""The bucketed session's streaming output (psi/scale/output.py) against write_rows.

The streaming writer must write exactly the bytes ``psi.records.write_rows`` writes for the
order the bucketed session means (matched rows stably sorted by their order tag over the
concatenated buckets, then the tails), for CSV and TSV with BOMs, CRLF line endings, quoted
fields (the csv-module path of the scan), an unterminated last line, duplicate rows
(keep-all) and ties of the order tag -- in bounded pieces (tiny range and chunk sizes here).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from psi import api
from psi.errors import InputError
from psi.records import write_rows
from psi.scale import output as output_mod
from psi.scale import session as session_mod
from psi.scale.output import Segment, write_bucketed_output

from .test_scale_buckets import FullDisk, _expected_pairs, _pairs, files, run_both  # noqa: F401 (files: fixture)


def _reference_order(parts: list[dict[str, Any]], segments: list[Segment] | None) -> np.ndarray:
    """The order the previous bucketed writer built in memory (session._finish before streaming)."""
    direct = [q["direct"] for q in parts if q.get("direct") is not None]
    own = np.sort(np.concatenate(direct)) if direct else np.zeros(0, np.int64)
    if segments is None:
        return own
    matched = np.concatenate([q["matched"] for q in parts]) if parts else np.zeros(0, np.int64)
    tags = np.concatenate([q["tags"] for q in parts]) if parts else np.zeros(0, np.uint64)
    pieces = [matched[np.argsort(tags, kind="stable")]]
    pieces += [own if s.kind == "own" else np.full(s.count, -1, dtype=np.int64) for s in segments]
    return np.concatenate(pieces)


def _source(path: Path, fmt: str, rows: int, *, crlf: bool, bom: bool, quoted: bool, terminated: bool,
            width: int = 3) -> Path:
    rng = random.Random(rows * 7 + width)
    sep = "," if fmt == "csv" else "\t"
    nl = "\r\n" if crlf else "\n"
    lines = [sep.join(["id"] + [f"c{j}" for j in range(1, width)])]
    for i in range(rows):
        fields = [f"k{i}"] + [f"v{i}_{j}" * rng.randint(0, 3) for j in range(1, width)]
        if quoted and fmt == "csv" and i % 17 == 3:
            fields[-1] = '"a,b ""q""\nnext line"'  # a quoted field with a comma, quotes and a newline
        lines.append(sep.join(fields))
    text = nl.join(lines) + (nl if terminated else "")
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    return path


@pytest.mark.parametrize("fmt,crlf,bom,quoted,terminated,width", [
    ("csv", False, False, False, True, 3),
    ("csv", True, True, True, False, 3),
    ("csv", False, False, True, False, 1),
    ("tsv", False, True, False, True, 2),
    ("tsv", True, False, False, False, 1),
])
def test_streaming_output_equals_write_rows(tmp_path, monkeypatch, fmt, crlf, bom, quoted, terminated, width):
    monkeypatch.setattr(output_mod, "ROW_RANGE", 7)  # many range files, blocks span ranges
    monkeypatch.setattr(output_mod, "TAG_CHUNK", 5)  # many tag chunks
    rows = 200
    src = _source(tmp_path / f"in.{fmt}", fmt, rows, crlf=crlf, bom=bom, quoted=quoted, terminated=terminated,
                  width=width)
    rng = np.random.default_rng(5)
    perm = rng.permutation(rows)
    parts = []
    for b, chunk in enumerate(np.array_split(perm, 4)):
        matched = np.repeat(chunk[: len(chunk) // 2], rng.integers(1, 3, len(chunk) // 2))  # keep-all repeats
        tags = rng.integers(0, 2**64, len(matched), dtype=np.uint64)
        tags[::5] = np.uint64(12345)  # ties across and within buckets keep the concatenated order
        if b == 1:
            tags[:3] = np.uint64(2**64 - 1)  # the largest tag (top chunk)
        parts.append({"matched": matched, "tags": tags, "direct": np.sort(chunk[len(chunk) // 2:])})
    parts[-1]["direct"] = np.append(parts[-1]["direct"], rows - 1)  # the (maybe unterminated) last row
    for segments in (None, [], [Segment("own")], [Segment("empty", 9)], [Segment("own"), Segment("empty", 4)],
                     [Segment("empty", 3), Segment("own")]):
        out, ref = tmp_path / "out", tmp_path / "ref"
        n = write_bucketed_output(src, out, fmt=fmt, tmp=tmp_path / "work", rows_read=rows, buckets=iter(parts),
                                  segments=segments)
        order = _reference_order(parts, segments)
        write_rows(src, order, ref, fmt=fmt, expect_rows=rows)
        assert out.read_bytes() == ref.read_bytes(), segments
        assert n == len(order)
        assert not (tmp_path / "work").exists()


def test_streaming_output_refuses_a_changed_input(tmp_path):
    src = _source(tmp_path / "in.csv", "csv", 50, crlf=False, bom=False, quoted=False, terminated=True)
    parts = [{"matched": np.array([3, 49]), "tags": np.array([1, 2], dtype=np.uint64), "direct": None}]
    with pytest.raises(InputError, match="changed during the run"):
        write_bucketed_output(src, tmp_path / "out", fmt="csv", tmp=tmp_path / "w", rows_read=51, buckets=parts,
                              segments=[])
    src.write_text("id,c1\n" + "".join(f"k{i},x\n" for i in range(10)))  # shorter now
    with pytest.raises(InputError, match="changed during the run"):
        write_bucketed_output(src, tmp_path / "out", fmt="csv", tmp=tmp_path / "w", rows_read=50, buckets=parts,
                              segments=[])
    assert not (tmp_path / "out").exists()


@pytest.fixture
def tsv_files(tmp_path: Path) -> tuple[Path, Path]:
    rng = random.Random(11)
    common = [f"k{i}" for i in range(90)]
    a = common + [f"a{i}" for i in range(50)] + ["k1", "k2", "a3"]
    b = common + [f"b{i}" for i in range(30)] + ["k1", "k5"]
    rng.shuffle(a)
    rng.shuffle(b)
    pa, pb = tmp_path / "a.tsv", tmp_path / "b.tsv"
    pa.write_text("id\tx\n" + "".join(f"{k}\tx{i}\n" for i, k in enumerate(a)))
    pb.write_text("id\ty\n" + "".join(f"{k}\ty{i}\n" for i, k in enumerate(b)))
    return pa, pb


@pytest.mark.parametrize("join", ["inner", "left", "right", "full"])
@pytest.mark.parametrize("fmt", ["csv", "tsv"])
def test_bucketed_session_output_is_the_old_order_byte_for_byte(files, tsv_files, tmp_path, monkeypatch, join, fmt):
    """End to end: each side's streamed output equals write_rows over the order the previous
    (in-memory) bucketed writer built from the same checkpoints, and the pairs equal the
    plaintext answer and the unbucketed run; the tails equal the unbucketed run's bytes."""
    a, b = files if fmt == "csv" else tsv_files
    monkeypatch.setattr(output_mod, "ROW_RANGE", 16)
    monkeypatch.setattr(output_mod, "TAG_CHUNK", 8)
    real = session_mod.write_bucketed_output
    compared = []

    def both_ways(src, out, *, fmt, tmp, rows_read, buckets, segments):
        parts = [{k: None if v is None else np.array(v) for k, v in q.items()} for q in buckets]
        n = real(src, out, fmt=fmt, tmp=tmp, rows_read=rows_read, buckets=parts, segments=segments)
        ref = Path(str(out) + ".ref")
        write_rows(src, _reference_order(parts, segments), ref, fmt=fmt, expect_rows=rows_read)
        assert Path(out).read_bytes() == ref.read_bytes()
        compared.append(out)
        return n

    monkeypatch.setattr(session_mod, "write_bucketed_output", both_ways)
    opts = api.PsiOptions(protocol="ecdh", reveal="both", join=join, dedup="keep-all", workers=1,
                          left="server" if join == "right" else "client")
    client, server = run_both(a, b, tmp_path, opts, buckets=3)
    assert len(compared) == 2
    if fmt == "csv":
        assert _pairs(tmp_path / "out_c.csv", tmp_path / "out_s.csv") == _expected_pairs(a, b, join, opts.left)
    api.intersect_files(a, b, on=["id"], client_output=tmp_path / f"u_c.{fmt}",
                        server_output=tmp_path / f"u_s.{fmt}", options=opts)
    matched = client.alignment["matched_rows"]
    for side, unb in (("c", "u_c"), ("s", "u_s")):
        got = (tmp_path / f"out_{side}.csv").read_bytes().splitlines()
        want = (tmp_path / f"{unb}.{fmt}").read_bytes().splitlines()
        assert sorted(got[1:1 + matched]) == sorted(want[1:1 + matched])
        assert got[0] == want[0] and got[1 + matched:] == want[1 + matched:]
    assert client.alignment["output_rows"] == server.alignment["output_rows"] == len(got) - 1


def test_receiver_output_is_byte_identical_to_unbucketed(files, tmp_path):
    a, b = files
    opts = api.PsiOptions(protocol="kkrt", reveal="receiver", dedup="keep-all", workers=1)
    run_both(a, b, tmp_path, opts, buckets=3)
    api.intersect_files(a, b, on=["id"], client_output=tmp_path / "u_c.csv", options=opts)
    assert (tmp_path / "out_c.csv").read_bytes() == (tmp_path / "u_c.csv").read_bytes()


def _tail_pair(own_c: int, own_s: int, join: str, matched: int = 10) -> tuple[Any, Any]:
    from psi.protocols.base import Role
    from psi.scale.tails import TailExchange

    return (TailExchange(Role.CLIENT, own_c, join, "client", matched_rows=matched),
            TailExchange(Role.SERVER, own_s, join, "client", matched_rows=matched))


@pytest.mark.parametrize("join", ["left", "right", "full"])
def test_tail_exchange_sends_what_the_alignment_exchange_sends(join):
    """Same wire messages as AlignmentExchange with no matched keys (what the bucketed session
    ran before), and the segments of compute_row_order."""
    from psi.alignment import AlignmentExchange, compute_row_order
    from psi.protocols.base import PsiOutcome, Role
    from psi.records import KeyTable
    from psi.normalize import Normalization

    def table(n: int) -> KeyTable:
        return KeyTable(path=Path("-"), fmt="csv", header=[], on=[], columns=[], normalization=Normalization(),
                        dedup="keep-all", keys=[b"\x00"], row_numbers=np.arange(n, dtype=np.int64),
                        row_keys=np.zeros(n, dtype=np.int64), rows_read=n, duplicate_rows=0, skipped_rows=0)

    client, server = _tail_pair(5, 7, join)
    old = AlignmentExchange(Role.CLIENT, PsiOutcome([], None), table(5), join, "client")
    sent = client.outgoing()
    assert [(m.kind, m.body) for m in sent] == [(m.kind, m.body) for m in old.outgoing()]
    sent_s = server.outgoing()
    old_s = AlignmentExchange(Role.SERVER, PsiOutcome([], None), table(7), join, "client")
    assert [(m.kind, m.body) for m in sent_s] == [(m.kind, m.body) for m in old_s.outgoing()]
    for m in sent_s:
        client.receive(m)
    for m in sent:
        server.receive(m)
    rows, _matched, own, empty = compute_row_order(table(5), [], None, is_left=True, join=join,
                                                   peer_unmatched=7 if join != "left" else 0)
    want = [("own", 5) if r >= 0 else ("empty", 1) for r in rows.tolist()]
    got = [("own", 5)] * 0
    for seg in client.segments():
        got += [("own", 5)] * 5 if seg.kind == "own" else [("empty", 1)] * seg.count
    assert got == want
    assert client.counts() == (own, empty)


def test_tail_exchange_refuses_a_peer_count_beyond_the_output_cap():
    """A cheating peer announcing 2^32-1 unmatched rows (to make this side write billions of
    empty rows) is refused by the output-rows cap, as without buckets -- and no per-row array
    of that size is ever built (segments hold counts)."""
    import json

    from psi.errors import PolicyError
    from psi.messages import Message

    client, server = _tail_pair(5, 7, "full")
    client.outgoing()
    for m in server.outgoing():
        if m.kind == "align.info":
            info = json.loads(m.body)
            info["unmatched"] = 2**32 - 1
            m = Message(m.kind, json.dumps(info).encode())
        with pytest.raises(PolicyError, match="more than the cap"):
            client.receive(m)


def test_a_full_disk_while_writing_the_direct_rows_is_exit_2_and_no_output(tmp_path, monkeypatch):
    from psi.scale import output as output_mod
    from psi.scale.buckets import DiskFull

    src = _source(tmp_path / "in.csv", "csv", 50, crlf=False, bom=False, quoted=False, terminated=True)
    parts = [{"matched": np.array([3, 49]), "tags": np.array([1, 2], dtype=np.uint64), "direct": np.arange(10, 20)}]
    real_open = open

    def fake_open(path: Any, mode: str = "r", *args: Any, **kw: Any) -> Any:
        handle = real_open(path, mode, *args, **kw)
        return FullDisk(handle) if Path(path).name == "direct" and "w" in mode else handle

    monkeypatch.setattr(output_mod, "open", fake_open, raising=False)
    with pytest.raises(DiskFull, match=r"direct: disk full while preparing the output; about .* MiB more") as err:
        write_bucketed_output(src, tmp_path / "out", fmt="csv", tmp=tmp_path / "w", rows_read=50, buckets=parts,
                              segments=[Segment("own")])
    assert err.value.exit_code == 2
    assert not (tmp_path / "out").exists() and not (tmp_path / "w").exists()
