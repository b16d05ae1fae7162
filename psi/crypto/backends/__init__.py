"""Compute backends for the hot primitives, chosen once per process.

``portable``
    OpenSSL through ``cryptography`` for X25519; RSA's private operation through OpenSSL's
    libcrypto 3.x (:mod:`.openssl_rsa`), else gmpy2 (``PSIQ_RSA_PRIVATE``): every machine.
``mb``
    Intel's multi-buffer library (:mod:`.ippmb`, ``pip install 'psiq[accel]'``): eight X25519
    ladders per call where the CPU has AVX-512 IFMA; P-256 and SM2 ECDH and RSA's CRT private
    and public operations through the same library (:mod:`.ippmb_ops`), anything it cannot
    do (or whose self-test fails) on the portable path.
``auto`` (default)
    ``mb`` when it loads, applies to this CPU and passes its known-answer test, else
    ``portable``. If the ``accel`` extra is installed but unusable (no IFMA, a library that
    fails to load) the reason is kept as a one-line :attr:`Selection.note` (the CLI prints it
    on stderr and puts it in ``--json``); a missing extra is silent.

Promises: both backends return the same bytes for every input (tests compare them on the
RFC 7748 and Wycheproof vectors and on random batches wherever ``mb`` applies), so the choice
never travels in ``Hello`` and two parties may use different backends. Naming an unavailable
backend explicitly (``--backend mb``, ``PSIQ_BACKEND=mb``) is a :class:`~psi.errors.UsageError`.
Worker processes follow the parent: :func:`select` with ``export=True`` writes the concrete
choice to ``PSIQ_BACKEND``, which every start method (fork, forkserver, spawn) inherits.

Nothing is loaded at import; the first :func:`select` (or :func:`current`) does the probing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ...errors import UsageError
from ._base import Backend, BackendUnavailable
from .portable import PortableBackend

__all__ = [
    "Backend",
    "BackendUnavailable",
    "BACKEND_NAMES",
    "ENV_VAR",
    "Selection",
    "select",
    "selected",
    "current",
    "describe",
    "available",
]

BACKEND_NAMES = ("auto", "portable", "mb")
ENV_VAR = "PSIQ_BACKEND"


@dataclass(frozen=True)
class Selection:
    """The backend in use, what was asked for, and why ``auto`` fell back (or None)."""

    backend: Backend
    requested: str
    note: str | None = None


_selected: Selection | None = None


def _load_mb() -> Backend:
    from . import ippmb  # ctypes and the library only when asked for

    return ippmb.load()


def _not_installed(err: BackendUnavailable) -> bool:
    from .ippmb import NotInstalled

    return isinstance(err, NotInstalled)


def select(name: str | None = None, *, export: bool = False) -> Selection:
    """Choose the backend for this process (``name``, else ``$PSIQ_BACKEND``, else ``auto``).

    Raises :class:`UsageError` for an unknown name or an explicitly named backend that cannot
    run here. With ``export`` the concrete choice goes to ``PSIQ_BACKEND`` for worker processes.
    """
    global _selected
    requested = (name or os.environ.get(ENV_VAR) or "auto").strip().lower()
    if requested not in BACKEND_NAMES:
        raise UsageError(f"unknown backend {requested!r}; choose one of {', '.join(BACKEND_NAMES)}")
    note = None
    if requested == "portable":
        backend: Backend = PortableBackend()
    elif requested == "mb":
        try:
            backend = _load_mb()
        except BackendUnavailable as err:
            raise UsageError(f"backend 'mb' is not available here: {err}") from None
    else:
        try:
            backend = _load_mb()
        except BackendUnavailable as err:
            backend = PortableBackend()
            if not _not_installed(err):
                note = f"multi-buffer backend unavailable, using the portable one: {err}"
    _selected = Selection(backend, requested, note)
    if export:
        os.environ[ENV_VAR] = backend.name
    return _selected


def selected() -> Selection | None:
    """The selection made so far in this process, or None before the first :func:`select`."""
    return _selected


def current() -> Backend:
    """The selected backend (selected from the environment on first use)."""
    return (_selected or select()).backend


def describe() -> dict[str, object]:
    """``{"name", "requested", "note", <primitive>: <implementation>}`` for ``--json``/``--version``."""
    sel = _selected or select()
    return {"name": sel.backend.name, "requested": sel.requested, "note": sel.note, **sel.backend.describe()}


def available() -> dict[str, str | None]:
    """Every concrete backend mapped to None (usable here) or the reason it is not."""
    out: dict[str, str | None] = {"portable": None}
    try:
        _load_mb()
        out["mb"] = None
    except BackendUnavailable as err:
        out["mb"] = str(err)
    return out
