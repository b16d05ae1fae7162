"""PSI end to end: psiq's rsa / ecdh / kkrt as two real processes over loopback TLS, openmined-psi
on the same keys, and the floor each protocol cannot beat on this machine.

    python bench/bench_psi.py                                # 10^4 and 10^5 keys per side
    python bench/bench_psi.py --large                        # adds 10^6
    python bench/bench_psi.py --protocols ecdh --sizes 100000 --all-compressions
    python bench/bench_psi.py --no-openmined --receiver      # also time --reveal receiver
    python bench/bench_psi.py --protocols ecdh --sizes 100000 --no-openmined --backends portable,mb --repeat 3

For every size N, bench/data/ gets (once, cached) two synthetic bank tables with N rows each and
``--overlap`` of them in common (psiq_datasets.generate). For every protocol variant the script
starts ``psiq psi serve ... --json --quiet`` and, once it listens, ``psiq psi connect ... --json
--quiet --reveal both --output ...`` with certificates from ``psiq certs init`` (temp dir), waits
for both (``--timeout``, then both are killed), and checks both summaries' intersection size,
the written row counts and the row-by-row alignment of the two output files against the
plaintext intersection: a wrong answer stops the script with exit code 1.

Recorded per run: ``wall`` (measured here: server launch to both processes exited, so it includes
interpreter start, reading the CSVs, TLS, the protocol, alignment and writing the outputs),
``session`` (the longer of the two parties' own ``seconds``: hello to output written), each
party's phases, bytes each way and peak RSS (the summaries' ``peak_rss_mb``: the party's own
process or its largest worker, whichever is larger), and the CPU-seconds both parties and their
workers used (their share of all cores over ``wall``) next to what the rest of the machine used
meanwhile (/proc/stat), so a run disturbed by other load shows it.

openmined-psi (``private_set_intersection.python``, C++ ECDH on P-256) is a library without a
network layer: its four steps (server setup, client request, server response, client
intersection) run one after the other in one fresh process on one core, timed separately; its
wire size is the serialised protobuf messages. It is given ``fpr = 2^-fpr_bits`` because its
``fpr`` is "the probability that any query of num_client_inputs items gives a false positive"
(it divides by num_client_inputs internally), which is psiq's definition: expected false
matches per session at most 2^-fpr_bits.

Floors, from primitive costs measured in this run (one core, best of 3, once before and once after
the sessions; the cheaper is used, since other load on the machine only adds time):

* rsa:  ``(n_client + n_server) * t_crt / cores``, t_crt = one 2048-bit gmpy2 CRT signature
  including the s^e check (``psi.crypto.rsa_keys.sign_batch``).
* ecdh: ``(3 m + n) * t_mul / cores`` (client 2m: blind and unblind; server m + n: evaluate and
  its own set; see psi/protocols/ecdh.py), t_mul = one ``multiply_batch`` element (validation
  included). ``floor_hash`` also charges hash-to-group for the m + n hashed items, using
  ``hash_and_multiply_batch`` for those.
* kkrt: no public-key floor; reported as its speed-up over ecdh at the largest size.

Ratios are given against both ``wall`` and ``session``.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import resource
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    REPO,
    BenchError,
    cores,
    dataset,
    free_port,
    machine_info,
    make_pki,
    plaintext_intersection,
    precompile_psiq,
    psiq_command,
    read_keys,
    run_pair,
    write_json,
)

KEY_COLUMN = "id_number"
OM_MODES = ("raw", "gcs", "bloom")


# -- primitives -------------------------------------------------------------------------------
def _best(fn, repeat: int = 3) -> float:
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def measure_rsa(bits: int = 2048, count: int = 300) -> dict[str, Any]:
    from psi.crypto.rsa_keys import RsaKey, sign_batch

    key = RsaKey.generate(bits)
    params = key.crt_params()
    n = params[0]
    values = [secrets.randbelow(n - 2) + 2 for _ in range(count)]
    t = _best(lambda: sign_batch(params, values)) / count
    return {"bits": bits, "count": count, "t_crt_us": round(t * 1e6, 2)}


def measure_group(group: str, count: int = 2000) -> dict[str, Any]:
    from psi.crypto.groups import get_group, hash_and_multiply_batch, multiply_batch

    g = get_group(group)
    scalar = g.generate_scalar()
    items = [b"bench-%010d" % i for i in range(count)]
    dst = b"psiq-bench-floor"
    hashed = g.hash_to_group(dst, items)
    t_mul = _best(lambda: multiply_batch(group, scalar, hashed)) / count
    t_hash_mul = _best(lambda: hash_and_multiply_batch(group, dst, scalar, items)) / count
    from psi.crypto import backends

    return {"group": group, "count": count, "backend": backends.current().name, "t_mul_us": round(t_mul * 1e6, 2),
            "t_hash_mul_us": round(t_hash_mul * 1e6, 2)}


def measure_primitives(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None}
    if "rsa" in args.protocols:
        out["rsa"] = measure_rsa(args.key_bits)
    if "ecdh" in args.protocols:
        out["groups"] = {args.group: measure_group(args.group)}
    return out


def best_primitives(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """The cheaper of the measurements before and after the sessions (other load only adds time)."""
    best: dict[str, Any] = {"samples": samples}
    rsa = [s["rsa"] for s in samples if "rsa" in s]
    if rsa:
        best["rsa"] = min(rsa, key=lambda r: r["t_crt_us"])
    groups: dict[str, Any] = {}
    for s in samples:
        for name, g in s.get("groups", {}).items():
            cur = groups.get(name)
            groups[name] = g if cur is None else {**cur, "t_mul_us": min(cur["t_mul_us"], g["t_mul_us"]),
                                                  "t_hash_mul_us": min(cur["t_hash_mul_us"], g["t_hash_mul_us"])}
    if groups:
        best["groups"] = groups
    return best


# -- psiq runs --------------------------------------------------------------------------------
def _variants(args: argparse.Namespace) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    reveals = ["both"] + (["receiver"] if args.receiver else [])
    for protocol in args.protocols:
        if protocol == "ecdh":
            comps = [args.compression]
            if args.all_compressions:
                comps += [c for c in ("raw", "bloom", "gcs") if c != args.compression]
            params = [{"group": args.group, "compression": c, **({"backend": b} if b else {})}
                      for c in comps for b in (args.backends or [None])]
        elif protocol == "rsa":
            params = [{"key_bits": args.key_bits}]
        else:
            params = [{}]
        for p in params:
            for reveal in reveals:
                out.append({"protocol": protocol, "reveal": reveal, **p})
    return out


def _label(v: dict[str, Any]) -> str:
    if v["protocol"] == "ecdh":
        text = f"{v['group']}/{v['compression']}"
        if v.get("filter") and v["compression"] == "auto":
            text += f"->{v['filter']}"
    elif v["protocol"] == "rsa":
        text = f"{v['key_bits']}-bit"
    else:
        text = "-"
    if v["reveal"] != "both":
        text += f" ({v['reveal']})"
    if v.get("backend"):
        text += f" [{v['backend']}]"
    return text


def _party_cmd(role: str, v: dict[str, Any], data: Path, pki: Path, port: int, out: Path | None,
               args: argparse.Namespace, timeout: float) -> list[str]:
    me, peer = ("bank-b", "bank-a") if role == "serve" else ("bank-a", "bank-b")
    table = data / ("bank_b.csv" if role == "serve" else "bank_a.csv")
    backend = ["--backend", v["backend"]] if v.get("backend") else []
    cmd = psiq_command() + backend + ["psi", role, "--protocol", v["protocol"], "--input", str(table), "--on", KEY_COLUMN,
                            "--reveal", v["reveal"],
                            "--tls-cert", str(pki / f"{me}.pem"), "--tls-key", str(pki / f"{me}.key"),
                            "--tls-ca", str(pki / "ca.pem"), "--peer-name", peer,
                            "--json", "--quiet", "--timeout", str(int(timeout))]
    cmd += ["--listen", f"127.0.0.1:{port}"] if role == "serve" else ["--peer", f"127.0.0.1:{port}"]
    if out is not None:
        cmd += ["--output", str(out)]
    if v["protocol"] == "ecdh":
        cmd += ["--group", v["group"], "--compression", v["compression"], "--fpr-bits", str(args.fpr_bits)]
    if v["protocol"] == "rsa":
        cmd += ["--key-bits", str(v["key_bits"])]
    if args.workers:
        cmd += ["--workers", str(args.workers)]
    return cmd


def _party(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: summary.get(k) for k in ("seconds", "phases", "bytes_sent", "bytes_received", "peak_rss_mb",
                                        "intersection_size", "output_rows", "set_size", "notes")}


def _check_alignment(a: Path, b: Path, expected: int) -> None:
    keys_a, keys_b = read_keys(a, KEY_COLUMN), read_keys(b, KEY_COLUMN)
    if len(keys_a) != expected or len(keys_b) != expected:
        raise BenchError(f"output files have {len(keys_a)} / {len(keys_b)} rows, expected {expected}")
    if keys_a != keys_b:
        bad = next(i for i, (x, y) in enumerate(zip(keys_a, keys_b)) if x != y)
        raise BenchError(f"output files are not aligned: row {bad + 1} holds different keys")


def run_psiq(v: dict[str, Any], n: int, data: Path, pki: Path, expected: int, args: argparse.Namespace) -> dict[str, Any]:
    from psi.crypto import filters

    timeout = args.timeout or (180.0 + n * 2e-3 * (10 if v["protocol"] == "rsa" else 1))
    if v["protocol"] == "ecdh":
        v = {**v, "filter": v["compression"] if v["compression"] != "auto" else filters.choose_filter(n, n, args.fpr_bits)}
    with tempfile.TemporaryDirectory(prefix="psiq-bench-") as tmp:
        out_a, out_b = Path(tmp) / "a_out.csv", Path(tmp) / "b_out.csv"
        port = free_port()
        server_out = out_b if v["reveal"] == "both" else None
        res = run_pair(_party_cmd("serve", v, data, pki, port, server_out, args, timeout),
                       _party_cmd("connect", v, data, pki, port, out_a, args, timeout),
                       port=port, timeout=timeout)
        c, s = res.client, res.server
        if c.get("intersection_size") != expected:
            raise BenchError(f"client reports intersection {c.get('intersection_size')}, plaintext answer {expected}")
        if c.get("output_rows") != expected:
            raise BenchError(f"client wrote {c.get('output_rows')} rows, expected {expected}")
        if v["reveal"] == "both":
            if s.get("intersection_size") != expected or s.get("output_rows") != expected:
                raise BenchError(f"server reports intersection {s.get('intersection_size')} and "
                                 f"{s.get('output_rows')} rows, expected {expected}")
            _check_alignment(out_a, out_b, expected)
    return {**v, "n_client": c.get("set_size"), "n_server": s.get("set_size"), "expected": expected,
            "intersection_size": c["intersection_size"], "wall_s": round(res.wall, 3),
            "client_wall_s": round(res.client_wall, 3),
            "session_s": round(max(c["seconds"], s["seconds"]), 3),
            "bytes_client_to_server": c["bytes_sent"], "bytes_server_to_client": s["bytes_sent"],
            "cpu": res.cpu, "client": _party(c), "server": _party(s)}


# -- openmined-psi ----------------------------------------------------------------------------
def openmined_available() -> bool:
    try:
        import private_set_intersection.python  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        return False
    return True


def _die_with_parent() -> None:
    """Linux: have the kernel kill this process when the benchmark that started it dies (a killed
    benchmark otherwise leaves openmined computing for minutes, disturbing the next run)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


