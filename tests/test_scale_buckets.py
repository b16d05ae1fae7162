"""Bucketed sessions (psi.scale), both parties in one process over an in-memory pair.

Checks the output of every protocol and join type against the plaintext answer and the
unbucketed run, the agreed bucket key, the padded per-bucket sizes (a crafted size is
refused), resume from a work dir (byte-identical output) and the refusals of a stale one.
"""

from __future__ import annotations

import csv
import errno
import random
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from psi import api
from psi.errors import MalformedMessage, PeerDisconnected, PolicyError, PsiqError, UsageError
from psi.protocols.base import Role
from psi.scale import buckets as bucket_mod
from psi.scale.buckets import DiskFull, auto_buckets, bucket_ranges, padded_size
from psi.scale.runner import run_with_reconnect
from psi.scale.session import BucketedSession, ScaleOptions, TranscriptChannel
from psi.transport.memory import memory_pair


def _write(path: Path, keys: list[str], col: str) -> Path:
    path.write_text(f"id,{col}\n" + "".join(f"{k},{col}{i}\n" for i, k in enumerate(keys)))
    return path


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    rng = random.Random(7)
    common = [f"k{i}" for i in range(120)]
    a = common + [f"a{i}" for i in range(70)] + ["k1", "k2", "a3"]  # duplicates (keep-all)
    b = common + [f"b{i}" for i in range(40)] + ["k1", "k5"]
    rng.shuffle(a)
    rng.shuffle(b)
    return _write(tmp_path / "a.csv", a, "x"), _write(tmp_path / "b.csv", b, "y")


