"""The ``psiq`` console command: a group of command groups, each thin over the library."""

from __future__ import annotations

import click

from psi import __version__

from .certs import certs_group

__all__ = ["main", "cli"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="psiq")
def cli() -> None:
    """Private set intersection, oblivious transfer and PIR between institutions.

    Exit codes: 0 ok, 1 internal error, 2 bad usage or input, 3 transport failure,
    4 peer broke the protocol, 5 incompatible peer (protocol/version/settings),
    6 TLS/authentication failure, 7 refused by policy (quota, size cap).
    """


cli.add_command(certs_group)


def _register_optional() -> None:
    import importlib

    for module, attr in (
        ("cli.psi", "psi_group"),
        ("cli.pir", "pir_group"),
        ("cli.ot", "ot_group"),
        ("cli.datasets", "datasets_group"),
        ("cli.demo", "demo_command"),
        ("cli.interop", "interop_group"),
    ):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name != module:
                raise
            continue
        cli.add_command(getattr(mod, attr))


_register_optional()


def main() -> None:
    """Entry point of the console script; library errors become one line and an exit code."""
    from psi.errors import PsiqError

    try:
        cli(prog_name="psiq")
        code: object = 0
    except PsiqError as err:
        click.echo(f"psiq: error: {err}", err=True)
        code = err.exit_code
    except SystemExit as done:  # click ends every run this way
        code = done.code
    _exit(code)


def _exit(code: object) -> None:
    """End the process with ``code`` (as ``sys.exit`` would interpret it).

    When the command has finished everything (only the main thread left, no child process
    still running, every output closed and renamed by the command itself), skip the
    interpreter's teardown: freeing a session's objects and modules took about 50 ms per
    process at 10^5 keys. Otherwise exit normally, so that pending work is waited for.
    """
    import multiprocessing
    import os
    import sys
    import threading

    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    if threading.active_count() > 1 or multiprocessing.active_children():
        sys.exit(code)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):  # closed pipe or stream: let the normal exit report it
        sys.exit(code)
    os._exit(code)
