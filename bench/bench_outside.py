"""Time what lies outside the PSI session, for old and new trees side by side.

Each run is ``psiq psi serve`` then (once it listens) ``psiq psi connect`` as two processes over
loopback TLS, ``--reveal both --output`` (aligned output), on the cached ``bench/data`` files,
each process started through ``bench/outside_probe.py`` so that it records when it started, when
its imports ended, its input read, its session (hello to the end of the alignment exchange) and
its output write. Trees (``--tree label=DIR``, e.g. ``old=/work/main new=.``) are interleaved
run by run so that both see the same machine load.

Per process the table shows: ``start`` (exec to the end of ``import cli.main``, interpreter
start-up included), ``read`` (``read_keys`` of the input), ``pre`` (everything from exec to the
first hello: start, imports, options, read, connecting), ``session`` (hello to the end of the
alignment exchange), ``write`` (the output file), ``post`` (session end to process exit) and
``cpu`` (the process's own user+sys CPU seconds, workers excluded). ``wall`` is the pair: server
launch to both exited; ``outside`` = wall minus the client's session.

    .venv/bin/python bench/bench_outside.py --tree old=/work/main --tree new=. --sizes 100000,1048576 \\
        --protocols kkrt,ecdh --repeat 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BenchError, dataset, free_port, make_pki, run_pair, write_json  # noqa: E402

PROBE = Path(__file__).resolve().parent / "outside_probe.py"
KEY = "id_number"


def _cmd(tree: Path, role: str, protocol: str, data: Path, pki: Path, port: int, out: Path, timeout: int,
         extra: list[str]) -> list[str]:
    me, peer = ("bank-b", "bank-a") if role == "serve" else ("bank-a", "bank-b")
    table = data / ("bank_b.csv" if role == "serve" else "bank_a.csv")
    cmd = [sys.executable, str(PROBE), "psi", role, "--protocol", protocol, "--input", str(table), "--on", KEY,
           "--reveal", "both", "--output", str(out), "--tls-cert", str(pki / f"{me}.pem"),
           "--tls-key", str(pki / f"{me}.key"), "--tls-ca", str(pki / "ca.pem"), "--peer-name", peer,
           "--json", "--quiet", "--timeout", str(timeout)] + extra
    cmd += ["--listen", f"127.0.0.1:{port}"] if role == "serve" else ["--peer", f"127.0.0.1:{port}"]
    return cmd


def _segments(probe: dict[str, Any]) -> dict[str, float]:
    marks: dict[str, list[float]] = {}
    for name, at in probe["marks"]:
        marks.setdefault(name, []).append(at)
    t0 = marks["exec"][0]
    hello = marks["hello>"][0]
    session_end = marks["party<"][-1]
    seg = {
        "start": marks["imported"][0] - t0,
        "read": marks["read<"][0] - marks["read>"][0],
        "pre": hello - t0,
        "session": session_end - hello,
        "write": (marks["write<"][0] - marks["write>"][0]) if "write>" in marks else 0.0,
        "post": marks["exit"][0] - session_end,
        "cpu": probe["cpu_user"] + probe["cpu_sys"],
        "rss_mb": probe["maxrss_mb"],
        "_t0": t0, "_hello": hello, "_end": session_end, "_exit": marks["exit"][0],
    }
    return seg


def run_one(tree: Path, protocol: str, n: int, pki: Path, timeout: int, extra: list[str]) -> dict[str, Any]:
    data = dataset(n)
    expected = json.loads((data / "expected.json").read_text())["intersection"]["bank_a&bank_b"]
    with tempfile.TemporaryDirectory(prefix="psiq-outside-") as tmp:
        t = Path(tmp)
        port = free_port()
        env = {"PYTHONPATH": str(tree)}
        server = _cmd(tree, "serve", protocol, data, pki, port, t / "b_out.csv", timeout, extra)
        client = _cmd(tree, "connect", protocol, data, pki, port, t / "a_out.csv", timeout, extra)
        env_s = {**env, "PSIQ_PROBE_OUT": str(t / "server.json")}
        env_c = {**env, "PSIQ_PROBE_OUT": str(t / "client.json")}
        # run_pair takes one environment: the probe file name is chosen per process by role
        server = ["env", f"PSIQ_PROBE_OUT={env_s['PSIQ_PROBE_OUT']}"] + server
        client = ["env", f"PSIQ_PROBE_OUT={env_c['PSIQ_PROBE_OUT']}"] + client
        res = run_pair(server, client, port=port, timeout=timeout, env=env)
        for side in (res.client, res.server):
            if side.get("intersection_size") != expected or side.get("output_rows") != expected:
                raise BenchError(f"{tree}: intersection {side.get('intersection_size')} / rows "
                                 f"{side.get('output_rows')}, expected {expected}")
        a, b = (t / "a_out.csv").read_bytes(), (t / "b_out.csv").read_bytes()
        sizes = (len(a), len(b))
        probes = {role: json.loads((t / f"{role}.json").read_text()) for role in ("server", "client")}
    seg = {role: _segments(p) for role, p in probes.items()}
    c, s = seg["client"], seg["server"]
    wall_end = max(c["_exit"], s["_exit"])
    wall = wall_end - s["_t0"]
    return {"protocol": protocol, "n": n, "wall": wall, "outside": wall - (c["_end"] - c["_hello"]),
            "server_pre_to_client_exec": c["_t0"] - s["_t0"], "own_cpu_s": res.cpu.get("own_cpu_s"),
            "other_cpu_s": res.cpu.get("other_cpu_s"), "load": os.getloadavg()[0], "out_bytes": sizes,
            "client": {k: round(v, 3) for k, v in c.items() if not k.startswith("_")},
            "server": {k: round(v, 3) for k, v in s.items() if not k.startswith("_")},
            "phases": {"client": res.client.get("phases"), "server": res.server.get("phases")}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", action="append", required=True, help="label=DIR of a psiq checkout")
    ap.add_argument("--protocols", default="kkrt,ecdh")
    ap.add_argument("--sizes", default="100000")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--timeout", type=int, default=600)
    ap.add_argument("--extra", default="", help="more psiq options for both sides, space-separated")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    trees = [(label, Path(d).resolve()) for label, d in (t.split("=", 1) for t in args.tree)]
    extra = args.extra.split()
    import compileall

    for _label, tree in trees:  # as pip install does: no process compiles its modules first
        for package in ("psi", "cli", "pir"):
            compileall.compile_dir(str(tree / package), quiet=1)
    results = []
    with tempfile.TemporaryDirectory(prefix="psiq-outside-pki-") as pki_dir:
        pki = make_pki(Path(pki_dir) / "pki")
        for n in [int(x) for x in args.sizes.split(",")]:
            for protocol in args.protocols.split(","):
                for rep in range(args.repeat):
                    for label, tree in trees:
                        r = run_one(tree, protocol, n, pki, args.timeout, extra)
                        r.update(tree=label, rep=rep)
                        results.append(r)
                        c, s = r["client"], r["server"]
                        print(f"{label:4} {protocol:5} n={n:>8} wall {r['wall']:6.2f} outside {r['outside']:5.2f} "
                              f"cpu {r['own_cpu_s']} other {r['other_cpu_s']} load {r['load']:.2f} | "
                              + " | ".join(f"{role[0]}: start {x['start']:.2f} read {x['read']:.2f} pre {x['pre']:.2f} "
                                           f"sess {x['session']:.2f} write {x['write']:.2f} post {x['post']:.2f} "
                                           f"cpu {x['cpu']:.2f} rss {x['rss_mb']:.0f}"
                                           for role, x in (("client", c), ("server", s))), flush=True)
    print("medians:")
    keys = sorted({(r["protocol"], r["n"], r["tree"]) for r in results}, key=lambda k: (k[1], k[0], k[2]))
    for key in keys:
        rs = [r for r in results if (r["protocol"], r["n"], r["tree"]) == key]
        med = lambda f: statistics.median(f(r) for r in rs)  # noqa: E731
        print(f"  {key[2]:4} {key[0]:5} n={key[1]:>8} wall {med(lambda r: r['wall']):6.2f} "
              f"outside {med(lambda r: r['outside']):5.2f} "
              + " ".join(f"{role[0]}.{f} {med(lambda r: r[role][f]):.2f}" for role in ("client", "server")
                         for f in ("start", "read", "pre", "write", "post", "rss_mb")))
    if args.out:
        write_json(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
