"""``psiq psi``: run one party of a PSI session (serve / connect) and prepare a server set."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import click

from psi import api
from psi.errors import InputError, PsiqError, UsageError
from psi.normalize import Normalization

from .common import emit_json, handles_errors, info, make_progress, output_options, tls_options, warn
from .dbopts import resolve_output, resolve_source, session_db_options, source_options
from .sm2opts import sm2_signing_options

__all__ = ["psi_group"]


@click.group("psi")
def psi_group() -> None:
    """Private set intersection between two parties (RSA, ECDH, KKRT or RR22)."""


def _session_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    decorators = [
        click.option("--protocol", type=click.Choice(["rsa", "ecdh", "kkrt", "rr22"]), default=api.DEFAULT_PROTOCOL,
                     show_default=True, help="PSI protocol; both sides must agree."),
        click.option("--input", "input_path", required=True, type=str,
                     help="CSV/TSV/Parquet file with this party's records, or a database URL with --table/--query "
                          "(see docs/DATABASES.md)."),
        click.option("--on", "on", required=True,
                     help="Key column(s), comma-separated for a composite key (e.g. phone,id_number)."),
        click.option("--output", type=str, default=None,
                     help="Write this party's full rows of the intersection here (format from the extension; "
                          "with 'serve --forever' use {peer}, {session} or {time} in the name), or to a "
                          "database URL with --output-table (docs/DATABASES.md)."),
        click.option("--reveal", type=click.Choice(["receiver", "both", "cardinality"]), default="receiver",
                     show_default=True,
                     help="receiver: the client learns the intersection; both: both learn it, rows aligned; "
                          "cardinality: the client learns only the count (ecdh; semi-honest only: a client that "
                          "deviates learns which keys matched, as with receiver - see docs/SECURITY.md)."),
        click.option("--dedup", type=click.Choice(["error", "first", "keep-all"]), default="error", show_default=True,
                     help="Duplicate keys: stop with an error, keep the first row, or keep all (SQL join expansion)."),
        click.option("--normalize", "normalize", default="trim", show_default=True,
                     help="Key normalisation, comma-separated: trim, casefold, fullwidth, phone, none."),
        click.option("--key-regex", default=None, help="Keep only the first capture group (or the match) of each key value."),
        click.option("--skip-empty-keys", is_flag=True, help="Skip rows whose key is empty (default: error naming the line)."),
        click.option("--join", type=click.Choice(["inner", "left", "right", "full"]), default="inner", show_default=True,
                     help="Join type for aligned output (--reveal both); see docs/ALIGNMENT.md for what each reveals."),
        click.option("--left", type=click.Choice(["client", "server"]), default="client", show_default=True,
                     help="Which party is the left side of a left/right/full join."),
        click.option("--format", "input_format", type=click.Choice(["csv", "tsv", "parquet"]), default=None,
                     help="Input format (default: from the file extension)."),
        click.option("--group", type=click.Choice(["x25519", "ristretto255", "p256", "sm2"]), default="x25519",
                     show_default=True, help="ECDH group."),
        click.option("--compression", type=click.Choice(["auto", "raw", "bloom", "gcs"]), default="auto",
                     show_default=True, help="ECDH server-set encoding (OpenMined's raw/Bloom/GCS)."),
        click.option("--fpr-bits", type=click.IntRange(16, 128), default=40, show_default=True,
                     help="Expected false matches at most 2^-BITS."),
        click.option("--key-bits", type=click.Choice(["2048", "3072", "4096"]), default="2048", show_default=True,
                     help="RSA modulus size."),
        click.option("--workers", type=click.IntRange(1, 512), default=None,
                     help="Worker processes for the batch work (default: all cores)."),
        click.option("--max-peer-size", type=click.IntRange(0), default=api.DEFAULT_MAX_PEER_SIZE,
                     show_default=True,
                     help="Refuse a peer that announces more keys than this (a session needs about 0.6 KB of memory per key)."),
        click.option("--timeout", type=click.FloatRange(1), default=600.0, show_default=True,
                     help="Seconds to wait for any one message from the peer; given explicitly to a one-shot "
                          "'serve', also the longest wait for a session."),
        click.option("--encoding", type=click.Choice(["utf-8", "utf-8-sig", "gbk", "gb18030"]), default=None,
                     help="Text encoding of a CSV/TSV input and of the output (default UTF-8; a byte-order mark "
                          "is detected and wins)."),
        click.option("--output-format", type=click.Choice(["csv", "tsv", "parquet"]), default=None,
                     help="Output format (default: from --output's extension, else the input's format)."),
        click.option("--suite", type=click.Choice(["standard", "gm"]), default="standard", show_default=True,
                     help="Crypto suite: 'gm' = national algorithms only (SM2 group, SM3, SM4; docs/GM.md). RSA refuses it."),
        click.option("--allow-empty", is_flag=True,
                     help="Run even when the input has no keys (default: stop with 'no keys')."),
    ]
    for decorator in reversed(decorators):
        fn = decorator(fn)
    return session_db_options(fn)


_PROTOCOL_ONLY = {"group": ("ecdh",), "compression": ("ecdh",), "fpr_bits": ("ecdh",), "key_bits": ("rsa",)}


def _given(name: str) -> bool:
    """True when the user set option ``name`` (command line or environment), not its default."""
    from click.core import ParameterSource

    source = click.get_current_context().get_parameter_source(name)
    return source in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)


def _refuse_foreign_options(kw: dict[str, Any]) -> None:
    """An option of another protocol is a mistake (e.g. --key-bits with ECDH): say so."""
    for name, protocols in _PROTOCOL_ONLY.items():
        if kw["protocol"] not in protocols and _given(name):
            flag = "--" + name.replace("_", "-")
            raise UsageError(f"{flag} applies to the {'/'.join(protocols)} protocol, not {kw['protocol']}")


def _scale_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--buckets/--work-dir/--memory-limit/--resume/--reconnect-timeout (psi.scale, docs/SCALE.md)."""
    decorators = [
        click.option("--buckets", default=None, metavar="N|auto",
                     help="Split the session into N key buckets (or 'auto' from the set sizes and --memory-limit); needs --work-dir."),
        click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                     help="Folder for bucket files, checkpoints and the manifest of a bucketed session."),
        click.option("--memory-limit", default="2GiB", show_default=True, help="Memory per party that --buckets auto plans for."),
        click.option("--resume", is_flag=True, help="Continue an interrupted bucketed session from --work-dir (both sides)."),
        click.option("--reconnect-timeout", type=click.FloatRange(0), default=600.0, show_default=True,
                     help="Seconds to keep reconnecting (client) or listening for the same peer (server) after a drop."),
        click.option("--executor", "executor_kind", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                     help="Batch work on this machine's process pool, or as Ray tasks on a cluster (with --buckets; psiq[ray])."),
        click.option("--ray-address", default=None, help="Ray cluster to join (default: RAY_ADDRESS or a local one)."),
    ]
    for decorator in reversed(decorators):
        fn = decorator(fn)
    return fn


