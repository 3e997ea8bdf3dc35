"""One HTTP/1.1 exchange on a connection of its own, with h11 (sans-IO) over Trio.

Docker's long operations — ``/wait``, ``/attach`` (hijacked by a 101 upgrade),
``logs?follow``, ``/events`` — hold their connection for a container's whole
life. They do not go through httpx's pool: a pooled connection cancelled from
an outer cancel scope can jam the pool (httpcore issue 1093). Here every long
call owns one socket; cancelling it simply closes that socket.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import h11
import trio

from kiln.docker.errors import DockerProtocolError, DockerUnreachable

Connector = Callable[[], Awaitable[trio.abc.HalfCloseableStream]]

READ_SIZE = 65536


@dataclass
class RawResponse:
    status: int
    headers: list[tuple[bytes, bytes]]


class RawExchange:
    """A request sent on its own stream; read the response head, then the body or the raw stream.

    Always use as ``async with``: the socket is closed on every exit path.
    """

    def __init__(self, stream: trio.abc.HalfCloseableStream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)
        self.response: RawResponse | None = None
        self.upgraded = False
        self.trailing = b""
        self.eof = False

    async def __aenter__(self) -> RawExchange:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)

    async def _send(self, event: h11.Event) -> None:
        data = self.conn.send(event)
        if data:
            try:
                await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
                raise DockerUnreachable(f"Docker closed the connection: {e}") from e

    async def _receive(self) -> bytes:
        try:
            return bytes(await self.stream.receive_some(READ_SIZE))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            raise DockerUnreachable(f"Docker closed the connection: {e}") from e

    async def _next_event(self) -> h11.Event | type[h11.PAUSED]:
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as e:
                if self.eof:
                    # The connection ended in the middle of an answer: Docker went away.
                    raise DockerUnreachable(f"Docker closed the connection: {e}") from e
                raise DockerProtocolError(f"bad HTTP from Docker: {e}") from e
            if event is h11.NEED_DATA:
                data = await self._receive()
                self.eof = not data
                self.conn.receive_data(data)
                continue
            return event  # type: ignore[return-value]  # NEED_DATA handled above

    async def send_request(
        self, method: str, target: str, headers: list[tuple[str, str]], body: bytes = b""
    ) -> RawResponse:
        """Send the request and read the response head (status + headers)."""
        all_headers = [("Host", "docker"), *headers]
        if body or method in ("POST", "PUT"):
            all_headers.append(("Content-Length", str(len(body))))
        await self._send(h11.Request(method=method, target=target, headers=all_headers))
        if body:
            await self._send(h11.Data(data=body))
        await self._send(h11.EndOfMessage())
        while True:
            event = await self._next_event()
            if isinstance(event, h11.InformationalResponse):
                if event.status_code == 101:
                    self.upgraded = True
                    data, _closed = self.conn.trailing_data
                    self.trailing = bytes(data)
                    self.response = RawResponse(101, list(event.headers))
                    return self.response
                continue
            if isinstance(event, h11.Response):
                self.response = RawResponse(event.status_code, list(event.headers))
                return self.response
            if isinstance(event, h11.ConnectionClosed):
                raise DockerUnreachable("Docker closed the connection before answering")
            if event is h11.PAUSED and self.conn.their_state is h11.SWITCHED_PROTOCOL:
                continue
            raise DockerProtocolError(f"unexpected HTTP event from Docker: {event!r}")

    async def body_chunks(self) -> AsyncIterator[bytes]:
        """The response body as it arrives (for follow streams)."""
        while True:
            event = await self._next_event()
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                return
            else:
                raise DockerProtocolError(f"unexpected HTTP event from Docker: {event!r}")

    async def read_body(self, limit: int = 16 * 1024 * 1024) -> bytes:
        out = bytearray()
        async for chunk in self.body_chunks():
            out += chunk
            if len(out) > limit:
                raise DockerProtocolError(f"Docker's answer is over {limit} bytes")
        return bytes(out)


async def open_exchange(connect: Connector, socket_desc: str) -> RawExchange:
    try:
        stream = await connect()
    except OSError as e:
        raise DockerUnreachable(f"cannot reach Docker at {socket_desc}: {e.strerror or e}") from e
    return RawExchange(stream)