def _om_worker(conn, path_a: str, path_b: str, mode: str, fpr: float) -> None:
    _die_with_parent()
    try:
        import private_set_intersection.python as om

        client_items = read_keys(Path(path_a), KEY_COLUMN)
        server_items = read_keys(Path(path_b), KEY_COLUMN)
        ds = {"raw": om.DataStructure.RAW, "gcs": om.DataStructure.GCS, "bloom": om.DataStructure.BLOOM_FILTER}[mode]
        t0 = time.perf_counter()
        server = om.server.CreateWithNewKey(True)
        setup = server.CreateSetupMessage(fpr, len(client_items), server_items, ds)
        t1 = time.perf_counter()
        client = om.client.CreateWithNewKey(True)
        request = client.CreateRequest(client_items)
        t2 = time.perf_counter()
        response = server.ProcessRequest(request)
        t3 = time.perf_counter()
        indices = client.GetIntersection(setup, response)
        t4 = time.perf_counter()
        sizes = {"setup": len(setup.SerializeToString()), "request": len(request.SerializeToString()),
                 "response": len(response.SerializeToString())}
        # openmined sizes its GCS hash range as max(n_c, n_s) / (fpr / n_c) in an int64; past 2^63 it
        # overflows (the setup then reports a negative range) and the requested rate is not met.
        hash_range = int(setup.gcs.hash_range) if mode == "gcs" else None
        conn.send({
            "ok": True, "version": om.__version__, "n_client": len(client_items), "n_server": len(server_items),
            "intersection_size": len(set(indices)),
            "phases": {"setup": round(t1 - t0, 4), "request": round(t2 - t1, 4), "process": round(t3 - t2, 4),
                       "intersection": round(t4 - t3, 4)},
            "total_s": round(t4 - t0, 3),
            "bytes": sizes,
            "gcs_hash_range": hash_range,
            "bytes_client_to_server": sizes["request"],
            "bytes_server_to_client": sizes["setup"] + sizes["response"],
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
        })
    except BaseException as err:  # noqa: BLE001 - reported to the parent as one line
        conn.send({"ok": False, "error": f"{type(err).__name__}: {err}"})
    finally:
        conn.close()