def _scale(kw: dict[str, Any], via_dir: Path | None, forever: bool = False) -> Any:
    """The bucketed-session settings, or None when --buckets/--work-dir are not given."""
    buckets, work_dir = kw.pop("buckets"), kw.pop("work_dir")
    memory, resume, reconnect = kw.pop("memory_limit"), kw.pop("resume"), kw.pop("reconnect_timeout")
    executor, ray_address = kw.pop("executor_kind"), kw.pop("ray_address")
    if buckets is None and work_dir is None:
        if resume or executor != "local" or ray_address:
            raise UsageError("--resume/--executor ray/--ray-address need --buckets and --work-dir")
        return None
    if buckets is None or work_dir is None:
        raise UsageError("--buckets and --work-dir go together")
    if kw.get("suite") == "gm":  # the bucket split and its checkpoints hash with SHA-256/SHAKE (psi.scale)
        raise UsageError("--buckets is not available with --suite gm yet (bucketing hashes keys with SHA-256)")
    if forever:
        raise UsageError("--buckets runs one session (its work dir holds that session's state): drop --forever")
    from psi.scale import ScaleOptions, parse_buckets, parse_size  # only for bucketed sessions

    return ScaleOptions(work_dir, parse_buckets(buckets), parse_size(memory), resume, reconnect, executor, ray_address)


def _options(kw: dict[str, Any]) -> api.PsiOptions:
    _refuse_foreign_options(kw)
    kw["input_path"] = resolve_source(kw)  # a file path or a database source (psi.io)
    kw["output"] = resolve_output(kw, kw["input_path"])
    if kw["reveal"] == "cardinality" and kw["protocol"] == "ecdh":  # the others refuse the mode
        from psi.protocols.ecdh import CARDINALITY_NOTE

        warn(CARDINALITY_NOTE)
    return api.PsiOptions(
        protocol=kw["protocol"],
        reveal=kw["reveal"],
        normalization=Normalization.parse(kw["normalize"], kw["key_regex"]),
        dedup=kw["dedup"],
        skip_empty=kw["skip_empty_keys"],
        join=kw["join"],
        left=kw["left"],
        input_format=kw["input_format"],
        group=_group_for_suite(kw),
        compression=kw["compression"],
        fpr_bits=kw["fpr_bits"],
        key_bits=int(kw["key_bits"]),
        workers=kw["workers"],
        max_peer_size=kw["max_peer_size"],
        timeout=kw["timeout"],
        server_key=kw.get("server_key"),
        cache_dir=kw.get("cache_dir"),
        prepared=kw.get("prepared"),
        create_key=kw.get("create_key", False),
        allow_empty=kw["allow_empty"],
        encoding=kw["encoding"],
        output_format=kw["output_format"],
        suite=kw["suite"],
        sm2_signing=kw.get("sm2_signing"),
    )


