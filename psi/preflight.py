"""Checks that run before a party listens or connects, so no mistake makes the partner wait.

Promises: :func:`check_session_options` refuses every option combination that could only fail
once a peer is connected (an output this side cannot learn, a reveal mode the protocol does
not offer, server-state files given to the wrong role or protocol); :func:`check_output`
proves the output can be created (the folder exists and takes a new file, enough free space
for an estimate) by creating and removing a temporary file beside it. Output names may hold
``{peer}``, ``{session}`` and ``{time}`` (:func:`expand_output`), so that a server running
``--forever`` writes one file per session.
"""

from __future__ import annotations

import os
import re
import shutil
import string
import tempfile
import time
from pathlib import Path
from typing import Any

from .errors import InputError, UsageError

__all__ = ["check_session_options", "check_output", "expand_output", "is_template", "TEMPLATE_FIELDS"]

TEMPLATE_FIELDS = ("peer", "session", "time")
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _learns(role: str, reveal: str) -> bool:
    return reveal == "both" or (role == "client" and reveal == "receiver")


def check_session_options(role: str, options: Any, output: str | os.PathLike[str] | None, *,
                          forever: bool = False) -> None:
    """Raise :class:`UsageError` for options that cannot work together for ``role``."""
    if output is not None and not _learns(role, options.reveal):
        what = "only the match count" if options.reveal == "cardinality" else "no intersection"
        raise UsageError(f"the {role} learns {what} with --reveal {options.reveal}: drop --output or use --reveal both")
    options.protocol_config()  # a reveal mode or parameter the protocol does not offer
    if options.prepared is not None and options.protocol != "ecdh":
        raise UsageError(f"--prepared is an ECDH option, not for the {options.protocol} protocol")
    if options.prepared is not None and options.server_key is None:
        raise UsageError("--prepared needs the --server-key it was made with")
    if options.protocol == "ecdh" and options.server_key is not None and options.prepared is None:
        raise UsageError("with ECDH, --server-key is used together with --prepared (see 'psiq psi prepare')")
    if options.protocol == "kkrt" and options.server_key is not None:
        raise UsageError("--server-key does not apply to the kkrt protocol")
    if options.cache_dir is not None and (options.protocol != "rsa" or options.server_key is None):
        raise UsageError("--cache-dir is for the RSA protocol with --server-key")
    if output is not None and isinstance(output, (str, os.PathLike)):  # a file (not a database sink)
        check_template(output)
        if forever and not is_template(output):
            raise UsageError("--forever with --output would overwrite the file every session: put {peer}, "
                             "{session} or {time} in the name (e.g. --output 'out-{peer}-{session}.csv')")


def is_template(path: str | os.PathLike[str]) -> bool:
    return any(f"{{{name}}}" in str(path) for name in TEMPLATE_FIELDS)


def check_template(path: str | os.PathLike[str]) -> None:
    """Refuse unknown ``{fields}`` and fields in the folder part of an output name."""
    text = str(path)
    try:
        fields = [f for _lit, f, _spec, _conv in string.Formatter().parse(text) if f is not None]
    except ValueError as err:
        raise UsageError(f"output name {text!r}: {err} (write {{{{ and }}}} for literal braces)") from None
    unknown = [f for f in fields if f not in TEMPLATE_FIELDS]
    if unknown:
        raise UsageError(f"output name {text!r}: unknown field {{{unknown[0]}}} (known: "
                         + ", ".join("{" + f + "}" for f in TEMPLATE_FIELDS) + ")")
    if fields and is_template(Path(text).parent):
        raise UsageError(f"output name {text!r}: fields are allowed in the file name only, not in the folder")


def expand_output(path: str | os.PathLike[str], *, peer: str | None, session: int, when: float | None = None) -> Path:
    """The output name for one session: ``{peer}`` (certificate name, file-name safe; ``peer``
    without TLS), ``{session}`` (1, 2, ... in this process), ``{time}`` (UTC, ``20261201T101500Z``)."""
    if not isinstance(path, (str, os.PathLike)):  # a database sink or a DataFrame sink: no name to expand
        return path  # type: ignore[return-value]
    text = str(path)
    if not is_template(text):
        return Path(text)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if when is None else when))
    name = _SAFE.sub("_", peer or "peer").strip("._") or "peer"
    return Path(text.format(peer=name, session=session, time=stamp))


def check_output(path: str | os.PathLike[str], *, estimate_bytes: int = 0) -> None:
    """Raise :class:`InputError` unless a file can be created at ``path`` now.

    The folder must exist and accept a new file (a temporary file is created and removed),
    ``path`` must not be a folder, and the file system must have ``estimate_bytes`` free.
    """
    target = Path(str(path).replace("{", "").replace("}", "")) if is_template(path) else Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise InputError(f"{path}: the output folder {folder} does not exist")
    if target.is_dir():
        raise InputError(f"{path}: is a folder, not a file name")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".check", dir=folder)
    except OSError as err:
        raise InputError(f"{path}: cannot create a file in {folder}: {err.strerror or err}") from None
    os.close(fd)
    os.unlink(probe)
    if estimate_bytes > 0:
        free = shutil.disk_usage(folder).free
        if free < estimate_bytes:
            raise InputError(f"{path}: {free:,} bytes free in {folder}, the output may need up to {estimate_bytes:,}")