def run_openmined(mode: str, n: int, data: Path, expected: int, args: argparse.Namespace) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")  # fresh process: its peak RSS is its own
    parent, child = ctx.Pipe(duplex=False)
    fpr = 2.0 ** -args.fpr_bits
    proc = ctx.Process(target=_om_worker, args=(child, str(data / "bank_a.csv"), str(data / "bank_b.csv"), mode, fpr))
    timeout = args.timeout or (180.0 + n * 5e-3)
    proc.start()
    child.close()
    try:
        if not parent.poll(timeout):
            raise BenchError(f"openmined {mode}: timed out after {timeout:.0f} s")
        result = parent.recv()
    except EOFError:
        raise BenchError(f"openmined {mode}: worker died (exit code {proc.exitcode})") from None
    finally:
        if proc.is_alive():
            proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join()
    if not result.get("ok"):
        raise BenchError(f"openmined {mode}: {result.get('error')}")
    if result["intersection_size"] != expected:
        raise BenchError(f"openmined {mode}: intersection {result['intersection_size']}, plaintext answer {expected}")
    result.pop("ok")
    return {"library": "openmined-psi", "mode": mode, "fpr": fpr, "expected": expected, **result}


# -- derived figures --------------------------------------------------------------------------
def floors(runs: list[dict[str, Any]], prims: dict[str, Any], ncores: int) -> list[dict[str, Any]]:
    out = []
    for r in runs:
        m, n = r["n_client"], r["n_server"]
        if r["protocol"] == "rsa" and "rsa" in prims:
            ideal = (m + n) * prims["rsa"]["t_crt_us"] * 1e-6 / ncores
            out.append({"size": r["size"], "protocol": "rsa", "variant": _label(r), "formula": "(n_c + n_s) t_crt / cores",
                        "floor_s": round(ideal, 3), "wall_s": r["wall_s"], "session_s": r["session_s"],
                        "ratio_wall": round(r["wall_s"] / ideal, 3), "ratio_session": round(r["session_s"] / ideal, 3),
                        "target": 1.3})
        elif r["protocol"] == "ecdh" and r["group"] in prims.get("groups", {}):
            g = prims["groups"][r["group"]]
            mults = 3 * m + n
            floor = mults * g["t_mul_us"] * 1e-6 / ncores
            floor_hash = ((m + n) * g["t_hash_mul_us"] + 2 * m * g["t_mul_us"]) * 1e-6 / ncores
            out.append({"size": r["size"], "protocol": "ecdh", "variant": _label(r),
                        "formula": "(3m + n) t_mul / cores", "multiplications": mults,
                        "floor_s": round(floor, 3), "floor_hash_s": round(floor_hash, 3),
                        "wall_s": r["wall_s"], "session_s": r["session_s"],
                        "ratio_wall": round(r["wall_s"] / floor, 3), "ratio_session": round(r["session_s"] / floor, 3),
                        "ratio_wall_hash": round(r["wall_s"] / floor_hash, 3),
                        "ratio_session_hash": round(r["session_s"] / floor_hash, 3), "target": 1.25})
    return out


