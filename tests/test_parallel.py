"""psi.parallel: ordered results, the in-process path, errors, warm-up, even splitting."""

from __future__ import annotations

import os

import pytest

from psi.parallel import Executor, split, split_even, wait_first


def _square_all(batch):
    return [x * x for x in batch]


def _pid(_batch):
    return os.getpid()


def _fail_on_three(batch):
    if 3 in batch:
        raise ValueError("three")
    return list(batch)


def _add(a, b):
    return a + b


def test_split_and_split_even():
    assert split(list(range(7)), 3) == [[0, 1, 2], [3, 4, 5], [6]]
    assert split_even(list(range(7)), 3) == [[0, 1], [2, 3], [4, 5, 6]]
    assert split_even(list(range(2)), 4) == [[0], [1]]  # never an empty piece
    assert split_even([], 3) == []
    assert split_even(b"abcdef", 2) == [b"abc", b"def"]
    with pytest.raises(ValueError):
        split([1], 0)
    with pytest.raises(ValueError):
        split_even([1], 0)


@pytest.mark.parametrize("workers", [1, 2])
def test_map_imap_scatter_keep_order(workers):
    batches = split(list(range(50)), 7)
    expected = [_square_all(b) for b in batches]
    with Executor(workers) as ex:
        assert ex.map(_square_all, batches) == expected
        assert ex.map(_square_all, batches, parallel=False) == expected
        assert list(ex.imap(_square_all, batches, ahead=2)) == expected
        futures = ex.scatter(_square_all, list(range(50)))
        assert len(futures) == workers
        assert [y for f in futures for y in f.result()] == [x * x for x in range(50)]
        assert ex.scatter(_square_all, []) == []
        assert ex.submit(_add, 2, 3).result() == 5


def test_workers_one_runs_in_process():
    with Executor(1) as ex:
        ex.warm("json")  # no pool with one worker
        assert ex._pool is None
        assert ex.map(_pid, [[1], [2]]) == [os.getpid()] * 2
        fut = ex.submit(_pid, None)
        assert fut.done() and fut.result() == os.getpid()
        assert ex._pool is None


@pytest.mark.parametrize("workers", [1, 2])
def test_exceptions_propagate(workers):
    with Executor(workers) as ex:
        with pytest.raises(ValueError, match="three"):
            ex.map(_fail_on_three, [[1, 2], [3, 4]])
        with pytest.raises(ValueError, match="three"):
            list(ex.imap(_fail_on_three, [[1], [3], [5]]))
        futures = ex.scatter(_fail_on_three, [1, 2, 3, 4])
        wait_first(futures)
        with pytest.raises(ValueError, match="three"):
            [f.result() for f in futures]
        assert ex.map(_square_all, [[2], [3]]) == [[4], [9]]  # still usable afterwards


def test_warm_through_the_fork_server_in_the_background(monkeypatch):
    monkeypatch.setenv("PSIQ_START_METHOD", "forkserver")
    ex = Executor(2)
    try:
        ex.warm("psi.crypto.groups")
        ex.warm("psi.crypto.groups")  # idempotent
        assert ex._warm_thread is not None
        ex._warm_thread.join(timeout=60)
        for fut in ex._warm:
            fut.result(timeout=60)
        pids = {f.result() for f in ex.scatter(_pid, list(range(8)))}
        assert os.getpid() not in pids and ex.start_method == "forkserver"
    finally:
        ex.close()
    ex.close()  # closing twice is harmless
    wait_first([])  # nothing to wait for


def test_fork_only_from_a_lone_main_thread(monkeypatch):
    import threading

    from psi.parallel import _start_method

    monkeypatch.delenv("PSIQ_START_METHOD", raising=False)
    seen = {}
    t = threading.Thread(target=lambda: seen.setdefault("method", _start_method()))
    t.start()
    t.join()
    assert seen["method"] == "forkserver"  # another thread exists while this one asks
    if threading.active_count() == 1:
        ex = Executor(2)
        try:
            ex.warm("psi.crypto.groups")
            assert ex.start_method == "fork" and ex._warm_thread is None
            pids = {f.result() for f in ex.scatter(_pid, list(range(8)))}
            assert os.getpid() not in pids
        finally:
            ex.close()
