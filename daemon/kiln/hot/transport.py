"""How a supervisor learns a container is ready and talks to it: the seam tests replace."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from kiln.hot.httpstream import FnConnection
from kiln.hot.readiness import wait_for_listener

#: Fn's agent closes a connection to a container after this much idleness (seconds).
DEFAULT_IDLE = 1.0


class HotResponse(Protocol):
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


class HotConnection(Protocol):
    """One keep-alive connection to a container's listener."""

    async def call(self, headers: list[tuple[bytes, bytes]], body: bytes) -> HotResponse: ...

    def stale(self) -> bool: ...

    async def aclose(self) -> None: ...


class ListenerTransport(Protocol):
    #: Seconds a connection to a container may sit idle before it is closed.
    connection_idle: float

    async def wait_ready(self, iofs: Path) -> Path: ...

    async def connect(self, socket_path: Path, *, max_response: int) -> HotConnection:
        """A connection whose answers over ``max_response`` bytes raise ResponseTooLarge."""
        ...


class UnixTransport:
    """The real one: inotify on the bind-mounted dir, HTTP/1.1 over the Unix socket."""

    def __init__(self, *, connection_idle: float = DEFAULT_IDLE) -> None:
        self.connection_idle = connection_idle

    async def wait_ready(self, iofs: Path) -> Path:
        return await wait_for_listener(iofs)

    async def connect(self, socket_path: Path, *, max_response: int) -> HotConnection:
        return await FnConnection.open(socket_path, max_response=max_response)
