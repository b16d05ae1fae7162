"""A channel through a shared folder, for parties that cannot open a connection to each other.

Each side writes its frames as numbered files into ``DIR/<own role>-out/`` (written to a temp
name and renamed, so a reader never sees half a frame) and polls ``DIR/<peer role>-out/`` for the
next number. The folder can be a mounted exchange share (SFTP drop, NFS) that both institutions'
jobs can reach. Frames are the same as on TCP, with the same size cap and validation, and every
file is deleted once read.

There is no TLS here: confidentiality and the peer's identity rest on the folder's access
control. The protocols' own guarantees (what each party learns) are unchanged.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from ..errors import MalformedMessage, PeerDisconnected, TransportError, UsageError
from ..messages import DEFAULT_MAX_BODY, Message, decode_frame, encode_frame
from .base import Channel

__all__ = ["FolderChannel"]

_CLOSED = "closed"


class FolderChannel(Channel):
    """One side of a folder exchange: ``role`` is ``client`` or ``server``."""

    def __init__(self, directory: str | os.PathLike[str], role: str, *, poll: float = 0.02,
                 max_body: int = DEFAULT_MAX_BODY) -> None:
        super().__init__()
        if role not in ("client", "server"):
            raise UsageError("folder channel role must be 'client' or 'server'")
        peer = "server" if role == "client" else "client"
        self.directory = Path(directory)
        self._out = self.directory / f"{role}-out"
        self._in = self.directory / f"{peer}-out"
        try:
            self._out.mkdir(parents=True, exist_ok=True)
            self._in.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise TransportError(f"cannot use exchange folder {self.directory}: {err.strerror or err}") from None
        if any(self._out.iterdir()):
            raise UsageError(f"exchange folder {self._out} holds files of an earlier session: use a fresh folder per session")
        self._sent = 0
        self._received = 0
        self._poll = poll
        self.max_body = max_body
        self._closed = False

    def send(self, message: Message) -> None:
        if self._closed:
            raise TransportError("channel is closed")
        if (self._in / _CLOSED).exists():
            raise PeerDisconnected("peer closed the exchange")
        frame = encode_frame(message)
        name = self._out / f"{self._sent:010d}.frame"
        tmp = self._out / f".{self._sent:010d}.tmp"
        try:
            tmp.write_bytes(frame)
            os.replace(tmp, name)
        except OSError as err:
            raise TransportError(f"cannot write to exchange folder: {err.strerror or err}") from None
        self._sent += 1
        self.bytes_sent += len(frame)

    def recv(self, timeout: float | None = None) -> Message:
        name = self._in / f"{self._received:010d}.frame"
        deadline = None if timeout is None else time.monotonic() + timeout
        while not name.exists():
            if (self._in / _CLOSED).exists() and not name.exists():
                raise PeerDisconnected("peer closed the exchange")
            if deadline is not None and time.monotonic() >= deadline:
                raise TransportError("timed out waiting for the peer's next file")
            time.sleep(self._poll)
        try:
            frame = name.read_bytes()
            name.unlink()
        except OSError as err:
            raise TransportError(f"cannot read from exchange folder: {err.strerror or err}") from None
        if len(frame) > self.max_body + 128:
            raise MalformedMessage("frame file exceeds the size cap")
        message, _session = decode_frame(frame, self.max_body)
        self._received += 1
        self.bytes_received += len(frame)
        return message

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                (self._out / _CLOSED).touch()
            except OSError:
                pass