def _gm_transport(kw: dict[str, Any], via_dir: Path | None) -> None:
    """--suite gm on the command line: the connection must be SM2-signed too (exit 2 otherwise).

    Python's TLS cannot carry SM2 certificates, so under gm every frame is signed with SM2
    (psi.transport.signed) on top of TLS; the folder exchange seals with X25519/AES-GCM and has
    no gm form.
    """
    if kw.get("suite") != "gm" or kw.get("buckets") is not None:  # --buckets refuses gm itself
        return
    if via_dir is not None:
        raise UsageError("--suite gm is not available with --via-dir (the folder exchange seals with X25519/AES-GCM)")
    if kw.get("sm2_signing") is None:
        raise UsageError("--suite gm needs SM2 message signing: give --sm2-key and --sm2-peer-key "
                         "(TLS here cannot carry SM2 certificates; 'psiq certs sm2-keygen DIR --party NAME' makes a key pair)")


def _group_for_suite(kw: dict[str, Any]) -> str:
    """--suite gm uses sm2: an explicit other --group is a usage error, the default is replaced."""
    if kw["suite"] != "gm" or kw["protocol"] != "ecdh":
        return kw["group"]
    from psi.crypto.suite import GM

    return GM.psi_group(kw["group"] if _given("group") else None, "sm2")


def _report(summary: api.PsiSummary, as_json: bool, quiet: bool) -> None:
    d = summary.as_dict()
    from psi.crypto import backends

    d["backend"] = backends.describe()
    if as_json:
        emit_json(d)
        return
    size = d["intersection_size"]
    what = "intersection size" if summary.reveal != "cardinality" else "matched keys (cardinality only)"
    peer = f" ({d['peer_name']})" if d.get("peer_name") else ""
    lines = [
        f"{summary.role}: {d['set_size']} keys here, {d['peer_set_size']} at the peer{peer}",
        f"{what}: {size if size is not None else 'not revealed to this side'}",
    ]
    if d["output"]:
        rows = d["output_rows"]
        lines.append(f"wrote {rows:,} {'row' if rows == 1 else 'rows'} to {d['output']}")
    lines.append(
        f"{d['seconds']:.2f} s; sent {d['bytes_sent']:,} B, received {d['bytes_received']:,} B; peak RSS {d['peak_rss_mb']} MB"
    )
    for note in d["notes"]:
        lines.append(f"note: {note}")
    click.echo("\n".join(lines))


@psi_group.command("serve")
@handles_errors
@_session_options
@click.option("--listen", default=None, help="HOST:PORT to listen on.")
@click.option("--via-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Exchange messages through this shared folder instead of a connection (signed and encrypted with the "
                   "TLS certificates; fresh folder per session).")
@click.option("--forever", is_flag=True, help="Keep serving sessions (default: exit after one).")
@click.option("--server-key", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Persisted server key: RSA, for the signed-set cache; ECDH, the key 'psi prepare' made, with "
                   "--prepared. Clients can link sessions served with one key.")
