"""One HTTP/1.1 exchange driven by hand with h11 (sans-IO) over an anyio byte stream.

Only the events listener uses it: its body is read by whichever subscriber is waiting,
and that subscriber may give up (a timeout) at any moment. A read cancelled here loses
nothing — the bytes stay in the socket until the next read — whereas a cancelled read of
an httpx response body closes the connection.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
import anyio.abc
import h11

from kiln.docker.errors import DockerProtocolError, DockerUnreachable
from kiln.docker.host import Endpoint

Connector = Callable[[], Awaitable[anyio.abc.ByteStream]]
READ_SIZE = 65536
_BROKEN = (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream, OSError)


async def connect_endpoint(endpoint: Endpoint) -> anyio.abc.ByteStream:
    """A fresh connection to the Docker Engine at ``endpoint``."""
    if endpoint.uds is not None:
        return await anyio.connect_unix(endpoint.uds)
    scheme, rest = endpoint.base_url.split("://", 1)
    host, _, port = rest.partition(":")
    if scheme == "https":
        return await anyio.connect_tcp(
            host,
            int(port or 443),
            tls=True,
            ssl_context=endpoint.ssl_context,
            tls_standard_compatible=False,
        )
    return await anyio.connect_tcp(host, int(port or 80))


@dataclass
class Head:
    status: int
    headers: list[tuple[bytes, bytes]]


class H11Exchange:
    """A request on its own stream; read the response head, then its body piece by piece."""

    def __init__(self, stream: anyio.abc.ByteStream, host: str = "docker") -> None:
        self.stream = stream
        self.host = host
        self.conn = h11.Connection(h11.CLIENT)
        self.finished = False

    async def aclose(self) -> None:
        self.finished = True
        await anyio.aclose_forcefully(self.stream)

    async def _send(self, event: h11.Event) -> None:
        data = self.conn.send(event)
        if data:
            try:
                await self.stream.send(data)
            except _BROKEN as e:
                raise DockerUnreachable(f"Docker closed the connection: {e}") from e

    async def _next_event(self) -> h11.Event | type[h11.PAUSED]:
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as e:
                raise DockerProtocolError(f"bad HTTP from Docker: {e}") from e
            if event is not h11.NEED_DATA:
                return event  # type: ignore[return-value]  # NEED_DATA handled here
            try:
                data = await self.stream.receive(READ_SIZE)
            except anyio.EndOfStream:
                data = b""
            except _BROKEN as e:
                raise DockerUnreachable(f"Docker closed the connection: {e}") from e
            self.conn.receive_data(data)

    async def send_request(self, method: str, target: str) -> Head:
        headers = [("Host", self.host)]
        if method in ("POST", "PUT"):
            headers.append(("Content-Length", "0"))
        await self._send(h11.Request(method=method, target=target, headers=headers))
        await self._send(h11.EndOfMessage())
        while True:
            event = await self._next_event()
            if isinstance(event, h11.InformationalResponse):
                continue
            if isinstance(event, h11.Response):
                return Head(event.status_code, list(event.headers))
            if isinstance(event, h11.ConnectionClosed):
                raise DockerUnreachable("Docker closed the connection before answering")
            raise DockerProtocolError(f"unexpected HTTP event from Docker: {event!r}")

    async def next_chunk(self) -> bytes | None:
        """The next piece of the body, or None at its end. Cancel-safe."""
        while not self.finished:
            event = await self._next_event()
            if isinstance(event, h11.Data):
                if event.data:
                    return bytes(event.data)
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                self.finished = True
            else:
                raise DockerProtocolError(f"unexpected HTTP event from Docker: {event!r}")
        return None

    async def read_body(self, limit: int = 1024 * 1024) -> bytes:
        out = bytearray()
        while (chunk := await self.next_chunk()) is not None:
            out += chunk
            if len(out) > limit:
                raise DockerProtocolError(f"Docker's answer is over {limit} bytes")
        return bytes(out)


__all__ = ["Connector", "H11Exchange", "Head", "connect_endpoint"]
