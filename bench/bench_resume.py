"""Kill -9 the client half-way through a bucketed session, resume both, compare (docs/SCALE.md).

    python bench/bench_resume.py --size 10000000            # issue 15's resume target
    python bench/bench_resume.py --size 1000000 --buckets 8  # a quick run

Three sessions of ``psiq psi serve`` / ``psiq psi connect`` over loopback TLS on the inputs of
``bench_scale.py`` (``--reveal both --join full --buckets auto``, each side its own work dir):

1. *reference*: uninterrupted, into its own work dirs;
2. *killed*: the server gets ``--reconnect-timeout 0``; once the client's manifest records half
   of the buckets finished, and half a bucket's time later (mid-bucket), the client gets SIGKILL; the server then ends with exit 3 and
   neither side leaves an output;
3. *resumed*: both commands again, unchanged plus ``--resume`` (same work dirs and inputs).

Checked: both resumed outputs are byte-identical to the reference outputs, and the resumed
client started at the last bucket both had finished (``scale.started_at_bucket``). Reported:
wall time of each part, the buckets redone (finished by the client before the kill but run
again) and the extra time, ``killed + resumed - reference``, next to one bucket's share of the
reference run. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale import ROOT, dataset, free_port  # noqa: E402


def _finished(work: Path) -> int:
    try:
        return len(json.loads((work / "manifest.json").read_text())["finished"])
    except (OSError, ValueError, KeyError):
        return 0


class Pair:
    """One server and one client process of the same session."""

    def __init__(self, args: argparse.Namespace, a: Path, b: Path, pki: Path, tmp: Path, tag: str, *extra: str,
                 server_extra: tuple[str, ...] = ()) -> None:
        port = free_port()
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        tls = lambda me, peer: ["--tls-cert", str(pki / f"{me}.pem"), "--tls-key", str(pki / f"{me}.key"),  # noqa: E731
                                "--tls-ca", str(pki / "ca.pem"), "--peer-name", peer]
        common = ["--protocol", args.protocol, "--reveal", "both", "--join", "full", "--on", "id", "--json", "--quiet",
                  "--max-peer-size", str(10**9), "--timeout", "3600", "--buckets", args.buckets,
                  "--memory-limit", args.memory_limit, *extra]
        self.started = time.perf_counter()
        self.server = subprocess.Popen(
            [sys.executable, "-m", "cli", "psi", "serve", "--listen", f"127.0.0.1:{port}", "--input", str(b),
             "--output", str(tmp / f"s-{tag}.csv"), "--work-dir", str(tmp / f"ws-{tag}"), *common, *server_extra,
             *tls("bank-b", "bank-a")], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(0.5)
        self.client = subprocess.Popen(
            [sys.executable, "-m", "cli", "psi", "connect", "--peer", f"127.0.0.1:{port}", "--input", str(a),
             "--output", str(tmp / f"c-{tag}.csv"), "--work-dir", str(tmp / f"wc-{tag}"), *common,
             *tls("bank-a", "bank-b")], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def finish(self) -> tuple[dict, dict, float]:
        out_c, err_c = self.client.communicate()
        out_s, err_s = self.server.communicate()
        wall = time.perf_counter() - self.started
        if self.client.returncode or self.server.returncode:
            raise SystemExit(f"exit {self.client.returncode}/{self.server.returncode}: {err_c.strip()} {err_s.strip()}")
        return json.loads(out_c), json.loads(out_s), wall


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=10**7)
    p.add_argument("--protocol", default="kkrt")
    p.add_argument("--buckets", default="auto")
    p.add_argument("--memory-limit", default="2GiB")
    p.add_argument("--kill-at", type=float, default=0.5, help="fraction of the buckets finished before the kill")
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))
    from psi.transport.tls import create_test_pki

    a, b = dataset(args.size)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        pki = tmp / "pki"
        create_test_pki(pki, ["bank-a", "bank-b"])

        ref_c, ref_s, ref_wall = Pair(args, a, b, pki, tmp, "ref").finish()
        buckets = ref_c["scale"]["buckets"]

        # the killed run: work dirs named like the resumed run's (it continues in them)
        run = Pair(args, a, b, pki, tmp, "x", server_extra=("--reconnect-timeout", "0"))
        work = tmp / "wc-x"
        want = max(1, int(buckets * args.kill_at))
        while _finished(work) < want and run.client.poll() is None:
            time.sleep(0.05)
        time.sleep(ref_c["seconds"] / buckets / 2)  # into the middle of the next bucket
        killed_after = _finished(work)
        run.client.send_signal(signal.SIGKILL)
        run.client.wait()
        server_exit = run.server.wait()
        killed_wall = time.perf_counter() - run.started
        assert server_exit == 3, f"server exit {server_exit}, expected 3 (connection lost)"
        assert not (tmp / "c-x.csv").exists() and not (tmp / "s-x.csv").exists(), "an output was left behind"

        res_c, res_s, resumed_wall = Pair(args, a, b, pki, tmp, "x", "--resume").finish()
        start = res_c["scale"]["started_at_bucket"][0]
        identical = {side: filecmp.cmp(tmp / f"{side}-x.csv", tmp / f"{side}-ref.csv", shallow=False)
                     for side in ("c", "s")}
        assert all(identical.values()), f"outputs differ from the uninterrupted run: {identical}"
        per_bucket = ref_c["seconds"] / buckets
        print(json.dumps({
            "size": args.size, "protocol": args.protocol, "buckets": buckets, "killed_after_buckets": killed_after,
            "resumed_at_bucket": start, "buckets_redone": killed_after - start,
            "wall": {"reference": round(ref_wall, 1), "killed": round(killed_wall, 1), "resumed": round(resumed_wall, 1)},
            "extra_seconds": round(killed_wall + resumed_wall - ref_wall, 1),
            "reference_seconds_per_bucket": round(per_bucket, 1),
            "outputs_identical": identical, "server_exit_after_kill": server_exit,
            "phases_client": {"reference": ref_c["phases"], "resumed": res_c["phases"]},
            "seconds_client": {"reference": ref_c["seconds"], "resumed": res_c["seconds"]},
            "peak_rss_mb": {"reference": [ref_c["peak_rss_mb"], ref_s["peak_rss_mb"]],
                            "resumed": [res_c["peak_rss_mb"], res_s["peak_rss_mb"]]},
            "load_average": os.getloadavg(),
        }, indent=1))


if __name__ == "__main__":
    main()
