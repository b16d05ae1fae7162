"""The work dir's manifest: what a bucketed session was started with and how far it got.

``manifest.json`` (written atomically after every change) holds the input digest, the
settings both sides agreed on, the peer's identity, both hello nonces (hence the bucket key),
the partition summary and, per finished bucket, the transcript hash of its sub-session and a
chain hash over all finished buckets. Per-bucket results live next to it in
``done/b{i}.npz``; bucket files in ``prep/``.

:func:`check_resume` compares a manifest with the current run and names the first
difference (input, a setting, the peer) as a :class:`~psi.errors.UsageError` (exit 2).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_bytes
from ..errors import InputError, UsageError

__all__ = ["MANIFEST", "Manifest", "file_digest", "check_resume", "chain_hash"]

MANIFEST = "manifest.json"
FORMAT = "psiq-scale-manifest/1"


def file_digest(path: Path) -> str:
    """SHA-256 of the file's bytes (read in 4 MiB blocks)."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                h.update(block)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as err:
        raise InputError(f"{path}: cannot read ({err.strerror or err})") from None
    return h.hexdigest()


def chain_hash(previous: str, bucket: int, transcript: str) -> str:
    """Hash chain over finished buckets: equal chains mean equal transcripts of every bucket."""
    return hashlib.sha256(f"psiq/scale/chain/v1|{previous}|{bucket}|{transcript}".encode()).hexdigest()


@dataclass
class Manifest:
    """Everything a resumed run needs and checks (see the module docstring)."""

    role: str
    input_path: str
    input_digest: str
    params: dict[str, Any]
    own_nonce: str
    peer_nonce: str | None = None
    peer: str | None = None
    fine: int | None = None
    buckets: int | None = None
    partition: dict[str, Any] | None = None
    totals: dict[str, int] | None = None
    finished: list[dict[str, Any]] = field(default_factory=list)
    redone: int = 0  # finished buckets dropped because the peer had not finished them
    format: str = FORMAT

    @property
    def chain(self) -> str:
        return self.finished[-1]["chain"] if self.finished else ""

    def chain_at(self, count: int) -> str:
        return self.finished[count - 1]["chain"] if count else ""

    def save(self, work_dir: Path) -> None:
        atomic_write_bytes(work_dir / MANIFEST, json.dumps(asdict(self), indent=1, sort_keys=True).encode())

    @classmethod
    def load(cls, work_dir: Path) -> "Manifest | None":
        path = work_dir / MANIFEST
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_bytes())
            if data.get("format") != FORMAT:
                raise ValueError("unknown format")
            return cls(**data)
        except (ValueError, TypeError) as err:
            raise UsageError(f"{path}: not a psiq work-dir manifest ({err}); use an empty --work-dir") from None


def check_resume(manifest: Manifest, *, role: str, input_path: Path, digest: str, params: dict[str, Any]) -> None:
    """Refuse to resume when anything the interrupted run depended on changed; name it."""
    if manifest.role != role:
        raise UsageError(f"--resume: the work dir belongs to the {manifest.role} side of a session, this is the {role}")
    if manifest.input_digest != digest:
        raise UsageError(
            f"--resume: the input {input_path} differs from the one the interrupted run read"
            f" ({manifest.input_path}, SHA-256 {manifest.input_digest[:12]}..., now {digest[:12]}...);"
            " rerun without --resume and with an empty --work-dir"
        )
    keys = sorted(set(manifest.params) | set(params))
    changed = [k for k in keys if manifest.params.get(k) != params.get(k)]
    if changed:
        shown = "; ".join(f"{k}: was {manifest.params.get(k)!r}, now {params.get(k)!r}" for k in changed[:4])
        raise UsageError(f"--resume: settings changed since the interrupted run ({shown})")
