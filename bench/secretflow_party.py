"""One party of SecretFlow's PSI (``spu.psi.psi_execute``) for bench_psi.py ``--peers secretflow``.

Runs under SecretFlow's own interpreter (``spu==0.9.5`` in its own virtual environment; psiq is
not imported here). Two of these, rank 0 and rank 1, talk over brpc on loopback (no TLS), read
their CSV, run the protocol with the result broadcast to both and write the aligned intersection
(SecretFlow's own CSV output, sorted by key). One JSON line on stdout: seconds (link created to
output written), the report's counts, this process's peak RSS and CPU seconds.

    python secretflow_party.py --rank 0 --protocol ecdh --input a.csv --output a_out.csv \
        --key id_number --ports 7001,7002
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rank", type=int, required=True, choices=[0, 1])
    ap.add_argument("--protocol", required=True, choices=["ecdh", "kkrt", "rr22"])
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--ports", required=True, help="rank 0 port,rank 1 port")
    ap.add_argument("--timeout-ms", type=int, default=600_000)
    args = ap.parse_args()

    from spu import libspu, psi  # SecretFlow's interpreter only

    start = time.perf_counter()
    desc = libspu.link.Desc()
    for rank, port in enumerate(args.ports.split(",")):
        desc.add_party(f"party{rank}", f"127.0.0.1:{port}")
    desc.recv_timeout_ms = args.timeout_ms
    desc.http_timeout_ms = args.timeout_ms
    desc.connect_retry_times = 120
    desc.connect_retry_interval_ms = 500
    lctx = libspu.link.create_brpc(desc, args.rank)
    protocol = {"ecdh": psi.PsiProtocol.PROTOCOL_ECDH, "kkrt": psi.PsiProtocol.PROTOCOL_KKRT,
                "rr22": psi.PsiProtocol.PROTOCOL_RR22}[args.protocol]
    config = psi.PsiExecuteConfig(
        protocol_conf=psi.PsiProtocolConfig(
            protocol=protocol, receiver_rank=0, broadcast_result=True,
            ecdh_params=psi.EcdhParams(curve=psi.EllipticCurveType.CURVE_25519),
        ),
        input_params=psi.InputParams(path=args.input, selected_keys=[args.key], keys_unique=True),
        output_params=psi.OutputParams(path=args.output, disable_alignment=False),
    )
    report = psi.psi_execute(config, lctx)
    seconds = time.perf_counter() - start
    lctx.stop_link()
    print(json.dumps({
        "rank": args.rank, "protocol": args.protocol, "seconds": round(seconds, 3),
        "original_count": report.original_count, "intersection_count": report.intersection_count,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
        "cpu_s": round(sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
                           for f in ("ru_utime", "ru_stime")), 2),
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