class FullDisk:
    """A file handle whose writes fail as on a full disk (wraps the real one, closes it)."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    def __enter__(self) -> "FullDisk":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.handle.close()

    def write(self, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")


def run_both(client_in: Path, server_in: Path, tmp: Path, options: api.PsiOptions, *, buckets: int | None = 3,
             tag: str = "", server_cls: type = BucketedSession, resume: bool = False,
             client_channel: Any = None, memory_limit: int = 2 << 30) -> tuple[Any, Any]:
    cc, cs = memory_pair()
    box: dict[str, Any] = {}

    def server() -> None:
        try:
            s = server_cls(Role.SERVER, server_in, on=["id"], options=options,
                           scale=ScaleOptions(tmp / f"ws{tag}", buckets, memory_limit, resume),
                           output=tmp / f"out_s{tag}.csv" if options.reveal == "both" else None)
            box["s"] = s.run(cs)
        except BaseException as err:  # noqa: BLE001
            box["e"] = err
            cs.close()

    t = threading.Thread(target=server)
    t.start()
    try:
        c = BucketedSession(Role.CLIENT, client_in, on=["id"], options=options,
                            scale=ScaleOptions(tmp / f"wc{tag}", buckets, memory_limit, resume),
                            output=tmp / f"out_c{tag}.csv" if options.reveal != "cardinality" else None)
        result = c.run(client_channel(cc) if client_channel else cc)
    except BaseException as err:
        cc.close()
        t.join()
        if isinstance(err, PeerDisconnected) and "e" in box:
            raise box["e"] from None  # the server stopped first: its reason is the root cause
        raise
    t.join()
    if "e" in box:
        raise box["e"]
    return result, box["s"]


def _rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))[1:]


def _expected_pairs(a: Path, b: Path, join: str, left: str = "client") -> Counter:
    """Plaintext answer: (client row, server row) pairs; unmatched rows of the side(s) the join keeps."""
    keep_client = join == "full" or (join == "left") == (left == "client") and join != "inner"
    keep_server = join == "full" or (join == "right") == (left == "client") and join != "inner"
    ra, rb = _rows(a), _rows(b)
    pairs: Counter = Counter()
    for x in ra:
        for y in rb:
            if x[0] == y[0]:
                pairs[(tuple(x), tuple(y))] += 1
    ka, kb = {x[0] for x in ra}, {y[0] for y in rb}
    if keep_client:
        for x in ra:
            if x[0] not in kb:
                pairs[(tuple(x), ("", ""))] += 1
    if keep_server:
        for y in rb:
            if y[0] not in ka:
                pairs[(("", ""), tuple(y))] += 1
    return pairs


def _pairs(ca: Path, cb: Path) -> Counter:
    ra, rb = _rows(ca), _rows(cb)
    assert len(ra) == len(rb)
    norm = lambda r: tuple(r) if any(r) else ("", "")  # noqa: E731
    return Counter((norm(x), norm(y)) for x, y in zip(ra, rb))


@pytest.mark.parametrize("protocol,join", [(p, j) for p in ("ecdh", "kkrt") for j in ("inner", "left", "right", "full")]
                         + [("rsa", "inner"), ("rsa", "full")])  # RSA: a key generation per bucket, keep it short
def test_bucketed_join_equals_plaintext_and_unbucketed(files, tmp_path, protocol, join):
    a, b = files
    opts = api.PsiOptions(protocol=protocol, reveal="both", join=join, dedup="keep-all", workers=1,
                          left="server" if join == "right" else "client")
    client, server = run_both(a, b, tmp_path, opts, buckets=2 if protocol == "rsa" else 3)
    got = _pairs(tmp_path / "out_c.csv", tmp_path / "out_s.csv")
    assert got == _expected_pairs(a, b, join, opts.left)
    api.intersect_files(a, b, on=["id"], client_output=tmp_path / "u_c.csv", server_output=tmp_path / "u_s.csv",
                        options=opts)
    assert got == _pairs(tmp_path / "u_c.csv", tmp_path / "u_s.csv")
    # unmatched tails come after the matched rows, in file order, exactly as without buckets
    unbucketed = (tmp_path / "u_c.csv").read_text().splitlines()
    bucketed = (tmp_path / "out_c.csv").read_text().splitlines()
    matched = client.alignment["matched_rows"]
    assert bucketed[1 + matched:] == unbucketed[1 + matched:]
    assert client.intersection_size == server.intersection_size == 120
    assert client.scale["buckets"] == (2 if protocol == "rsa" else 3)


def test_receiver_and_cardinality_modes(files, tmp_path):
    a, b = files
    opts = api.PsiOptions(protocol="kkrt", reveal="receiver", dedup="first", workers=1)
    client, server = run_both(a, b, tmp_path, opts, buckets=4)
    api.intersect_files(a, b, on=["id"], client_output=tmp_path / "u_c.csv", options=opts)
    assert (tmp_path / "out_c.csv").read_bytes() == (tmp_path / "u_c.csv").read_bytes()  # file order: identical
    assert server.intersection_size is None
    opts = api.PsiOptions(protocol="ecdh", reveal="cardinality", dedup="first", workers=1)
    client, server = run_both(a, b, tmp_path, opts, buckets=4, tag="card")
    assert client.intersection_size == 120


def test_bucket_key_is_agreed_from_both_nonces(files, tmp_path):
    a, b = files
    opts = api.PsiOptions(protocol="ecdh", workers=1)
    sessions: dict[str, BucketedSession] = {}

    class Stop(Exception):
        pass

    def hello_only(role: Role, path: Path, channel: Any, name: str) -> None:
        s = BucketedSession(role, path, on=["id"], options=opts, scale=ScaleOptions(tmp_path / name, 2))
        s._scale_hello(channel)
        sessions[name] = s

    for round_ in range(2):
        cc, cs = memory_pair()
        t = threading.Thread(target=hello_only, args=(Role.SERVER, b, cs, f"s{round_}"))
        t.start()
        hello_only(Role.CLIENT, a, cc, f"c{round_}")
        t.join()
    keys = {name: s._bucket_key(s.manifest) for name, s in sessions.items()}
    assert keys["c0"] == keys["s0"] and keys["c1"] == keys["s1"]
    assert keys["c0"] != keys["c1"]  # fresh nonces: a fresh split every session
    m = sessions["c0"].manifest
    assert bucket_mod.bucket_key(bytes.fromhex(m.own_nonce), bytes.fromhex(m.peer_nonce)) == keys["c0"]


class InflatingServer(BucketedSession):
    """A cheating server that announces more keys for a bucket than its totals allow."""

    def _run_bucket(self, channel, m, b):  # type: ignore[override]
        original = self._hello_of

        def inflated(role, options, config, table):
            table.unique_keys += 1000
            return original(role, options, config, table)

        self._hello_of = inflated
        return super()._run_bucket(channel, m, b)


def test_crafted_bucket_size_beyond_announced_totals_is_refused(files, tmp_path):
    a, b = files
    opts = api.PsiOptions(protocol="kkrt", workers=1, dedup="first")
    with pytest.raises(MalformedMessage, match="keys for bucket 0"):
        run_both(a, b, tmp_path, opts, server_cls=InflatingServer)


def test_peer_total_above_cap_is_refused(files, tmp_path):
    a, b = files
    opts = api.PsiOptions(protocol="kkrt", workers=1, dedup="first", max_peer_size=50)
    with pytest.raises(PolicyError, match="above the cap"):
        run_both(a, b, tmp_path, opts)


def test_padded_size_and_auto_buckets():
    n, fine = 10_000_000, 512
    sizes = [padded_size(n, fine, f0, f1, 8) for f0, f1 in bucket_ranges(fine, 8)]
    assert all(n / 8 < s < n / 8 * 1.01 for s in sizes)
    rng = np.random.default_rng(1)
    real = np.bincount(rng.integers(0, 8, n), minlength=8)
    assert (real <= sizes).all()
    assert auto_buckets("kkrt", [n, n], 2 << 30, fine) == 8
    assert auto_buckets("kkrt", [1000, 10], 2 << 30, fine) == 1
    assert bucket_ranges(10, 3) == [(0, 4), (4, 7), (7, 10)]


class DropAfter:
    """Wraps a channel and closes it after ``n`` sent messages (a connection lost mid-session)."""

    def __init__(self, inner: Any, n: int) -> None:
        self.inner, self.n = inner, n
        self.peer_name = inner.peer_name

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def send(self, message: Any) -> None:
        self.n -= 1
        if self.n < 0:
            self.inner.close()
            raise PeerDisconnected("connection dropped by the test")
        self.inner.send(message)

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.inner.close()


def test_resume_after_interruption_is_byte_identical(files, tmp_path):
    a, b = files
    opts = api.PsiOptions(protocol="kkrt", reveal="both", join="full", dedup="keep-all", workers=1)
    ref, _ = run_both(a, b, tmp_path, opts, buckets=4, tag="ref")
    half = ref.stats.messages_sent // 2
    with pytest.raises(PsiqError):
        run_both(a, b, tmp_path, opts, buckets=4, tag="x", client_channel=lambda ch: DropAfter(ch, half))
    assert not (tmp_path / "out_cx.csv").exists()
    client, server = run_both(a, b, tmp_path, opts, buckets=4, tag="x", resume=True)
    assert client.scale["started_at_bucket"][0] >= 1
    assert (tmp_path / "out_cx.csv").read_bytes() == (tmp_path / "out_cref.csv").read_bytes()
    assert (tmp_path / "out_sx.csv").read_bytes() == (tmp_path / "out_sref.csv").read_bytes()


def test_dropped_connection_heals_in_the_same_objects(files, tmp_path):
    a, b = files
    opts = api.PsiOptions(protocol="ecdh", reveal="both", join="left", workers=1, dedup="first")
    ref, _ = run_both(a, b, tmp_path, opts, buckets=4, tag="ref")
    third = ref.stats.messages_sent // 3
    pairs = [memory_pair() for _ in range(3)]
    client = BucketedSession(Role.CLIENT, a, on=["id"], options=opts, scale=ScaleOptions(tmp_path / "wc", 4),
                             output=tmp_path / "c.csv")
    server = BucketedSession(Role.SERVER, b, on=["id"], options=opts, scale=ScaleOptions(tmp_path / "ws", 4),
                             output=tmp_path / "s.csv")
    client_ends = iter([DropAfter(pairs[0][0], third), DropAfter(pairs[1][0], third), pairs[2][0]])
    server_ends = iter(p[1] for p in pairs)
    box: dict[str, Any] = {}
    t = threading.Thread(target=lambda: box.update(s=run_with_reconnect(server, lambda _r: next(server_ends),
                                                                        reconnect_timeout=30, backoff=False)))
    t.start()
    result = run_with_reconnect(client, lambda _r: next(client_ends), reconnect_timeout=30, sleep=lambda _s: None)
    t.join()
    assert result.scale["reconnects"] == 2 and len(result.scale["started_at_bucket"]) == 3
    assert (tmp_path / "c.csv").read_bytes() == (tmp_path / "out_cref.csv").read_bytes()
    assert (tmp_path / "s.csv").read_bytes() == (tmp_path / "out_sref.csv").read_bytes()


def test_resume_refuses_changed_input_parameter_or_other_session(files, tmp_path):
    a, b = files
    opts = api.PsiOptions(protocol="kkrt", reveal="both", workers=1, dedup="keep-all")
    with pytest.raises(PsiqError):
        run_both(a, b, tmp_path, opts, buckets=4, client_channel=lambda ch: DropAfter(ch, 12))
    scale = ScaleOptions(tmp_path / "wc", 4, resume=True)
    with pytest.raises(UsageError, match="holds an interrupted session"):
        BucketedSession(Role.CLIENT, a, on=["id"], options=opts, scale=ScaleOptions(tmp_path / "wc", 4))
    changed = tmp_path / "a2.csv"
    changed.write_bytes(a.read_bytes() + b"zz,x\n")
    with pytest.raises(UsageError, match="a2.csv differs") as err:
        BucketedSession(Role.CLIENT, changed, on=["id"], options=opts, scale=scale)
    assert err.value.exit_code == 2
    with pytest.raises(UsageError, match="reveal: was 'both', now 'receiver'"):
        BucketedSession(Role.CLIENT, a, on=["id"], options=opts.replace(reveal="receiver"), scale=scale)
    with pytest.raises(UsageError, match="buckets: was 4, now 5"):
        BucketedSession(Role.CLIENT, a, on=["id"], options=opts, scale=ScaleOptions(tmp_path / "wc", 5, resume=True))
    # the peer's work dir is from another session: the nonces it remembers differ
    session = BucketedSession(Role.CLIENT, a, on=["id"], options=opts, scale=scale)
    session.manifest.own_nonce = "00" * 32
    cc, cs = memory_pair()
    box: dict[str, Any] = {}

    def server() -> None:
        try:
            BucketedSession(Role.SERVER, b, on=["id"], options=opts, scale=ScaleOptions(tmp_path / "ws", 4, resume=True),
                            output=tmp_path / "s.csv").run(cs)
        except PsiqError as e:
            box["e"] = e

    t = threading.Thread(target=server)
    t.start()
    with pytest.raises(UsageError, match="another session"):
        session.run(cc)
    t.join()
    assert isinstance(box["e"], UsageError)
    # a work dir recorded with another peer identity
    session = BucketedSession(Role.CLIENT, a, on=["id"], options=opts, scale=scale)
    session.manifest.peer = "bank-c"
    with pytest.raises(UsageError, match="peer 'bank-c'"):
        session.run(memory_pair()[0])


def test_disk_full_while_spilling_names_path_and_space(files, tmp_path, monkeypatch):
    a, b = files
    opts = api.PsiOptions(protocol="kkrt", reveal="both", workers=1, dedup="keep-all")
    real_open = open

    def fake_open(path: Any, mode: str = "r", *args: Any, **kw: Any) -> Any:
        handle = real_open(path, mode, *args, **kw)
        return FullDisk(handle) if str(path).endswith(".spill") and "wc" in str(path) else handle

    monkeypatch.setattr(bucket_mod, "open", fake_open, raising=False)
    with pytest.raises(DiskFull, match=r"wc/spill/f\d+\.spill: disk full .* MiB more are needed") as err:
        run_both(a, b, tmp_path, opts, buckets=2)
    assert err.value.exit_code == 2
    assert not (tmp_path / "out_c.csv").exists() and not (tmp_path / "out_s.csv").exists()


def test_transcript_channel_hash_is_symmetric():
    from psi.messages import Message

    a, b = memory_pair()
    ta, tb = TranscriptChannel(a, Role.CLIENT), TranscriptChannel(b, Role.SERVER)
    ta.send(Message("x", b"1"))
    tb.recv(1)
    tb.send(Message("y", b"22"))
    ta.recv(1)
    assert ta.digest() == tb.digest()


def test_peer_cannot_make_this_side_rerun_many_finished_buckets(files, tmp_path):
    """A cheating client claims to have lost its finished buckets, to query them again."""
    import json

    a, b = files
    opts = api.PsiOptions(protocol="kkrt", reveal="receiver", workers=1, dedup="first")
    manifest = tmp_path / "wc" / "manifest.json"

    class DropAfterFour(DropAfter):
        def send(self, message: Any) -> None:
            if manifest.exists() and len(json.loads(manifest.read_text())["finished"]) >= 4:
                self.n = 0
            super().send(message)

    with pytest.raises(PsiqError):
        run_both(a, b, tmp_path, opts, buckets=6, client_channel=lambda ch: DropAfterFour(ch, 10**6))
    server_done = len(json.loads((tmp_path / "ws" / "manifest.json").read_text())["finished"])
    assert server_done >= 4
    data = json.loads(manifest.read_text())
    data["finished"] = []
    manifest.write_text(json.dumps(data))
    with pytest.raises(PolicyError, match="rerun buckets this side finished"):
        run_both(a, b, tmp_path, opts, buckets=6, resume=True)


def test_finished_bucket_histories_must_match(files, tmp_path):
    """A peer presenting another record of the finished buckets (transcript chain) is refused."""
    import json

    a, b = files
    opts = api.PsiOptions(protocol="kkrt", reveal="both", workers=1, dedup="first")
    with pytest.raises(PsiqError):
        run_both(a, b, tmp_path, opts, buckets=4, client_channel=lambda ch: DropAfter(ch, 12))
    manifest = tmp_path / "wc" / "manifest.json"
    data = json.loads(manifest.read_text())
    assert data["finished"], "the drop came before any finished bucket"
    data["finished"][-1]["chain"] = "0" * 64
    manifest.write_text(json.dumps(data))
    with pytest.raises(PsiqError, match="transcript hashes differ") as err:  # raised here or by the peer
        run_both(a, b, tmp_path, opts, buckets=4, resume=True)
    assert err.value.exit_code == 4


class RewriteTotals(DropAfter):
    """A cheating peer: rewrites one field of its scale totals message before sending it."""

    def __init__(self, inner: Any, field: str, value: Any) -> None:
        super().__init__(inner, 10**6)
        self.field, self.value = field, value

    def send(self, message: Any) -> None:
        from psi.messages import Message, pack_json, unpack_json
        from psi.scale.session import TOTALS_KIND

        if message.kind == TOTALS_KIND:
            body = unpack_json(message.body, max_size=4096)
            body[self.field] = self.value
            message = Message(TOTALS_KIND, pack_json(body))
        super().send(message)


@pytest.mark.parametrize("chain", ["é" * 32, "g" * 64, "0" * 63, "A" * 64, "0" * 64 + "\n"])
def test_a_crafted_chain_hash_is_refused_as_malformed(files, tmp_path, chain):
    """Not a hex digest (non-ASCII made secrets.compare_digest raise TypeError: a traceback
    instead of exit 4): the server refuses it as a malformed message."""
    a, b = files
    opts = api.PsiOptions(protocol="kkrt", reveal="both", workers=1, dedup="first")
    with pytest.raises(PsiqError, match="bad chain hash") as err:
        run_both(a, b, tmp_path, opts, buckets=2, client_channel=lambda ch: RewriteTotals(ch, "chain", chain))
    assert err.value.exit_code == 4


@pytest.mark.parametrize("join", ["inner", "full"])
def test_bucketed_parquet_output_equals_plaintext(files, tmp_path, join):
    """Parquet inputs take the in-memory write_rows path of the bucketed output: its rows pair up
    as the plaintext join says (empty cells come back as nulls)."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    a, b = files
    pa_a, pa_b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    for src, dst in ((a, pa_a), (b, pa_b)):
        rows = _rows(src)
        pq.write_table(pa.table({"id": [r[0] for r in rows], src.stem: [r[1] for r in rows]}), dst)
    opts = api.PsiOptions(protocol="ecdh", reveal="both", join=join, dedup="keep-all", workers=1)
    run_both(pa_a, pa_b, tmp_path, opts, buckets=3)

    def rows_of(path: Path) -> list[tuple[str, str]]:
        table = pq.read_table(path)  # parquet bytes, whatever the name
        return [(i or "", v or "") for i, v in zip(*(col.to_pylist() for col in table.columns))]

    got = Counter(zip(rows_of(tmp_path / "out_c.csv"), rows_of(tmp_path / "out_s.csv")))
    assert got == _expected_pairs(a, b, join)
