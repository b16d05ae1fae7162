"""Run SecretFlow's ECDH-PSI in interconnection mode as one party (for psiq's interop tests).

Runs inside the separate virtualenv that holds PyPI ``spu==0.9.2b0`` (it pins its own numpy,
jax and protobuf), never inside psiq's environment. Usage:

    python spu_peer.py --rank R --self HOST:PORT --peer HOST:PORT --curve x25519|sm2 \
        --receiver 0|1|-1 --input in.csv --output out.csv [--timeout-ms N]

The input CSV has one column ``id``. ``--receiver -1`` asks for the result on both ranks.
Prints one JSON line with SecretFlow's report on success.
"""
from __future__ import annotations

import argparse
import json
import sys


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--self", dest="self_addr", required=True)
    parser.add_argument("--peer", dest="peer_addr", required=True)
    parser.add_argument("--curve", choices=("x25519", "sm2"), required=True)
    parser.add_argument("--receiver", type=int, default=0)
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--timeout-ms", type=int, default=60000)
    parser.add_argument("--link-id", default="root")
    parser.add_argument("--seq-id", action="store_true", help="keep yacl's message sequence ids")
    args = parser.parse_args()

    import spu.libspu.link as link
    import spu.psi as psi

    desc = link.Desc()
    desc.id = args.link_id
    addrs = [None, None]
    addrs[args.rank] = args.self_addr
    addrs[1 - args.rank] = args.peer_addr
    desc.add_party("rank0", addrs[0])
    desc.add_party("rank1", addrs[1])
    desc.brpc_channel_protocol = "h2:grpc"
    desc.recv_timeout_ms = args.timeout_ms
    desc.http_timeout_ms = args.timeout_ms
    desc.connect_retry_times = 120
    desc.connect_retry_interval_ms = 500
    desc.disable_msg_seq_id = not args.seq_id
    ctx = link.create_brpc(desc, args.rank)

    config = psi.BucketPsiConfig(
        psi_type=psi.PsiType.Value("ECDH_PSI_2PC"),
        broadcast_result=args.receiver < 0,
        receiver_rank=max(args.receiver, 0),
        input_params=psi.InputParams(path=args.input, select_fields=["id"], precheck=False),
        output_params=psi.OutputParams(path=args.output, need_sort=False),
        curve_type={"x25519": psi.CurveType.CURVE_25519, "sm2": psi.CurveType.CURVE_SM2}[args.curve],
        bucket_size=1 << 20,
    )
    report = psi.bucket_psi(ctx, config, ic_mode=True)
    ctx.stop_link()
    print(json.dumps({"original_count": report.original_count,
                      "intersection_count": report.intersection_count}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
