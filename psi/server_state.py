"""Server state that outlives a session: persisted keys, the RSA signed-set cache, ECDH prepared sets.

A persisted key lets a client recognise the same customer across sessions (the server's
answers for a key never change), so it is opt-in and the summary says so. Caches and prepared
sets are tied to the key fingerprint and to a digest of the exact normalised input, so a
changed input or key is never served from a stale file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from .atomic import atomic_write_bytes
from .errors import InputError, UsageError
from .parallel import Executor

__all__ = ["rsa_server_state", "load_or_create_ecdh_key", "prepare_ecdh", "load_prepared"]

PERSISTED_KEY_NOTE = "the server used a persisted key: a client can link its customers across sessions with it"


def _load_or_create_rsa_key(path: Path, bits: int, create: bool = False) -> Any:
    from .crypto.rsa_keys import RsaKey

    if not path.exists() and not create:
        raise InputError(f"server key not found: {path} (pass --create-key to create a new one there)")
    if path.exists():
        key = RsaKey.load(path)
        if key.bits != bits:
            raise UsageError(f"{path} holds a {key.bits}-bit key but --key-bits is {bits}")
        return key
    key = RsaKey.generate(bits)
    key.save(path)
    return key


def rsa_server_state(options: Any, table: Any, executor: Executor) -> dict[str, Any]:
    """``key``/``signed_set`` arguments for the RSA server from ``--server-key``/``--cache-dir``."""
    from .protocols.rsa import SignedSet, sign_own_set, signed_set_cache_key

    if options.server_key is None:
        if options.cache_dir is not None:
            raise UsageError("--cache-dir needs --server-key: a cached signed set is only valid for one key")
        return {}
    key = _load_or_create_rsa_key(Path(options.server_key), options.key_bits, getattr(options, "create_key", False))
    state: dict[str, Any] = {"key": key}
    if options.cache_dir is not None:
        cache = Path(options.cache_dir) / f"rsa-{signed_set_cache_key(key.fingerprint(), table.keys)}.signed"
        signed = None
        if cache.exists():
            try:
                signed = SignedSet.from_bytes(cache.read_bytes())
            except InputError:
                signed = None  # damaged cache: recompute and overwrite
            if signed is not None and (signed.key_fingerprint != key.fingerprint() or len(signed) != table.unique_keys):
                signed = None
        if signed is None:
            signed = sign_own_set(table.keys, key, executor)
            atomic_write_bytes(cache, signed.to_bytes())
        state["signed_set"] = signed
    return state


def load_or_create_ecdh_key(path: Path, group: str, create: bool = True) -> Any:
    """Load the ECDH server key at ``path``, or create it (mode 0600) if missing and ``create``."""
    from .protocols.ecdh import ServerKey

    path = Path(path)
    if not path.exists() and not create:
        raise InputError(f"server key not found: {path} (the key 'psiq psi prepare' made the prepared set with)")
    if path.exists():
        key = ServerKey.from_bytes(path.read_bytes())
        if key.group != group:
            raise UsageError(f"{path} holds a key for group {key.group}, not {group}")
        return key
    key = ServerKey.generate(group)
    atomic_write_bytes(path, key.to_bytes())
    return key


def prepare_ecdh(items: Sequence[bytes], *, group: str, key_path: Path, out: Path, executor: Executor) -> Any:
    """Encrypt the server set once under the persisted key and write it to ``out``."""
    from .protocols.ecdh import prepare_server_set

    key = load_or_create_ecdh_key(key_path, group)
    prepared = prepare_server_set(items, group, key, executor)
    atomic_write_bytes(Path(out), prepared.to_bytes(), mode=0o644)
    return prepared


def load_prepared(options: Any, table: Any) -> Any:
    """The prepared set named by ``--prepared``, checked against ``--server-key`` and the input."""
    from .protocols.ecdh import PreparedSet, file_suite, input_digest

    if options.server_key is None:
        raise UsageError("--prepared needs the --server-key it was made with")
    key = load_or_create_ecdh_key(Path(options.server_key), options.group, create=False)
    path = Path(options.prepared)
    if not path.is_file():
        raise InputError(f"prepared set not found: {path}")
    prepared = PreparedSet.from_bytes(path.read_bytes(), key)
    if prepared.count != table.unique_keys or prepared.digest != input_digest(table.keys, file_suite(prepared.group)):
        raise InputError(f"{path} was prepared from another input (or other key settings): run 'psiq psi prepare' again")
    return prepared
