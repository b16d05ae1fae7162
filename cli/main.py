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
    import sys

    from psi.errors import PsiqError

    try:
        cli(prog_name="psiq")
    except PsiqError as err:
        click.echo(f"psiq: error: {err}", err=True)
        sys.exit(err.exit_code)