@click.option("--create-key", is_flag=True, help="RSA: create --server-key if it does not exist (never implicit).")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="RSA protocol: cache the signed set here (keyed by key fingerprint and input digest).")
@click.option("--prepared", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="ECDH protocol: a set precomputed with 'psiq psi prepare' (persisted key; unbalanced mode).")
@_scale_options
@tls_options
@sm2_signing_options
@output_options
def serve(tls: Any, as_json: bool, quiet: bool, forever: bool, listen: str | None, via_dir: Path | None,
          **kw: Any) -> None:
    """Answer PSI sessions for the records in --input (on --listen, or through --via-dir)."""
    scale = _scale(kw, via_dir, forever)
    options = _options(kw)
    _gm_transport(kw, via_dir)
    bar = make_progress(quiet, "serve")
    if scale is not None:
        from psi.scale.runner import serve_bucketed

        if (listen is None) == (via_dir is None):
            raise UsageError("--buckets needs exactly one of --listen and --via-dir")
        if via_dir is not None:
            _bucketed_folder("server", via_dir, kw, options, scale, bar, as_json, quiet, tls)
            return
        try:
            summary = serve_bucketed(kw["input_path"], on=_columns(kw["on"]), listen=listen, tls=tls, options=options,
                                     scale=scale, output=kw["output"], on_progress=bar,
                                     on_listening=lambda a: info(f"listening on {a[0]}:{a[1]}", quiet),
                                     on_retry=lambda e: warn(f"connection lost ({e}); waiting for the peer to reconnect"))
        finally:
            bar.close()
        _report(summary, as_json, quiet)
        return
    if _folder_session("server", via_dir, listen, "--listen", kw, options, bar, as_json, quiet, tls):
        return

    def listening(address: tuple[str, int]) -> None:
        info(f"listening on {address[0]}:{address[1]} ({'TLS' if tls else 'plain TCP'})", quiet)

    def done(summary: api.PsiSummary) -> None:
        bar.close()
        _report(summary, as_json, quiet)

    def failed(err: PsiqError) -> None:
        bar.close()
        warn(f"session failed: {err}")

    def refused(err: PsiqError) -> None:
        warn(f"refused a connection (still listening): {err}")

    accept_timeout = kw["timeout"] if _given("timeout") else None
    try:
        api.serve(kw["input_path"], on=_columns(kw["on"]), listen=listen, tls=tls, output=kw["output"],
                  options=options, forever=forever, on_progress=bar, on_listening=listening,
                  on_session=done, on_error=failed, on_refused=refused, accept_timeout=accept_timeout)
    finally:
        bar.close()


@psi_group.command("connect")
@handles_errors
@_session_options
@click.option("--peer", default=None, help="HOST:PORT of the serving party.")
@click.option("--via-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Exchange messages through this shared folder instead of a connection (signed and encrypted with the "
                   "TLS certificates; fresh folder per session).")
@_scale_options
@tls_options
@sm2_signing_options
@output_options
def connect(tls: Any, as_json: bool, quiet: bool, peer: str | None, via_dir: Path | None, **kw: Any) -> None:
    """Run a PSI session against a serving party (at --peer, or through --via-dir)."""
    scale = _scale(kw, via_dir)
    options = _options(kw)
    _gm_transport(kw, via_dir)
    bar = make_progress(quiet, "connect")
    if scale is not None:
        from psi.scale.runner import connect_bucketed

        if (peer is None) == (via_dir is None):
            raise UsageError("--buckets needs exactly one of --peer and --via-dir")
        if via_dir is not None:
            _bucketed_folder("client", via_dir, kw, options, scale, bar, as_json, quiet, tls)
            return
        try:
            summary = connect_bucketed(kw["input_path"], on=_columns(kw["on"]), peer=peer, tls=tls, options=options,
                                       scale=scale, output=kw["output"], on_progress=bar,
                                       on_retry=lambda e: warn(f"connection lost ({e}); reconnecting"))
        finally:
            bar.close()
        _report(summary, as_json, quiet)
        return
    if _folder_session("client", via_dir, peer, "--peer", kw, options, bar, as_json, quiet, tls):
        return
    try:
        summary = api.connect(kw["input_path"], on=_columns(kw["on"]), peer=peer, tls=tls, output=kw["output"],
                              options=options, on_progress=bar)
    finally:
        bar.close()
    _report(summary, as_json, quiet)


def _bucketed_folder(role: str, via_dir: Path, kw: dict[str, Any], options: api.PsiOptions, scale: Any, bar: Any,
                     as_json: bool, quiet: bool, tls: Any) -> None:
    """A bucketed session through --via-dir (psi.scale.runner.bucketed_via_folder)."""
    from psi.scale.runner import bucketed_via_folder

    try:
        summary = bucketed_via_folder(role, kw["input_path"], on=_columns(kw["on"]), directory=via_dir, tls=tls,
                                      options=options, scale=scale, output=kw["output"], on_progress=bar)
    finally:
        bar.close()
    _report(summary, as_json, quiet)


def _folder_session(role: str, via_dir: Path | None, address: str | None, flag: str, kw: dict[str, Any],
                    options: api.PsiOptions, bar: Any, as_json: bool, quiet: bool, tls: Any = None) -> bool:
    """Run the session through a folder when --via-dir is given; True if it ran."""
    if (via_dir is None) == (address is None):
        raise UsageError(f"give exactly one of {flag} and --via-dir")
    if via_dir is None:
        return False
    try:
        summary = api.exchange_via_folder(role, kw["input_path"], on=_columns(kw["on"]), directory=via_dir,
                                          tls=tls, output=kw["output"], options=options, on_progress=bar)
    finally:
        bar.close()
    _report(summary, as_json, quiet)
    return True


