"""Every ```sh and ```python example in README.md and docs/*.md runs, on loopback.

How the examples are run (the only liberties taken with the text):

* All blocks of one file run in order in one fresh temporary folder, as a reader would type them
  (a later block may use the certificates an earlier one created). The folder holds copies of
  the files the examples name: ``bank_a.csv``, ``bank_b.csv``, ``blacklist.csv`` (the first
  2,000 rows of the shipped samples in ``datasets/sample``, to keep the run short), ``ids.csv`` (an ``id_number`` column: ten listed ids and ten
  not listed) and ``records.txt`` (three lines).
* Shell blocks: continuation lines are joined; each command runs with bash. ``psiq`` is this
  checkout (``python -m cli``). A server command (``psiq psi serve``, ``psiq pir serve``,
  ``psiq ot send``) starts in the background and the next command waits until its port
  listens; a one-shot server must exit 0 by the end of its block, a ``--forever`` server runs
  until the end of the file and is then stopped with SIGTERM.
* Addresses: every ``0.0.0.0:PORT`` and ``10.x.y.z:PORT`` becomes ``127.0.0.1:P`` with a free
  port ``P`` (the same ``P`` for the same ``PORT`` within a file), in shell and Python blocks.
* Quick start: the ``python3 -m venv .venv && .venv/bin/pip install -e ...`` prefix is dropped
  and ``.venv/bin/`` removed (the test environment is that install); ``pytest`` collects the
  suite (``--collect-only``) instead of running it inside itself. With ``PSIQ_DOCS_INSTALL=1``
  the quick start instead runs verbatim in a copy of the checkout (needs the package index).
* Every command must exit 0. Python blocks run with ``python -c`` in the same folder.

Markers, an HTML comment on the line(s) right above a fence:

* ``<!-- docs-test: skip: REASON -->`` the block is not run (say why);
* ``<!-- docs-test: partner: COMMAND -->`` run COMMAND (a server, same rules) in the background
  first: the other party of a one-sided example.

A fenced block without a language whose lines start with ``psiq`` is refused: label it ``sh``.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .conftest import ROOT, free_port

pytestmark = pytest.mark.e2e

DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SERVER = re.compile(r"\bpsiq\s+(psi\s+serve|pir\s+serve|ot\s+send)\b")
REMOTE = re.compile(r"\b(?:0\.0\.0\.0|10\.\d+\.\d+\.\d+):(\d+)\b")
MARKER = re.compile(r"<!--\s*docs-test:\s*(skip|partner)\s*:\s*(.*?)\s*-->")
FIXTURE_ROWS = 2000
VENV_PREFIX = re.compile(r"python3 -m venv \.venv && \.venv/bin/pip install -e \S+ && ")


@dataclass
class Block:
    path: Path
    line: int
    lang: str
    text: str
    skip: str | None = None
    partners: list[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def extract_blocks(path: Path) -> list[Block]:
    """The fenced code blocks of ``path`` with their language and the markers above them."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        match = re.match(r"^```(\w*)\s*$", lines[i])
        if not match:
            i += 1
            continue
        start, lang = i, match.group(1)
        i += 1
        body: list[str] = []
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        i += 1
        block = Block(path, start + 1, lang, "\n".join(body) + "\n")
        j = start - 1
        while j >= 0 and (MARKER.search(lines[j]) or not lines[j].strip()):
            for kind, arg in MARKER.findall(lines[j]):
                if kind == "skip":
                    block.skip = arg or "no reason given"
                else:
                    block.partners.insert(0, arg)
            j -= 1
        blocks.append(block)
    return blocks


def shell_commands(text: str) -> list[str]:
    """One entry per command: continuations joined, blank and comment-only lines dropped."""
    commands: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.rstrip()
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        commands.append(pending + line)
        pending = ""
    if pending.strip():
        commands.append(pending)
    return commands


def _listening_ports() -> set[int]:
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as fh:
                next(fh)
                for row in fh:
                    parts = row.split()
                    if parts[3] == "0A":  # LISTEN
                        ports.add(int(parts[1].rsplit(":", 1)[1], 16))
        except OSError:
            continue
    return ports


class Runner:
    """Runs the blocks of one file in one folder, with the substitutions of the module docstring."""

    def __init__(self, workdir: Path, bindir: Path) -> None:
        self.workdir = workdir
        self.ports: dict[str, int] = {}
        self.env = dict(os.environ)
        self.env["PATH"] = f"{bindir}{os.pathsep}{self.env.get('PATH', '')}"
        self.env["PYTHONPATH"] = str(ROOT) + os.pathsep + self.env.get("PYTHONPATH", "")
        self.env.setdefault("PSIQ_WORKERS", "2")
        self.oneshot: list[tuple[str, subprocess.Popen[str]]] = []
        self.forever: list[tuple[str, subprocess.Popen[str]]] = []

    def substitute(self, text: str) -> str:
        def local(match: re.Match[str]) -> str:
            port = self.ports.setdefault(match.group(1), free_port())
            return f"127.0.0.1:{port}"

        text = VENV_PREFIX.sub("", text)
        text = text.replace(".venv/bin/", "")
        return REMOTE.sub(local, text)

    def start_server(self, command: str, where: str) -> None:
        command = self.substitute(command)
        proc = subprocess.Popen(["bash", "-c", command], cwd=self.workdir, env=self.env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        ports = [int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", command)]
        deadline = time.monotonic() + 120
        while ports and not set(ports) <= _listening_ports():
            if proc.poll() is not None:
                _out, err = proc.communicate()
                pytest.fail(f"{where}: server exited {proc.returncode} before listening: {command}\n{err}")
            assert time.monotonic() < deadline, f"{where}: server never listened: {command}"
            time.sleep(0.05)
        (self.forever if "--forever" in command else self.oneshot).append((command, proc))

    def run(self, command: str, where: str) -> subprocess.CompletedProcess[str]:
        command = self.substitute(command)
        done = subprocess.run(["bash", "-c", command], cwd=self.workdir, env=self.env, text=True,
                              capture_output=True, timeout=600)
        assert done.returncode == 0, f"{where}: exit {done.returncode}: {command}\n{done.stdout}\n{done.stderr}"
        return done

    def finish_oneshot(self, where: str) -> None:
        for command, proc in self.oneshot:
            try:
                _out, err = proc.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
                pytest.fail(f"{where}: one-shot server still running at the end of its block: {command}")
            assert proc.returncode == 0, f"{where}: server exit {proc.returncode}: {command}\n{err}"
        self.oneshot = []

    def stop_all(self) -> list[str]:
        """Stop every server still running (SIGTERM); return complaints about how they ended."""
        complaints = []
        for command, proc in self.oneshot + self.forever:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    _out, err = proc.communicate(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.communicate()
                    complaints.append(f"did not stop on SIGTERM: {command}")
                    continue
                if proc.returncode != 143:
                    complaints.append(f"exit {proc.returncode} (not 143) on SIGTERM: {command}\n{err}")
        self.oneshot, self.forever = [], []
        return complaints

    def run_block(self, block: Block) -> None:
        for partner in block.partners:
            self.start_server(partner, block.where)
        if block.lang == "python":
            source = self.substitute(block.text)
            done = subprocess.run([sys.executable, "-c", source], cwd=self.workdir, env=self.env, text=True,
                                  capture_output=True, timeout=600)
            assert done.returncode == 0, f"{block.where}: python block failed\n{done.stdout}\n{done.stderr}"
        else:
            for command in shell_commands(block.text):
                if SERVER.search(command):
                    self.start_server(command, block.where)
                else:
                    self.run(command, block.where)
        self.finish_oneshot(block.where)


def _fixtures(workdir: Path) -> None:
    sample = ROOT / "datasets" / "sample"
    for name in ("bank_a.csv", "bank_b.csv", "blacklist.csv"):
        lines = (sample / name).read_text(encoding="utf-8").splitlines(keepends=True)
        (workdir / name).write_text("".join(lines[:FIXTURE_ROWS + 1]), encoding="utf-8")
    listed = [line.split(",")[0] for line in (sample / "blacklist.csv").read_text(encoding="utf-8").splitlines()[1:11]]
    unlisted = [f"9{n:017d}" for n in range(10)]
    (workdir / "ids.csv").write_text("id_number\n" + "\n".join(listed + unlisted) + "\n", encoding="utf-8")
    (workdir / "records.txt").write_text("alpha\nbravo\ncharlie\n", encoding="utf-8")


def _bindir(tmp: Path) -> Path:
    bindir = tmp / "bin"
    bindir.mkdir()
    wrappers = {
        "psiq": f'exec {shlex.quote(sys.executable)} -m cli "$@"\n',
        "python": f'exec {shlex.quote(sys.executable)} "$@"\n',
        # the quick start's second command: collect the suite of this checkout (running it here would recurse)
        "pytest": f'cd {shlex.quote(str(ROOT))} && exec {shlex.quote(sys.executable)} -m pytest --collect-only -q '
                  f'-p no:cacheprovider "$@"\n',
    }
    for name, body in wrappers.items():
        script = bindir / name
        script.write_text("#!/bin/sh\n" + body, encoding="utf-8")
        script.chmod(0o755)
    return bindir


def _files_with_blocks() -> list[Path]:
    return [p for p in DOC_FILES if any(b.lang in ("sh", "python") for b in extract_blocks(p))]


@pytest.mark.parametrize("doc", _files_with_blocks(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_example_of_the_file_runs(doc: Path, tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    _fixtures(workdir)
    runner = Runner(workdir, _bindir(tmp_path))
    ran = 0
    try:
        for block in extract_blocks(doc):
            if block.lang not in ("sh", "python") or block.skip is not None:
                continue
            if os.environ.get("PSIQ_DOCS_INSTALL") == "1" and VENV_PREFIX.search(block.text):
                _install_verbatim(block, tmp_path)
                ran += 1
                continue
            runner.run_block(block)
            ran += 1
    finally:
        complaints = runner.stop_all()
    assert ran > 0
    assert not complaints, complaints


def _install_verbatim(block: Block, tmp_path: Path) -> None:
    """PSIQ_DOCS_INSTALL=1: the quick start exactly as written, in a copy of the checkout."""
    clone = tmp_path / "clone"
    shutil.copytree(ROOT, clone, ignore=shutil.ignore_patterns(".venv", "__pycache__", ".git", "*.egg-info"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PSIQ_DOCS_INSTALL")}
    for command in shell_commands(block.text):
        done = subprocess.run(["bash", "-c", command], cwd=clone, env=env, text=True, capture_output=True, timeout=3600)
        assert done.returncode == 0, f"{block.where}: exit {done.returncode}: {command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


def test_quick_start_is_two_commands_and_both_run() -> None:
    blocks = extract_blocks(ROOT / "README.md")
    quick = next(b for b in blocks if "psiq demo" in b.text)
    assert quick.lang == "sh" and quick.skip is None and not quick.partners
    commands = shell_commands(quick.text)
    assert len(commands) == 2
    assert "psiq demo" in commands[0] and commands[1].endswith("pytest")


def test_no_unlabelled_shell_examples() -> None:
    """A block of psiq commands without ```sh would silently escape this test."""
    offenders = [b.where for p in DOC_FILES for b in extract_blocks(p)
                 if b.lang == "" and any(line.lstrip().startswith("psiq ") for line in b.text.splitlines())]
    assert not offenders, f"label these blocks ```sh (or mark them skip): {offenders}"


def test_harness_substitutions_and_markers(tmp_path: Path) -> None:
    """The harness itself: markers are read, commands split, addresses mapped consistently."""
    doc = tmp_path / "x.md"
    doc.write_text("<!-- docs-test: skip: installs -->\n```sh\npip install x\n```\n\n"
                   "<!-- docs-test: partner: psiq psi serve --listen 0.0.0.0:1 -->\n```python\nprint(1)\n```\n",
                   encoding="utf-8")
    skip, py = extract_blocks(doc)
    assert skip.skip == "installs" and py.partners == ["psiq psi serve --listen 0.0.0.0:1"] and py.lang == "python"
    assert shell_commands("# c\na \\\n  b\n\nc # d\n") == ["a    b", "c # d"]
    runner = Runner(tmp_path, tmp_path)
    text = runner.substitute("--listen 0.0.0.0:7766 --peer 10.0.0.2:7766 --peer 10.1.2.3:7767")
    ports = re.findall(r"127\.0\.0\.1:(\d+)", text)
    assert len(ports) == 3 and ports[0] == ports[1] != ports[2]
    assert runner.substitute("python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/psiq demo") == "psiq demo"
