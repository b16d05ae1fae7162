"""A throwaway PostgreSQL server for tests: ``initdb`` + ``pg_ctl`` into a temporary directory.

The server refuses to run as root, so as root it runs as the ``postgres`` system user
(``runuser -u postgres --``). Data directory and Unix socket live in the temporary directory;
TCP on 127.0.0.1 and a free port, password (SCRAM) authentication for TCP so the tests can try
a wrong password. ``.ci/run`` installs Debian's ``postgresql`` package when ``initdb`` is missing.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

USER = "psiq"
PASSWORD = "pg-test-secret-5317"


def find_bin(name: str) -> str | None:
    """``name`` from the newest /usr/lib/postgresql/*/bin, else PATH."""
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    if candidates:
        return candidates[-1]
    return shutil.which(name)


@dataclass
class PgServer:
    directory: Path
    port: int
    pg_ctl: str
    as_postgres: bool

    def url(self, database: str = "postgres", *, driver: str = "postgresql") -> str:
        return f"{driver}://{USER}@127.0.0.1:{self.port}/{database}"

    def dsn(self, database: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user={USER} password={PASSWORD} dbname={database}"

    def stop(self) -> None:
        _run(self, [self.pg_ctl, "-D", str(self.directory / "data"), "-m", "immediate", "stop"], check=False)
        shutil.rmtree(self.directory, ignore_errors=True)


def _run(server_or_flag: "PgServer | bool", args: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    as_postgres = server_or_flag.as_postgres if isinstance(server_or_flag, PgServer) else server_or_flag
    command = (["runuser", "-u", "postgres", "--"] if as_postgres else []) + args
    return subprocess.run(command, capture_output=True, text=True, check=check, timeout=120)


def start(port: int) -> PgServer:
    """Start a server; raises RuntimeError with the reason when it cannot be started."""
    initdb, pg_ctl = find_bin("initdb"), find_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        raise RuntimeError("initdb/pg_ctl not found (install Debian's postgresql package; .ci/run does)")
    as_postgres = os.geteuid() == 0
    directory = Path(tempfile.mkdtemp(prefix="psiq-pg-"))
    password_file = directory / "pw"
    password_file.write_text(PASSWORD + "\n")
    if as_postgres:
        import pwd

        try:
            entry = pwd.getpwnam("postgres")
        except KeyError:
            raise RuntimeError("running as root and there is no 'postgres' system user to run the server") from None
        for path in (directory, password_file):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    server = PgServer(directory, port, pg_ctl, as_postgres)
    try:
        _run(as_postgres, [initdb, "-D", str(directory / "data"), "-U", USER, f"--pwfile={password_file}",
                           "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8"])
        options = (f"-p {port} -k {directory} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off")
        _run(as_postgres, [pg_ctl, "-D", str(directory / "data"), "-o", options, "-l", str(directory / "log"),
                           "-w", "-t", "60", "start"])
    except subprocess.CalledProcessError as err:
        log = ""
        if (directory / "log").exists():
            log = (directory / "log").read_text(errors="replace")[-500:]
        server.stop()
        raise RuntimeError(f"{Path(err.cmd[-1]).name if err.cmd else 'postgres'} failed: {err.stderr.strip()[-500:]} {log}") from None
    return server