def _columns(on: str) -> list[str]:
    return [c.strip() for c in on.split(",") if c.strip()]


@psi_group.command("prepare")
@handles_errors
@click.option("--input", "input_path", required=True, type=str, metavar="FILE|URL",
              help="CSV/TSV/Parquet file with the server's records (the same file 'psi serve --input' gets), or a "
                   "database URL with --table/--query (docs/DATABASES.md).")
@source_options
@click.option("--on", "on", required=True, help="Key column(s), comma-separated.")
@click.option("--server-key", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="ECDH key file (created if missing, mode 0600; the command says so); pass the same to 'psi serve'.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Prepared-set file to write.")
@click.option("--group", type=click.Choice(["x25519", "ristretto255", "p256", "sm2"]), default="x25519", show_default=True,
              help="ECDH group; clients must use the same.")
@click.option("--dedup", type=click.Choice(["error", "first", "keep-all"]), default="error", show_default=True,
              help="Duplicate keys: stop with an error, keep the first row, or keep all; serve with the same.")
@click.option("--normalize", "normalize", default="trim", show_default=True,
              help="Key normalisation, comma-separated: trim, casefold, fullwidth, phone, none; serve with the same.")
@click.option("--key-regex", default=None, help="Keep only the first capture group (or the match) of each key value.")
@click.option("--skip-empty-keys", is_flag=True, help="Skip rows whose key is empty (default: error naming the line).")
@click.option("--format", "input_format", type=click.Choice(["csv", "tsv", "parquet"]), default=None,
              help="Input format (default: from the file extension).")
@click.option("--encoding", type=click.Choice(["utf-8", "utf-8-sig", "gbk", "gb18030"]), default=None,
              help="Text encoding of a CSV/TSV input (default UTF-8; a byte-order mark is detected and wins).")
@click.option("--workers", type=click.IntRange(1, 512), default=None,
              help="Worker processes for the encryption (default: all cores).")
@output_options
def prepare(input_path: Any, on: str, server_key: Path, out: Path, group: str, dedup: str, normalize: str,
            key_regex: str | None, skip_empty_keys: bool, input_format: str | None, workers: int | None,
            as_json: bool, quiet: bool, encoding: str | None = None, **db: Any) -> None:
    """Encrypt the server set once (ECDH, persisted key) so later sessions cost the client's size only.

    Serve it with: psiq psi serve --protocol ecdh --prepared OUT --server-key KEY (same --on, --normalize, --dedup).
    """
    import time

    import contextlib

    from psi.encodings import utf8_copy
    from psi.parallel import Executor
    from psi.records import detect_format, read_keys
    from psi.server_state import prepare_ecdh

    started = time.perf_counter()
    new_key = not server_key.exists()
    input_path = resolve_source({"input_path": input_path, **db})  # a file path or a database source
    normalization = Normalization.parse(normalize, key_regex)
    if not isinstance(input_path, Path):  # a database table or query: the keys 'psi serve' would read
        from psi.io import read_keys as io_read_keys

        table = io_read_keys(input_path, _columns(on), normalization=normalization, dedup=dedup,
                             skip_empty=skip_empty_keys)
        name = input_path.label
    else:
        fmt = detect_format(input_path, input_format)
        with contextlib.ExitStack() as stack:
            text_path = input_path if fmt == "parquet" else stack.enter_context(utf8_copy(input_path, encoding))
            table = read_keys(text_path, _columns(on), normalization=normalization,
                              dedup=dedup, fmt=fmt, skip_empty=skip_empty_keys)  # type: ignore[arg-type]
        name = input_path.name
    if not table.keys:
        raise InputError(f"{name}: no keys to prepare")
    with Executor(workers) as executor:
        prepared = prepare_ecdh(table.keys, group=group, key_path=server_key, out=out, executor=executor)
    if new_key and not as_json:
        info(f"created a new server key at {server_key} (mode 0600)", quiet)
    result = {"prepared": str(out), "keys": prepared.count, "group": group, "key_fingerprint": prepared.key.fingerprint,
              "seconds": round(time.perf_counter() - started, 3), "created_key": new_key}
    if as_json:
        emit_json(result)
    else:
        click.echo(f"prepared {prepared.count:,} keys ({group}) in {result['seconds']} s -> {out}")

