"""A/B cost of KKRT at one size, old tree against new tree, runs interleaved.

    python bench/ab_kkrt.py OLD_TREE NEW_TREE [--n 1048576] [--pairs 2] [--reveal both] [--inprocess]

Each TREE is a directory holding a ``psi`` package (for example
``git archive <commit> psi | tar -x -C DIR``). Runs alternate old/new so that load on a shared
machine hits both alike. Each run is a fresh interpreter (``--one``) printing one JSON line:
two processes over loopback TCP without TLS, two workers each (default), or both parties in one
process with one worker (``--inprocess``); wall time, CPU seconds of all its processes (workers
included), load average and the bytes each party sent. Used for the protocol-version-2 (OOS17
check) figures in docs/OT.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import resource
import subprocess
import sys
import time


def _items(seed: int, n: int) -> list[bytes]:
    return [hashlib.sha256(b"%d-%d" % (seed, i)).digest()[:16] for i in range(n)]


def _one(tree: str, n: int, reveal: str, inprocess: bool) -> dict:
    sys.path.insert(0, tree)
    from psi.driver import run_pair, run_party
    from psi.parallel import Executor
    from psi.protocols import kkrt
    from psi.protocols.base import Reveal
    from psi.transport.tcp import Listener, connect

    common = _items(0, n // 2)
    client_items, server_items = common + _items(1, n - n // 2), common + _items(2, n - n // 2)
    config = kkrt.Config(reveal=Reveal(reveal))
    if inprocess:
        executor = Executor(1)
        client = kkrt.Client(client_items, config, peer_size=n, executor=executor)
        server = kkrt.Server(server_items, config, peer_size=n, executor=executor)
        t0, c0 = time.perf_counter(), time.process_time()
        run_pair(client, server)
        result = {"wall": time.perf_counter() - t0, "cpu": time.process_time() - c0}
    else:
        queue: mp.Queue = mp.Queue()

        def serve() -> None:
            with Executor() as executor, Listener("127.0.0.1:0", None) as listener:
                queue.put(listener.address[1])
                with listener.accept() as channel:
                    server = kkrt.Server(server_items, config, peer_size=n, executor=executor)
                    queue.put(run_party(server, channel).bytes_sent)

        t0 = time.perf_counter()
        process = mp.get_context("fork").Process(target=serve)
        process.start()
        port = queue.get()
        with Executor() as executor, connect(f"127.0.0.1:{port}", None) as channel:
            client = kkrt.Client(client_items, config, peer_size=n, executor=executor)
            stats = run_party(client, channel)
        server_sent = queue.get()
        process.join()
        usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
        result = {"wall": time.perf_counter() - t0, "cpu": sum(u.ru_utime + u.ru_stime for u in usage),
                  "client_sent": stats.bytes_sent, "server_sent": server_sent}
    if client.result().cardinality != n // 2:
        raise SystemExit("wrong intersection size")
    return {"tree": tree, "n": n, "reveal": reveal, "inprocess": inprocess,
            **{k: round(v, 2) if isinstance(v, float) else v for k, v in result.items()},
            "load": open("/proc/loadavg").read().split()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs="+")
    parser.add_argument("--n", type=int, default=1 << 20)
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--reveal", default="both", choices=["both", "receiver"])
    parser.add_argument("--inprocess", action="store_true")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(_one(args.trees[0], args.n, args.reveal, args.inprocess)), flush=True)
        return
    for _ in range(args.pairs):
        for tree in args.trees:
            cmd = [sys.executable, __file__, tree, "--one", "--n", str(args.n), "--reveal", args.reveal]
            subprocess.run(cmd + (["--inprocess"] if args.inprocess else []), check=True)


if __name__ == "__main__":
    main()
