"""In-memory connections for the HTTP server's tests: a ``trio.abc.Listener`` whose
clients are ``trio.testing.memory_stream_pair`` ends, so ``serve_asgi`` runs
without sockets and under ``MockClock`` (timeouts in virtual time)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
import trio.testing

from kiln.http import ASGIApp, Limits, serve_asgi


class MemoryListener(trio.abc.Listener[trio.abc.Stream]):
    """Hands the server one end of a fresh in-memory stream pair per ``connect()``."""

    def __init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[trio.abc.Stream](0)
        self.accepted = 0

    async def connect(
        self,
    ) -> trio.StapledStream[trio.testing.MemorySendStream, trio.testing.MemoryReceiveStream]:
        client, server = trio.testing.memory_stream_pair()
        await self._send.send(server)
        return client

    async def accept(self) -> trio.abc.Stream:
        try:
            stream = await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise trio.ClosedResourceError from None
        self.accepted += 1
        return stream

    async def aclose(self) -> None:
        self._receive.close()
        await trio.lowlevel.checkpoint()


@asynccontextmanager
async def serving(
    app: ASGIApp, limits: Limits | None = None, *, grace: float = 5.0
) -> AsyncIterator[MemoryListener]:
    """Serve ``app`` on a :class:`MemoryListener` for the block; shut down after."""
    listener = MemoryListener()
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: serve_asgi(
                app,
                [listener],
                shutdown=shutdown,
                grace=grace,
                limits=limits or Limits(max_connections=100),
                task_status=task_status,
            )
        )
        yield listener
        shutdown.set()


async def read_until_eof(stream: trio.abc.ReceiveStream) -> bytes:
    out = b""
    while chunk := await stream.receive_some(65536):
        out += chunk
    return out
