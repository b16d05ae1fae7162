"""Serve / connect a bucketed session over TCP+TLS, reconnecting after a dropped connection.

The client reconnects with exponential backoff (0.5 s doubling to 10 s) for up to
``--reconnect-timeout`` seconds after a drop; the server goes back to ``accept`` on the same
listener for as long, and only continues with the same peer (a connection from another
identity is refused and the server keeps waiting). Each reconnection runs the scale hello
again; both sides agree on the finished buckets from their manifests and continue. Errors
other than a lost or stalled connection (a refused identity, a cheating peer, bad input) end
the session as usual.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Sequence

from ..errors import PsiqError
from ..parallel import Executor
from ..protocols.base import Role
from ..transport.base import Channel
from ..transport.tcp import Listener, TlsConfig, connect as tcp_connect
from .session import BucketedSession, ScaleOptions, WrongPeer, may_retry

__all__ = ["serve_bucketed", "connect_bucketed", "bucketed_via_folder", "run_with_reconnect", "make_executor"]


def make_executor(options: Any, scale: ScaleOptions) -> Executor:
    """The local process pool, or a :class:`~psi.scale.ray_executor.RayExecutor` for ``--executor ray``."""
    if scale.executor == "ray":
        from .ray_executor import RayExecutor

        from ..session import protocol_module

        executor = RayExecutor(scale.ray_address, options.workers)
        executor.warm(protocol_module(options.protocol).__name__)  # workers start during the split
        return executor
    return Executor(options.workers)


def run_with_reconnect(session: BucketedSession, open_channel: Callable[[float | None], Channel], *,
                       reconnect_timeout: float, sleep: Callable[[float], None] = time.sleep,
                       backoff: bool = True, on_retry: Callable[[PsiqError], None] | None = None) -> Any:
    """Call ``session.run`` on channels from ``open_channel(timeout)`` until it completes.

    After a retryable error (a lost connection) once the session has shaken hands, keep
    opening channels (with backoff when ``backoff``) until ``reconnect_timeout`` seconds have
    passed since the drop; then re-raise the last error.
    """
    deadline: float | None = None
    delay = 0.5
    while True:
        remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        try:
            channel = open_channel(remaining)
            with channel:
                return session.run(channel)
        except PsiqError as err:
            retry = session.connected_once and (may_retry(err) or isinstance(err, WrongPeer) and deadline is not None)
            if not retry:
                raise
            now = time.monotonic()
            if deadline is None:
                deadline = now + reconnect_timeout
            if now >= deadline:
                raise
            session.reconnects += not isinstance(err, WrongPeer)
            if on_retry is not None:
                on_retry(err)
            if backoff:
                sleep(min(delay, max(deadline - now, 0.0)))
                delay = min(delay * 2, 10.0)
            session.connected_once = True
            continue


def serve_bucketed(input: str | os.PathLike[str], *, on: Sequence[str], listen: str, tls: TlsConfig | None,
                   options: Any, scale: ScaleOptions, output: str | os.PathLike[str] | None = None,
                   on_progress: Any = None, on_listening: Callable[[tuple[str, int]], None] | None = None,
                   on_retry: Callable[[PsiqError], None] | None = None, accept_timeout: float | None = None) -> Any:
    """The server side of a bucketed session (one session; see the module docstring)."""
    with Listener(listen, tls) as listener, make_executor(options, scale) as executor:
        session = BucketedSession(Role.SERVER, input, on=on, options=options, scale=scale, output=output,
                                  executor=executor, on_progress=on_progress)
        if on_listening is not None:
            on_listening(listener.address)

        def accept(remaining: float | None) -> Channel:
            return listener.accept(timeout=accept_timeout if remaining is None else max(remaining, 0.1))

        return run_with_reconnect(session, accept, reconnect_timeout=scale.reconnect_timeout, backoff=False,
                                  on_retry=on_retry)


def connect_bucketed(input: str | os.PathLike[str], *, on: Sequence[str], peer: str, tls: TlsConfig | None,
                     options: Any, scale: ScaleOptions, output: str | os.PathLike[str] | None = None,
                     on_progress: Any = None, on_retry: Callable[[PsiqError], None] | None = None,
                     connect_timeout: float = 10.0) -> Any:
    """The client side of a bucketed session; reconnects after a drop (module docstring)."""
    with make_executor(options, scale) as executor:
        session = BucketedSession(Role.CLIENT, input, on=on, options=options, scale=scale, output=output,
                                  executor=executor, on_progress=on_progress)

        def dial(remaining: float | None) -> Channel:
            return tcp_connect(peer, tls, timeout=connect_timeout, retries=5 if remaining is None else 0)

        return run_with_reconnect(session, dial, reconnect_timeout=scale.reconnect_timeout, on_retry=on_retry)


def bucketed_via_folder(role: Role | str, input: str | os.PathLike[str], *, on: Sequence[str],
                        directory: str | os.PathLike[str], tls: TlsConfig | None, options: Any, scale: ScaleOptions,
                        output: str | os.PathLike[str] | None = None, on_progress: Any = None) -> Any:
    """One party of a bucketed session through a shared folder (``--via-dir``): the same
    messages as over a connection, signed and encrypted by :class:`psi.transport.files.FolderChannel`.
    A folder does not drop, so there is no reconnection; an interrupted run resumes with
    ``--resume`` on both sides and a fresh folder (the scale hello then agrees on the finished
    buckets as after a reconnection)."""
    from ..transport.files import FolderChannel

    with make_executor(options, scale) as executor:
        session = BucketedSession(Role(role), input, on=on, options=options, scale=scale, output=output,
                                  executor=executor, on_progress=on_progress)
        with FolderChannel(directory, Role(role).value, tls, handshake_timeout=options.timeout) as channel:
            return session.run(channel)
