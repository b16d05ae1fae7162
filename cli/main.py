"""The ``psiq`` console command: a group of command groups, each thin over the library."""

from __future__ import annotations

import click

from psi import __version__

__all__ = ["main", "cli"]

# Command groups, imported only when used: `psiq psi connect` need not load PIR, OT, interop,
# certificates or dataset code (and their libraries). `psiq --help` lists (so imports) them all.
_COMMANDS = {
    "certs": ("cli.certs", "certs_group"),
    "psi": ("cli.psi", "psi_group"),
    "pir": ("cli.pir", "pir_group"),
    "ot": ("cli.ot", "ot_group"),
    "datasets": ("cli.datasets", "datasets_group"),
    "demo": ("cli.demo", "demo_command"),
    "interop": ("cli.interop", "interop_group"),
}


class _LazyGroup(click.Group):
    """A group whose subcommands (:data:`_COMMANDS`) are imported on first use; a module that is
    not installed (an optional part of psiq) simply has no command."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(name for name in {*self.commands, *_COMMANDS} if self.get_command(ctx, name) is not None)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = self.commands.get(name)
        if command is None and name in _COMMANDS:
            command = _load(*_COMMANDS[name])
            if command is not None:
                _whole_short_help(command)
                self.add_command(command, name)
        return command


def _load(module: str, attr: str) -> click.Command | None:
    import importlib

    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name != module:
            raise
        return None
    return getattr(mod, attr)


def _choose_backend(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Select the compute backend once, for this process and its workers (psi.crypto.backends)."""
    from psi.crypto import backends

    selection = backends.select(value, export=True)  # UsageError: one line and exit 2 (main)
    if selection.note:
        click.echo(f"psiq: note: {selection.note}", err=True)
    return value


def _print_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from psi.crypto import backends

    if backends.selected() is None:  # --version came before --backend (or there is none)
        _choose_backend(ctx, param, None)
    d = backends.describe()
    click.echo(f"psiq, version {__version__}")
    click.echo(f"backend: {d['name']} (requested {d['requested']}); x25519: {d['x25519']}")
    for key in ("p256", "sm2", "rsa_private", "disabled"):  # what else the backend runs
        if d.get(key):
            click.echo(f"  {key}: {d[key]}")
    ctx.exit()


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--backend", type=click.Choice(["auto", "portable", "mb"], case_sensitive=False), default=None,
              envvar="PSIQ_BACKEND", is_eager=True, expose_value=False, callback=_choose_backend,
              help="Compute backend for x25519, P-256, SM2 and RSA: mb (Intel multi-buffer, AVX-512 IFMA), portable (OpenSSL), "
                   "or auto (mb where it applies). Env: PSIQ_BACKEND.")
@click.option("--version", is_flag=True, is_eager=True, expose_value=False, callback=_print_version,
              help="Show the version and the compute backend, then exit.")
def cli() -> None:
    """Private set intersection, oblivious transfer and PIR between institutions.

    Exit codes: 0 ok, 1 internal error, 2 bad usage or input, 3 transport failure,
    4 peer broke the protocol, 5 incompatible peer (protocol/version/settings),
    6 TLS/authentication failure, 7 refused by policy (quota, size cap).
    """


def _whole_short_help(command: click.Command) -> None:
    """List every command with its whole first sentence (click cuts it at about 45 characters)."""
    if command.short_help is None and command.help:
        first = command.help.strip().split("\n\n")[0]
        command.short_help = " ".join(first.split())
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _whole_short_help(sub)


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP: unwinds like Ctrl-C (temp files removed, workers shut down)."""

    def __init__(self, signum: int) -> None:
        import signal

        super().__init__(signum)
        self.exit_code = 128 + signum
        self.reason = f"stopped by {signal.Signals(signum).name}"


def _on_stop_signal(signum: int, _frame: object) -> None:
    import os
    import signal

    for other in (signal.SIGTERM, signal.SIGHUP):  # a second signal during clean-up ends at once
        signal.signal(other, lambda n, _f: os._exit(128 + n))
    raise Stopped(signum)


def install_signal_handlers() -> None:
    """SIGTERM and SIGHUP end the command like Ctrl-C: one line, exit 143 / 129, clean-up run."""
    import signal

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _on_stop_signal)


def main() -> None:
    """Entry point of the console script; library errors become one line and an exit code."""
    from psi.errors import PsiqError

    install_signal_handlers()
    try:
        cli(prog_name="psiq")
        code: object = 0
    except PsiqError as err:
        click.echo(f"psiq: error: {err}", err=True)
        code = err.exit_code
    except Stopped as err:  # raised outside a command's handles_errors
        click.echo(f"psiq: {err.reason}", err=True)
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
