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


def _inet_sockets(_arg):
    """The AF_INET/AF_INET6 sockets open in this (worker) process."""
    import socket
    import stat

    found = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
        except OSError:
            continue
        probe = socket.socket(fileno=fd)
        try:
            if probe.family in (socket.AF_INET, socket.AF_INET6):
                found.append(fd)
        finally:
            probe.detach()
    return found


def _signal_dispositions(_arg):
    import signal

    return [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)]


@pytest.mark.parametrize("method", ["fork", "forkserver"])
def test_workers_do_not_keep_the_parents_sockets(method, monkeypatch):
    """A listening socket opened before the pool must not live on in any worker (issue 11.1)."""
    import signal
    import socket

    monkeypatch.setenv("PSIQ_START_METHOD", method)
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen(1)
        with Executor(2) as ex:
            futures = [ex.submit(_inet_sockets, None) for _ in range(4)]
            assert [f.result() for f in futures] == [[]] * 4
            assert ex.submit(_signal_dispositions, None).result() == [signal.SIG_IGN, signal.SIG_DFL, signal.SIG_DFL]


def test_worker_watchdog_exits_when_the_parent_pipe_closes():
    """The fallback when PR_SET_PDEATHSIG is unavailable: EOF on the parent's pipe ends the worker."""
    import subprocess
    import sys
    import time

    code = (
        "import os, threading\n"
        "from psi import parallel\n"
        "r, w = os.pipe()\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os.close(w)\n"
        "    parallel._watchdog(os.getppid(), r)\n"
        "    os._exit(0)\n"
        "os.close(r)\n"
        "print(pid, flush=True)\n"
        "os.close(w)\n"  # the 'parent died' event, seen by the child as EOF
        "_, status = os.waitpid(pid, 0)\n"
        "print(os.waitstatus_to_exitcode(status), flush=True)\n"
    )
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[1] == "1" and time.monotonic() - started < 10
