"""``--sm2-key`` / ``--sm2-peer-key``: SM2 message signing for a session (psi.transport.signed)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable, TypeVar

import click

from psi.errors import UsageError

__all__ = ["sm2_signing_options"]

F = TypeVar("F", bound=Callable[..., Any])


def sm2_signing_options(fn: F) -> F:
    """Add --sm2-key/--sm2-peer-key; the command receives ``sm2_signing`` (an ``Sm2Signing`` or None).

    Both or neither (exit 2), both files loaded and checked to be SM2 keys (exit 2 naming the
    file) before the command listens or connects. Not with --via-dir or --buckets (exit 2).
    """

    @click.option("--sm2-key", type=click.Path(dir_okay=False, path_type=Path), default=None,
                  help="SM2-sign every message with this private key (PEM; 'psiq certs sm2-keygen'); needs --sm2-peer-key.")
    @click.option("--sm2-peer-key", type=click.Path(dir_okay=False, path_type=Path), default=None,
                  help="The peer's SM2 public key or certificate (PEM): every message must carry its signature.")
    @functools.wraps(fn)
    def wrapper(*args: Any, sm2_key: Path | None, sm2_peer_key: Path | None, **kwargs: Any) -> Any:
        signing = None
        if (sm2_key is None) != (sm2_peer_key is None):
            missing = "--sm2-peer-key" if sm2_peer_key is None else "--sm2-key"
            raise UsageError(f"SM2 message signing needs both --sm2-key and --sm2-peer-key: {missing} is missing")
        if sm2_key is not None and sm2_peer_key is not None:
            for flag in ("via_dir", "buckets", "work_dir"):
                if kwargs.get(flag) is not None:
                    raise UsageError(f"--sm2-key applies to --listen/--peer sessions, not with --{flag.replace('_', '-')}")
            from psi.transport.signed import Sm2Signing

            signing = Sm2Signing.from_files(sm2_key, sm2_peer_key)
        return fn(*args, sm2_signing=signing, **kwargs)

    return wrapper  # type: ignore[return-value]
