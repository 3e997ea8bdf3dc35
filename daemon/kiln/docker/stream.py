"""``Stream``: a hijacked attach or exec connection, read as demultiplexed messages.

Docker answers the upgrade with 101 and then the connection carries the process's stdio:
framed (see :mod:`kiln.docker.frames`) unless the process has a TTY, raw if it has one.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import anyio
import httpcore

from kiln.docker.errors import DockerProtocolError, DockerUnreachable
from kiln.docker.frames import FrameDecoder

if TYPE_CHECKING:
    from kiln.docker.api import Docker

READ_SIZE = 65536


class Message(NamedTuple):
    """One piece of output: ``stream`` 1 is stdout, 2 stderr; ``data`` the bytes."""

    stream: int
    data: bytes


@dataclass
class StreamSetup:
    """What to send to open a stream, and whether its output is raw (TTY)."""

    path: str
    params: dict[str, Any]
    tty: bool
    method: str = "POST"
    body: Any = None
    operation: str = "attach"
    extra: dict[str, Any] = field(default_factory=dict)


class Stream:
    """Use as ``async with``; ``read_out()`` gives the next :class:`Message` (None at the
    end), ``write_in()`` sends to the process's stdin, ``write_eof()`` closes it."""

    def __init__(
        self,
        docker: Docker,
        setup: Callable[[], Awaitable[StreamSetup]],
        timeout: float | None = None,
    ) -> None:
        self.docker = docker
        self._setup = setup
        self._timeout = timeout
        self._stack: AsyncExitStack | None = None
        self._network: httpcore.AsyncNetworkStream | None = None
        self._decoder = FrameDecoder()
        self._pending: list[Message] = []
        self._tty = False
        self._eof = False
        self._closed = False

    async def _init(self) -> httpcore.AsyncNetworkStream:
        if self._network is not None:
            return self._network
        if self._closed:
            raise DockerUnreachable("the stream is closed")
        setup = await self._setup()
        self._tty = setup.tty
        stack = AsyncExitStack()
        try:
            response = await stack.enter_async_context(
                self.docker._stream(
                    setup.path,
                    setup.method,
                    params=setup.params,
                    data=setup.body,
                    operation=setup.operation,
                    upgrade=True,
                )
            )
            if response.status not in (101, 200):
                raise DockerProtocolError(
                    f"{setup.operation}: Docker did not hijack the connection ({response.status})"
                )
            network: httpcore.AsyncNetworkStream | None = response.extensions.get("network_stream")
            if network is None:
                raise DockerProtocolError(f"{setup.operation}: no raw stream to use")
        except BaseException:
            with anyio.CancelScope(shield=True):
                await stack.aclose()
            raise
        self._stack = stack
        self._network = network
        return network

    async def __aenter__(self) -> Stream:
        await self._init()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        self._closed = True
        stack, self._stack, self._network = self._stack, None, None
        if stack is not None:
            with anyio.CancelScope(shield=True):
                await stack.aclose()

    async def _read(self) -> bytes:
        network = await self._init()
        try:
            return bytes(await network.read(READ_SIZE))
        except (httpcore.ReadError, OSError, anyio.ClosedResourceError) as e:
            if self._closed:
                return b""
            raise DockerUnreachable(f"the attached stream broke: {e}") from e

    async def read_out(self) -> Message | None:
        """The next piece of output, or None once the stream has ended."""
        while not self._pending:
            if self._eof or self._closed:
                return None
            data = await self._read()
            if not data:
                self._eof = True
                if not self._tty:
                    self._decoder.eof()
                return None
            if self._tty:
                return Message(1, data)
            self._pending = [Message(f.stream, f.data) for f in self._decoder.feed(data)]
        return self._pending.pop(0)

    async def read_batch(self) -> list[Message] | None:
        """Kiln's addition: every message one read of the connection completes (at
        least one), or None once the stream has ended."""
        first = await self.read_out()
        if first is None:
            return None
        batch, self._pending = [first, *self._pending], []
        return batch

    async def write_in(self, data: bytes) -> None:
        network = await self._init()
        try:
            await network.write(data)
        except (httpcore.WriteError, OSError, anyio.ClosedResourceError) as e:
            raise DockerUnreachable(f"the attached stream closed while writing: {e}") from e

    async def write_eof(self) -> None:
        """Close the process's stdin (half-close the connection; reading goes on)."""
        network = await self._init()
        sock = network.get_extra_info("socket")
        if sock is None:
            raise DockerProtocolError("cannot half-close this stream (no socket)")
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError as e:
            raise DockerUnreachable(f"the attached stream closed while closing stdin: {e}") from e


__all__ = ["Message", "Stream", "StreamSetup"]
