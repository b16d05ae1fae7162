"""Shared helpers for the bench scripts: machine info, cached datasets, two-process runs.

Used by ``bench/bench_psi.py``; nothing here is part of the psiq package. Datasets are cached
under ``bench/data/`` (git-ignored by a ``.gitignore`` written there), results go to
``bench/results/`` (git-ignored by the repository's ``.gitignore``).
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parent.parent
DATA_DIR = REPO / "bench" / "data"
RESULTS_DIR = REPO / "bench" / "results"

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


class BenchError(RuntimeError):
    """A benchmark run failed (wrong answer, timeout, non-zero exit): printed as one line."""


# -- machine ----------------------------------------------------------------------------------
def cores() -> int:
    from psi.parallel import default_workers

    return default_workers()


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _git_commit() -> dict[str, Any] | None:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def machine_info(packages: Sequence[str] = ("psiq", "openmined_psi", "gmpy2", "cryptography", "numpy", "rbcl",
                                             "click")) -> dict[str, Any]:
    versions: dict[str, str | None] = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    try:
        mem_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        mem_gb = None
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cores": cores(),
        "cpu_count": os.cpu_count(),
        "memory_gb": mem_gb,
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "packages": versions,
        "git": _git_commit(),
    }


# -- datasets ---------------------------------------------------------------------------------
def dataset(rows: int, overlap: float = 0.5, seed: int = 7, rows_b: int | None = None) -> Path:
    """Directory with bank_a.csv / bank_b.csv / expected.json, generated once and cached."""
    from psiq_datasets.generate import generate

    rows_b = rows if rows_b is None else rows_b
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    ignore = DATA_DIR / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# benchmark inputs, regenerated on demand by bench/common.py\n*\n")
    name = f"psi_a{rows}_b{rows_b}_o{overlap:g}_s{seed}"
    out = DATA_DIR / name
    if (out / "expected.json").exists() and (out / "bank_a.csv").exists() and (out / "bank_b.csv").exists():
        return out
    tmp = Path(tempfile.mkdtemp(prefix=name + ".", dir=DATA_DIR))
    try:
        generate(tmp, rows, overlap, seed, blacklist_rows=0, rows_b=rows_b)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def read_keys(path: Path, column: str) -> list[str]:
    """The key column with psiq's default normalisation (``trim``)."""
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or column not in reader.fieldnames:
            raise BenchError(f"{path}: no column {column!r}")
        return [row[column].strip() for row in reader]


def plaintext_intersection(a: Path, b: Path, column: str) -> int:
    """Size of the true intersection of the distinct keys (what every protocol must report)."""
    return len(set(read_keys(a, column)) & set(read_keys(b, column)))


def count_rows(path: Path) -> int:
    with open(path, newline="", encoding="utf-8") as fh:
        return max(0, sum(1 for _ in csv.reader(fh)) - 1)


# -- certificates and processes ---------------------------------------------------------------
def precompile_psiq() -> None:
    """Byte-compile psiq's packages, as ``pip install`` does for a regular install.

    An editable install (and PYTHONDONTWRITEBYTECODE=1) leaves no .pyc files, so every psiq
    process would compile its modules from source first (about 50 ms here); a benchmark should
    measure the installed program, not that.
    """
    import compileall

    import cli
    import pir
    import psi

    for package in (psi, pir, cli):
        compileall.compile_dir(str(Path(package.__file__).parent), quiet=1)


def psiq_command() -> list[str]:
    """The ``psiq`` console script next to this interpreter, else on PATH, else ``python -m cli``."""
    local = Path(sys.executable).parent / "psiq"
    if local.exists():
        return [str(local)]
    found = shutil.which("psiq")
    if found:
        return [found]
    return [sys.executable, "-m", "cli"]


