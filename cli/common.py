"""Options and plumbing shared by every psiq command.

Everything here is presentation: option parsing, progress bars on stderr, one-line error
messages and exit codes. The work itself happens in the library.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Any, Callable, TypeVar

import click

from psi.errors import PsiqError, UsageError
from psi.protocols.base import Progress
from psi.transport.tcp import TlsConfig, is_loopback, parse_address

__all__ = [
    "tls_options",
    "output_options",
    "handles_errors",
    "make_progress",
    "emit_json",
    "warn",
    "info",
]

F = TypeVar("F", bound=Callable[..., Any])


def warn(text: str) -> None:
    """One line on stderr, prefixed so it stands out from progress bars."""
    click.echo(f"psiq: warning: {text}", err=True)


def info(text: str, quiet: bool = False) -> None:
    if not quiet:
        click.echo(text, err=True)


def emit_json(obj: Any) -> None:
    """The machine-readable summary: one JSON document on stdout."""
    click.echo(json.dumps(obj, indent=2, sort_keys=True, default=str, ensure_ascii=False))


def tls_options(fn: F) -> F:
    """Add --tls-cert/--tls-key/--tls-ca/--peer-name/--any-peer/--insecure; the command receives ``tls``.

    ``tls`` is a :class:`TlsConfig`, or None for ``--insecure`` (plain TCP, loopback only).
    The address option of the command (``peer`` or ``listen``) is checked for loopback. With
    TLS or ``--via-dir`` exactly one of ``--peer-name``/``--any-peer`` is required: that check
    (exit 2) runs before the command listens, connects or touches the folder.
    """

    @click.option("--tls-cert", type=click.Path(dir_okay=False, path_type=Path), help="This party's certificate (PEM).")
    @click.option("--tls-key", type=click.Path(dir_okay=False, path_type=Path), help="This party's private key (PEM).")
    @click.option("--tls-ca", type=click.Path(dir_okay=False, path_type=Path), help="CA certificate the peer must chain to.")
    @click.option("--peer-name", default=None,
                  help="Whom you talk to: the peer certificate must carry NAME as subject CN or DNS SAN.")
    @click.option("--any-peer", is_flag=True, help="Accept any holder of a certificate from --tls-ca (instead of --peer-name).")
    @click.option("--insecure", is_flag=True, help="Plain TCP without TLS (loopback only; for trials).")
    @functools.wraps(fn)
    def wrapper(*args: Any, tls_cert: Path | None, tls_key: Path | None, tls_ca: Path | None,
                peer_name: str | None, any_peer: bool, insecure: bool, **kwargs: Any) -> Any:
        address = kwargs.get("peer") or kwargs.get("listen")
        if kwargs.get("via_dir") is not None and insecure:
            raise UsageError("--via-dir messages are always signed and encrypted: it needs the TLS files, not --insecure")
        if insecure:
            if any((tls_cert, tls_key, tls_ca)):
                raise UsageError("--insecure cannot be combined with --tls-cert/--tls-key/--tls-ca")
            if peer_name is not None or any_peer:
                raise UsageError("--insecure has no certificates: --peer-name/--any-peer do not apply")
            if address is not None and not is_loopback(parse_address(address)[0]):
                raise UsageError("--insecure (plain TCP) is allowed only on loopback addresses")
            warn("--insecure: traffic is not encrypted and the peer is not authenticated")
            tls = None
        else:
            missing = [n for n, v in (("--tls-cert", tls_cert), ("--tls-key", tls_key), ("--tls-ca", tls_ca)) if v is None]
            if missing and kwargs.get("via_dir") is not None:
                raise UsageError(f"--via-dir signs and encrypts every file: it needs {', '.join(missing)} "
                                 "(create trial files with 'psiq certs init')")
            if missing:
                raise UsageError(
                    f"TLS needs {', '.join(missing)} (create trial files with 'psiq certs init'), or pass --insecure on loopback"
                )
            tls = TlsConfig(tls_cert, tls_key, tls_ca, peer_name, any_peer)  # type: ignore[arg-type]
            tls.check_identity_policy()
            tls.check_files()
        return fn(*args, tls=tls, **kwargs)

    return wrapper  # type: ignore[return-value]


def output_options(fn: F) -> F:
    """Add --json (summary on stdout) and --quiet (no progress bars or notes on stderr)."""
    fn = click.option("--quiet", "-q", is_flag=True, help="No progress bars or notes on stderr.")(fn)
    fn = click.option("--json", "as_json", is_flag=True, help="Print a machine-readable JSON summary on stdout.")(fn)
    return fn


def handles_errors(fn: F) -> F:
    """Turn library errors into one line on stderr and the documented exit code.

    Put it directly under the ``@group.command(...)`` decorator so it also covers errors raised
    while other decorators (``tls_options``) validate options.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except PsiqError as err:
            click.echo(f"psiq: error: {err}", err=True)
            sys.exit(err.exit_code)
        except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM/SIGHUP (cli.main.Stopped): same clean stop
            click.echo(f"psiq: {getattr(err, 'reason', 'interrupted')}", err=True)
            sys.exit(getattr(err, "exit_code", 130))
        except click.exceptions.Exit:
            raise
        except click.ClickException:
            raise
        except Exception as err:  # noqa: BLE001 - last resort: still one line, exit 1
            if "PSIQ_DEBUG" in __import__("os").environ:
                raise
            click.echo(f"psiq: internal error: {err.__class__.__name__}: {err} (set PSIQ_DEBUG=1 for a traceback)", err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


class _Bar:
    def __init__(self, quiet: bool, desc: str) -> None:
        self.enabled = not quiet and sys.stderr.isatty()
        self.desc = desc
        self.bar: Any = None
        self.phase: str | None = None

    def __call__(self, progress: Progress) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        if progress.phase != self.phase:
            if self.bar is not None:
                self.bar.close()
            self.phase = progress.phase
            self.bar = tqdm(total=progress.total or None, desc=f"{self.desc} {progress.phase}", unit="it",
                            file=sys.stderr, leave=False, dynamic_ncols=True)
        if self.bar is not None:
            if progress.total and self.bar.total != progress.total:
                self.bar.total = progress.total
            self.bar.n = progress.done
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def make_progress(quiet: bool, desc: str) -> _Bar:
    """A progress callback for ``run_party``: tqdm on stderr, silent when quiet or not a TTY.

    Call ``.close()`` when done.
    """
    return _Bar(quiet, desc)