def comparisons(runs: list[dict[str, Any]], om: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    sizes = sorted({r["size"] for r in runs})
    for size in sizes:
        ecdh = [r for r in runs if r["size"] == size and r["protocol"] == "ecdh" and r["reveal"] == "both"]
        oms = {o["mode"]: o for o in om if o["size"] == size}
        for r in ecdh:
            if oms:
                same = oms.get(r["filter"])
                best = min(oms.values(), key=lambda o: o["total_s"])
                out.append({"size": size, "what": f"ecdh {_label(r)} vs openmined",
                            "same_mode": r["filter"] if same else None,
                            "speedup_wall_same_mode": round(same["total_s"] / r["wall_s"], 2) if same else None,
                            "speedup_session_same_mode": round(same["total_s"] / r["session_s"], 2) if same else None,
                            "openmined_fastest_mode": best["mode"],
                            "speedup_wall_vs_fastest": round(best["total_s"] / r["wall_s"], 2),
                            "speedup_session_vs_fastest": round(best["total_s"] / r["session_s"], 2),
                            "target": 3.5})
    largest = max(sizes) if sizes else None
    kk = [r for r in runs if r["size"] == largest and r["protocol"] == "kkrt" and r["reveal"] == "both"]
    ec = [r for r in runs if r["size"] == largest and r["protocol"] == "ecdh" and r["reveal"] == "both"]
    if kk and ec:
        e = min(ec, key=lambda r: r["wall_s"])
        k = kk[0]
        out.append({"size": largest, "what": f"kkrt vs ecdh {_label(e)}",
                    "speedup_wall": round(e["wall_s"] / k["wall_s"], 2),
                    "speedup_session": round(e["session_s"] / k["session_s"], 2)})
    return out


def wire_per_element(sizes: list[int], om: list[dict[str, Any]], fpr_bits: int) -> list[dict[str, Any]]:
    """psiq's filter (encoded by psiq's own encoder, same parameters as a session) vs openmined's setup message."""
    from psi.crypto import filters

    out = []
    for n in sizes:
        keys = os.urandom(filters.KEY_SIZE * n)
        for kind in filters.FILTER_KINDS:
            data = filters.encode_filter(kind, keys, n_query=n, fpr_bits=fpr_bits)
            # any approximate-membership encoding of n elements with per-query false-positive rate
            # eps = 2^-fpr_bits / n_c needs at least n * log2(1/eps) bits
            bound = (fpr_bits + math.log2(n)) / 8
            row = {"size": n, "mode": kind, "psiq_bytes": len(data), "psiq_bytes_per_element": round(len(data) / n, 3),
                   "lower_bound_bytes_per_element": round(bound, 3)}
            o = next((o for o in om if o["size"] == n and o["mode"] == kind), None)
            if o is not None:
                row["openmined_bytes"] = o["bytes"]["setup"]
                row["openmined_bytes_per_element"] = round(o["bytes"]["setup"] / n, 3)
                hr = o.get("gcs_hash_range")
                if hr is not None:
                    row["openmined_gcs_hash_range"] = hr
                    row["openmined_gcs_overflow"] = hr <= 0
                    used = 2**63 if hr <= 0 else hr
                    row["openmined_effective_fpr_bits"] = round(-math.log2(n * n / used), 1)
                    # same rate: psiq's Golomb coding over the range openmined actually used, same n
                    same = len(filters.encode_gcs_range(keys, used))
                    row["psiq_bytes_at_openmined_range"] = same
                    row["psiq_bytes_per_element_at_openmined_range"] = round(same / n, 4)
                    row["openmined_bytes_per_element_exact"] = round(o["bytes"]["setup"] / n, 4)
            out.append(row)
    return out


# -- printing ---------------------------------------------------------------------------------
def _mb(b: int | None) -> str:
    return "-" if b is None else f"{b / 1e6:.2f}"


def _phases(p: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.2f}" for k, v in p.items())


def print_report(doc: dict[str, Any]) -> None:
    mi = doc["machine"]
    print(f"\nPSI benchmark  {mi['date']}  {mi['cpu']}  {mi['cores']} cores  Python {mi['python']}  "
          f"psiq {mi['packages'].get('psiq')}  openmined-psi {mi['packages'].get('openmined_psi')}")
    s = doc["settings"]
    print(f"keys per side {', '.join(f'{n:,}' for n in s['sizes'])}, overlap {s['overlap']}, fpr 2^-{s['fpr_bits']}, "
          f"psiq: two processes over loopback TLS 1.3, --reveal {'/'.join(sorted({r['reveal'] for r in doc['runs']})) or 'both'}")
    p = doc["primitives"]
    parts = []
    if "rsa" in p:
        parts.append(f"RSA-{p['rsa']['bits']} CRT sign {p['rsa']['t_crt_us']:.0f} us")
    for g, d in p.get("groups", {}).items():
        parts.append(f"{g} mul {d['t_mul_us']:.1f} us, hash+mul {d['t_hash_mul_us']:.1f} us")
    if parts:
        print("primitives (one core): " + "; ".join(parts))

    head = f"{'n':>9}  {'protocol':<9} {'variant':<22} {'wall s':>8} {'session':>8} {'c->s MB':>8} {'s->c MB':>8} {'RSS c/s MB':>12} {'|I|':>8}"
    print("\n" + head + "\n" + "-" * len(head))
    for r in doc["runs"]:
        print(f"{r['size']:>9,}  {r['protocol']:<9} {_label(r):<22} {r['wall_s']:>8.2f} {r['session_s']:>8.2f} "
              f"{_mb(r['bytes_client_to_server']):>8} {_mb(r['bytes_server_to_client']):>8} "
              f"{r['client']['peak_rss_mb']:>5.0f}/{r['server']['peak_rss_mb']:<6.0f} {r['intersection_size']:>8,}")
        cpu = r.get("cpu", {})
        if cpu:
            other = f", other load {cpu['other_cpu_s']:.1f} CPU-s" if "other_cpu_s" in cpu else ""
            print(f"{'':>11}CPU {cpu['own_cpu_s']:.1f} s (both parties + workers) = {cpu['utilisation'] * 100:.0f}% "
                  f"of {doc['machine']['cores']} cores over wall{other}")
        print(f"{'':>11}client: {_phases(r['client']['phases'])}")
        print(f"{'':>11}server: {_phases(r['server']['phases'])}")
    for o in doc["openmined"]:
        print(f"{o['size']:>9,}  {'openmined':<9} {'p256/' + o['mode'] + ' (1 core)':<22} {'-':>8} {o['total_s']:>8.2f} "
              f"{_mb(o['bytes_client_to_server']):>8} {_mb(o['bytes_server_to_client']):>8} "
              f"{o['peak_rss_mb']:>12.0f} {o['intersection_size']:>8,}")
        print(f"{'':>11}library, one process: {_phases(o['phases'])}")
    for sf in doc.get("secretflow", []):
        impl = f", x25519 via {sf['x25519_impl']}" if sf.get("x25519_impl") else ""
        rss = "/".join(f"{v:.0f}" for v in sf["peak_rss_mb"].values())
        print(f"{sf['size']:>9,}  {'secretflow':<9} {sf['protocol'] + ' (spu, no TLS)':<22} {sf['wall_s']:>8.2f} "
              f"{sf['session_s']:>8.2f} {'-':>8} {'-':>8} {rss:>12} {sf['intersection_size']:>8,}{impl}")
        if sf.get("cpu_s") is not None:
            print(f"{'':>11}CPU {sf['cpu_s']:.1f} s (both parties)")
    for e in doc["errors"]:
        print(f"{e['size']:>9,}  {e['what']:<32} FAILED: {e['error']}")

    if doc["floors"]:
        print("\nfloors (measured primitives / cores)")
        for f in doc["floors"]:
            extra = ""
            if f["protocol"] == "ecdh":
                extra = f"; with hash-to-group {f['floor_hash_s']:.2f} s -> {f['ratio_wall_hash']:.2f}x wall"
            print(f"{f['size']:>9,}  {f['protocol']:<5} {f['variant']:<22} floor {f['floor_s']:8.2f} s   "
                  f"measured/floor {f['ratio_wall']:.2f}x wall, {f['ratio_session']:.2f}x session "
                  f"(target <= {f['target']}){extra}")
    if doc["comparisons"]:
        print("\nspeed-ups")
        for c in doc["comparisons"]:
            if "speedup_wall_same_mode" in c:
                same = (f"{c['speedup_wall_same_mode']:.2f}x wall / {c['speedup_session_same_mode']:.2f}x session vs its {c['same_mode']}"
                        if c["same_mode"] else "no openmined run in the same mode")
                print(f"{c['size']:>9,}  {c['what']}: {same}; vs its fastest ({c['openmined_fastest_mode']}) "
                      f"{c['speedup_wall_vs_fastest']:.2f}x wall / {c['speedup_session_vs_fastest']:.2f}x session "
                      f"(target >= {c['target']})")
            else:
                print(f"{c['size']:>9,}  {c['what']}: {c['speedup_wall']:.2f}x wall, {c['speedup_session']:.2f}x session")
    if doc["wire_per_server_element"]:
        print("\nserver set on the wire, bytes per server element (psiq filter vs openmined setup message)")
        for w in doc["wire_per_server_element"]:
            om = f"{w['openmined_bytes_per_element']:6.2f}" if "openmined_bytes_per_element" in w else "     -"
            note = ""
            if w.get("openmined_gcs_overflow"):
                note = (f"  (openmined GCS hash range overflowed int64: effective rate about "
                        f"2^-{w['openmined_effective_fpr_bits']}, not 2^-{doc['settings'].get('fpr_bits', 40)})")
            print(f"{w['size']:>9,}  {w['mode']:<6} psiq {w['psiq_bytes_per_element']:6.2f}   openmined {om}"
                  f"   bound {w['lower_bound_bytes_per_element']:5.2f}{note}")
            if "psiq_bytes_at_openmined_range" in w:
                print(f"{'':>9}  {'':<6} same rate (openmined's range): psiq {w['psiq_bytes_at_openmined_range']:,} B "
                      f"({w['psiq_bytes_per_element_at_openmined_range']:.4f}/element), openmined {w['openmined_bytes']:,} B "
                      f"({w['openmined_bytes_per_element_exact']:.4f}/element)")


# -- main -------------------------------------------------------------------------------------
def _int_list(text: str) -> list[int]:
    return [int(float(x)) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--protocols", default="rsa,ecdh,kkrt", help="comma-separated: rsa,ecdh,kkrt,rr22")
    ap.add_argument("--sizes", default="10000,100000", help="keys per side, comma-separated")
    ap.add_argument("--large", action="store_true", help="add 10^6 keys per side")
    ap.add_argument("--overlap", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--group", default="x25519", choices=["x25519", "ristretto255", "p256"])
    ap.add_argument("--compression", default="auto", choices=["auto", "raw", "bloom", "gcs"])
    ap.add_argument("--all-compressions", action="store_true", help="ecdh: also run raw, bloom and gcs")
    ap.add_argument("--key-bits", type=int, default=2048, choices=[2048, 3072, 4096])
    ap.add_argument("--fpr-bits", type=int, default=40)
    ap.add_argument("--backends", default="",
                    help="ecdh: run every variant once per compute backend, interleaved (e.g. portable,mb)")
    ap.add_argument("--repeat", type=int, default=1, help="run the psiq variants this many times, interleaved")
    ap.add_argument("--peers", default="", help="also run these on the same files: secretflow (spu.psi ECDH/KKRT/RR22)")
    ap.add_argument("--spu-python", default=None, help="interpreter with spu==0.9.5 (default $PSIQ_BENCH_SPU_PYTHON "
                    "or /work/venvs/spu095/bin/python)")
    ap.add_argument("--secretflow-protocols", default="ecdh,kkrt,rr22")
    ap.add_argument("--receiver", action="store_true", help="also run every variant with --reveal receiver")
    ap.add_argument("--workers", type=int, default=None, help="--workers for both parties (default: all cores)")
    ap.add_argument("--timeout", type=float, default=None,
                    help="seconds per run (default 180 + 2 ms per key, x10 for rsa)")
    ap.add_argument("--openmined", dest="openmined", action="store_true", default=None,
                    help="run openmined-psi raw/gcs/bloom on the same keys (default: when importable)")
    ap.add_argument("--no-openmined", dest="openmined", action="store_false")
    ap.add_argument("--openmined-modes", default="raw,gcs,bloom",
                    help="comma-separated openmined data structures to run (each takes ~5 min at 2^20)")
    ap.add_argument("--keep-going", action="store_true", help="record a failed run and continue (exit code 1 at the end)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "psi.json")
    args = ap.parse_args(argv)

    args.protocols = [p.strip() for p in args.protocols.split(",") if p.strip()]
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    args.peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    sf_python = None
    if "secretflow" in args.peers:
        from bench.peers_secretflow import spu_python

        try:
            sf_python = spu_python(args.spu_python)
        except BenchError as err:
            ap.error(str(err))
    for p in args.protocols:
        if p not in ("rsa", "ecdh", "kkrt", "rr22"):
            ap.error(f"unknown protocol {p!r}")
    sizes = _int_list(args.sizes) + ([1_000_000] if args.large else [])
    sizes = sorted(set(sizes))
    if args.openmined is None:
        args.openmined = openmined_available()
    elif args.openmined and not openmined_available():
        ap.error("--openmined: private_set_intersection is not importable (pip install openmined.psi)")

    ncores = args.workers or cores()
    doc: dict[str, Any] = {
        "machine": machine_info(),
        "settings": {"protocols": args.protocols, "backends": args.backends, "repeat": args.repeat, "sizes": sizes, "overlap": args.overlap, "seed": args.seed,
                     "group": args.group, "compression": args.compression, "all_compressions": args.all_compressions,
                     "fpr_bits": args.fpr_bits, "key_column": KEY_COLUMN, "workers": args.workers,
                     "cores_for_floors": ncores, "openmined": args.openmined,
                     "wall": "server launch to both processes exited (includes interpreter start, CSV read, TLS, "
                             "alignment, output write)",
                     "session": "max of the parties' own 'seconds' (hello to output written)"},
        "primitives": {}, "runs": [], "openmined": [], "floors": [], "comparisons": [],
        "wire_per_server_element": [], "errors": [], "secretflow": [],
    }

    precompile_psiq()
    print("measuring primitives (one core) ...", file=sys.stderr, flush=True)
    samples: list[dict[str, Any]] = [measure_primitives(args)]

    failed = False
    with tempfile.TemporaryDirectory(prefix="psiq-bench-pki-") as pki_dir:
        pki = make_pki(Path(pki_dir))
        for n in sizes:
            print(f"dataset {n:,} keys per side ...", file=sys.stderr, flush=True)
            data = dataset(n, args.overlap, args.seed)
            expected = plaintext_intersection(data / "bank_a.csv", data / "bank_b.csv", KEY_COLUMN)
            for v in _variants(args) * max(1, args.repeat):
                what = f"psiq {v['protocol']} {_label(v)}"
                print(f"  {n:>9,}  {what} ...", file=sys.stderr, flush=True)
                try:
                    r = run_psiq(v, n, data, pki, expected, args)
                except BenchError as err:
                    print(f"error: {n:,} keys, {what}: {err}", file=sys.stderr, flush=True)
                    doc["errors"].append({"size": n, "what": what, "error": str(err)})
                    failed = True
                    if not args.keep_going:
                        break
                    continue
                r["size"] = n
                doc["runs"].append(r)
                print(f"             wall {r['wall_s']:.2f} s, session {r['session_s']:.2f} s", file=sys.stderr, flush=True)
            if failed and not args.keep_going:
                break
            if sf_python is not None:
                from bench.peers_secretflow import SF_PROTOCOLS, run_secretflow

                for _ in range(max(1, args.repeat)):
                    for proto in [p for p in args.secretflow_protocols.split(",") if p in SF_PROTOCOLS]:
                        print(f"  {n:>9,}  secretflow {proto} ...", file=sys.stderr, flush=True)
                        try:
                            sf = run_secretflow(sf_python, proto, data, KEY_COLUMN, expected, args.timeout or 900.0)
                        except BenchError as err:
                            print(f"error: {n:,} keys, secretflow {proto}: {err}", file=sys.stderr, flush=True)
                            doc["errors"].append({"size": n, "what": f"secretflow {proto}", "error": str(err)})
                            failed = True
                            continue
                        sf["size"] = n
                        doc["secretflow"].append(sf)
                        print(f"             wall {sf['wall_s']:.2f} s, session {sf['session_s']:.2f} s", file=sys.stderr, flush=True)
            if args.openmined:
                for mode in [m for m in args.openmined_modes.split(",") if m in OM_MODES]:
                    print(f"  {n:>9,}  openmined {mode} ...", file=sys.stderr, flush=True)
                    try:
                        o = run_openmined(mode, n, data, expected, args)
                    except BenchError as err:
                        print(f"error: {n:,} keys, {err}", file=sys.stderr, flush=True)
                        doc["errors"].append({"size": n, "what": f"openmined {mode}", "error": str(err)})
                        failed = True
                        if not args.keep_going:
                            break
                        continue
                    o["size"] = n
                    doc["openmined"].append(o)
                    print(f"             total {o['total_s']:.2f} s", file=sys.stderr, flush=True)
                if failed and not args.keep_going:
                    break

    print("measuring primitives again (one core) ...", file=sys.stderr, flush=True)
    samples.append(measure_primitives(args))
    doc["primitives"] = best_primitives(samples)
    doc["floors"] = floors(doc["runs"], doc["primitives"], ncores)
    doc["comparisons"] = comparisons(doc["runs"], doc["openmined"])
    if "ecdh" in args.protocols or args.openmined:
        doc["wire_per_server_element"] = wire_per_element(sorted({r["size"] for r in doc["runs"]} |
                                                                 {o["size"] for o in doc["openmined"]}),
                                                          doc["openmined"], args.fpr_bits)
    doc["machine"]["load_average_after"] = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    write_json(args.out, doc)
    print_report(doc)
    print(f"\nwrote {args.out}")
    if failed:
        print("error: at least one run failed (see above); figures for it are missing", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