def make_pki(directory: Path, parties: Sequence[str] = ("bank-a", "bank-b")) -> Path:
    cmd = psiq_command() + ["certs", "init", str(directory)] + [a for p in parties for a in ("--party", p)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise BenchError(f"psiq certs init failed (exit {done.returncode}): {done.stderr.strip()}")
    return directory


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening_ports() -> set[int] | None:
    """Ports in LISTEN state from /proc/net/tcp{,6} (None where /proc is unavailable).

    Polling this instead of connecting keeps the one-session server from seeing a probe.
    """
    ports: set[int] = set()
    seen = False
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        seen = True
        for line in lines:
            parts = line.split()
            if len(parts) > 3 and parts[3] == "0A":
                ports.add(int(parts[1].rsplit(":", 1)[1], 16))
    return ports if seen else None


def wait_listening(port: int, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return  # exited early: the caller reports its stderr
        ports = _listening_ports()
        if ports is None:
            time.sleep(2.0)  # no /proc: give it a moment, the client retries anyway
            return
        if port in ports:
            return
        time.sleep(0.02)
    raise BenchError(f"server did not listen on port {port} within {timeout:.0f} s")


def kill_tree(proc: subprocess.Popen) -> None:
    """Stop a process started with ``start_new_session=True`` and its workers (its own group)."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def system_cpu_seconds() -> float | None:
    """Busy CPU-seconds of the whole machine so far (all cores; /proc/stat), None if unknown."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return None
    ticks = [int(x) for x in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class SessionCpu:
    """Sum of user + system CPU-seconds of every process in the given sessions (the two parties,
    their forkserver and worker processes), sampled from /proc every ``interval`` seconds.

    Workers are started by a forkserver, so they are not waited for by the party and do not show
    in RUSAGE_CHILDREN; they do keep the party's session id. A process that exits between two
    samples loses at most its last ``interval`` of CPU time.

    Each sample walks down from the session leaders (the parties) through
    ``/proc/PID/task/TID/children``, about ten small reads, instead of reading every process's
    stat: the sampler shares the cores with the run it measures (the full scan cost the
    benchmark 0.1 CPU-s per ECDH 10^5 run). Without that file (a kernel built without
    CONFIG_PROC_CHILDREN) it falls back to the full scan.
    """

    def __init__(self, interval: float = 0.1) -> None:
        import threading

        self.sessions: set[int] = set()
        self.seen: dict[int, float] = {}
        self._tick = os.sysconf("SC_CLK_TCK")
        self._stop = threading.Event()
        self._interval = interval
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._walk = os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children")

    def start(self) -> "SessionCpu":
        self._thread.start()
        return self

    def _stat(self, pid: int) -> tuple[int, float] | None:
        """(session id, CPU-seconds) of ``pid``, or None if it is gone."""
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                raw = fh.read()
        except OSError:
            return None
        rest = raw[raw.rindex(b")") + 2 :].split()
        return int(rest[3]), (int(rest[11]) + int(rest[12])) / self._tick

    def _sample(self) -> None:
        if self._walk:
            todo, done = list(self.sessions), set()
            while todo:
                pid = todo.pop()
                if pid in done:
                    continue
                done.add(pid)
                stat = self._stat(pid)
                if stat is None:
                    continue
                if stat[0] in self.sessions:
                    self.seen[pid] = max(self.seen.get(pid, 0.0), stat[1])
                try:
                    tasks = os.listdir(f"/proc/{pid}/task")
                except OSError:
                    continue
                for tid in tasks:
                    try:
                        with open(f"/proc/{pid}/task/{tid}/children", "rb") as fh:
                            todo.extend(int(c) for c in fh.read().split())
                    except OSError:
                        continue
            return
        try:
            pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
        except OSError:
            return
        for pid in pids:
            stat = self._stat(pid)
            if stat is not None and stat[0] in self.sessions:
                self.seen[pid] = max(self.seen.get(pid, 0.0), stat[1])

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._sample()

    def stop(self) -> float:
        self._sample()
        self._stop.set()
        self._thread.join()
        return sum(self.seen.values())


@dataclass
class PairResult:
    wall: float                     # server launch -> both exited
    client_wall: float              # client launch -> both exited
    server: dict[str, Any]
    client: dict[str, Any]
    stderr: dict[str, str] = field(default_factory=dict)
    cpu: dict[str, Any] = field(default_factory=dict)


def _parse_summary(role: str, out: str, err: str, code: int) -> dict[str, Any]:
    if code != 0:
        last = (err.strip().splitlines() or ["(no stderr)"])[-1]
        raise BenchError(f"{role} exited with code {code}: {last}")
    try:
        return json.loads(out)
    except json.JSONDecodeError:
        raise BenchError(f"{role} printed no JSON summary (stdout: {out[:200]!r}; stderr: {err.strip()[-300:]!r})") from None


def run_pair(server_cmd: Sequence[str], client_cmd: Sequence[str], *, port: int, timeout: float,
             env: dict[str, str] | None = None) -> PairResult:
    """Start the server, wait until it listens, start the client, wait for both (``timeout`` in all).

    On any failure both processes (and their worker pools) are killed and :class:`BenchError`
    names which side failed and its last stderr line.
    """
    env = {**os.environ, **(env or {})}
    with tempfile.TemporaryFile("w+") as s_out, tempfile.TemporaryFile("w+") as s_err, \
            tempfile.TemporaryFile("w+") as c_out, tempfile.TemporaryFile("w+") as c_err:
        sys0 = system_cpu_seconds()
        sampler = SessionCpu().start()
        start = time.perf_counter()
        deadline = time.monotonic() + timeout
        server = subprocess.Popen(server_cmd, stdout=s_out, stderr=s_err, env=env, start_new_session=True)
        sampler.sessions.add(server.pid)
        client: subprocess.Popen | None = None
        try:
            wait_listening(port, server, timeout=min(timeout, 300.0))
            if server.poll() is not None:
                s_err.seek(0)
                raise BenchError(f"server exited with code {server.returncode} before listening: "
                                 f"{(s_err.read().strip().splitlines() or [''])[-1]}")
            client_start = time.perf_counter()
            client = subprocess.Popen(client_cmd, stdout=c_out, stderr=c_err, env=env, start_new_session=True)
            sampler.sessions.add(client.pid)
            for proc, role in ((client, "client"), (server, "server")):
                left = deadline - time.monotonic()
                try:
                    proc.wait(timeout=max(left, 0.1))
                except subprocess.TimeoutExpired:
                    raise BenchError(f"timed out after {timeout:.0f} s waiting for the {role}") from None
                if proc.returncode != 0:
                    # the other side usually fails as a consequence; give it a moment, then report both
                    other = server if proc is client else client
                    try:
                        other.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        pass
                    break
            end = time.perf_counter()
        except BaseException:
            for proc in (client, server):
                if proc is not None:
                    kill_tree(proc)
            raise
        finally:
            for proc in (client, server):
                if proc is not None and proc.poll() is None:
                    kill_tree(proc)
            own = sampler.stop()
            sys1 = system_cpu_seconds()
        texts = {}
        for name, fh in (("server_out", s_out), ("server_err", s_err), ("client_out", c_out), ("client_err", c_err)):
            fh.seek(0)
            texts[name] = fh.read()
    assert client is not None
    errors = []
    for role, proc in (("client", client), ("server", server)):
        if proc.returncode != 0:
            last = (texts[f"{role}_err"].strip().splitlines() or ["(no stderr)"])[-1]
            errors.append(f"{role} exited with code {proc.returncode}: {last}")
    if errors:
        raise BenchError("; ".join(errors))
    return PairResult(
        wall=end - start,
        client_wall=end - client_start,
        server=_parse_summary("server", texts["server_out"], texts["server_err"], server.returncode),
        client=_parse_summary("client", texts["client_out"], texts["client_err"], client.returncode),
        stderr={"server": texts["server_err"][-2000:], "client": texts["client_err"][-2000:]},
        cpu=_cpu_figures(end - start, own, None if sys0 is None or sys1 is None else sys1 - sys0),
    )


def _cpu_figures(wall: float, own: float, system: float | None) -> dict[str, Any]:
    """CPU-seconds used by the two parties and their workers, by everything else, and core use."""
    n = cores()
    out: dict[str, Any] = {"own_cpu_s": round(own, 2), "utilisation": round(own / (wall * n), 3) if wall > 0 else None}
    if system is not None:
        out["system_cpu_s"] = round(system, 2)
        out["other_cpu_s"] = round(max(0.0, system - own), 2)
    return out


def write_json(path: Path, doc: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=False, default=str) + "\n")
    tmp.replace(path)
