"""The websocket attach (``/containers/{id}/attach/ws``): wsproto (sans-IO) over the
connection httpcore hands back after the 101, shaped like aiohttp's client websocket."""

from __future__ import annotations

import base64
import os
from contextlib import AsyncExitStack, suppress
from typing import TYPE_CHECKING, Any

import anyio
import httpcore
from wsproto import ConnectionType
from wsproto.connection import Connection
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from kiln.docker.errors import DockerProtocolError, DockerUnreachable

if TYPE_CHECKING:
    from kiln.docker.api import Docker

READ_SIZE = 65536


class DockerWebSocket:
    """``send_str``/``send_bytes``; ``receive()`` (a whole message, None once closed),
    ``receive_bytes``/``receive_str`` (raise once closed); ``close()``."""

    def __init__(self, stack: AsyncExitStack, network: httpcore.AsyncNetworkStream) -> None:
        self._stack = stack
        self._network = network
        self._conn = Connection(ConnectionType.CLIENT)
        self._messages: list[bytes | str] = []
        self._partial: list[bytes | str] = []
        self.closed = False

    async def _write(self, data: bytes) -> None:
        try:
            await self._network.write(data)
        except (httpcore.WriteError, OSError, anyio.ClosedResourceError) as e:
            raise DockerUnreachable(f"websocket closed while writing: {e}") from e

    async def send_str(self, data: str) -> None:
        await self._write(self._conn.send(TextMessage(data=data)))

    async def send_bytes(self, data: bytes) -> None:
        await self._write(self._conn.send(BytesMessage(data=data)))

    async def receive(self) -> bytes | str | None:
        """The next whole message, or None once the websocket is closed."""
        while not self._messages:
            if self.closed:
                return None
            try:
                data = bytes(await self._network.read(READ_SIZE))
            except (httpcore.ReadError, OSError, anyio.ClosedResourceError) as e:
                raise DockerUnreachable(f"websocket broke: {e}") from e
            try:
                self._conn.receive_data(data or None)
                for event in self._conn.events():
                    if isinstance(event, (BytesMessage, TextMessage)):
                        piece = event.data
                        self._partial.append(bytes(piece) if not isinstance(piece, str) else piece)
                        if event.message_finished:
                            first = self._partial[0]
                            joined: bytes | str = (
                                b"".join(p for p in self._partial if isinstance(p, bytes))
                                if isinstance(first, bytes)
                                else "".join(p for p in self._partial if isinstance(p, str))
                            )
                            self._messages.append(joined)
                            self._partial = []
                    elif isinstance(event, Ping):
                        await self._write(self._conn.send(event.response()))
                    elif isinstance(event, CloseConnection):
                        self.closed = True
                        if self._conn.state.name == "REMOTE_CLOSING":
                            await self._write(self._conn.send(event.response()))
            except (LocalProtocolError, RemoteProtocolError) as e:
                raise DockerProtocolError(f"bad websocket data from Docker: {e}") from e
            if not data:
                self.closed = True
        return self._messages.pop(0)

    async def receive_bytes(self) -> bytes:
        message = await self.receive()
        if message is None:
            raise DockerUnreachable("the websocket is closed")
        return message.encode() if isinstance(message, str) else message

    async def receive_str(self) -> str:
        message = await self.receive()
        if message is None:
            raise DockerUnreachable("the websocket is closed")
        return message.decode("utf-8", "replace") if isinstance(message, bytes) else message

    async def close(self) -> None:
        with anyio.CancelScope(shield=True):
            if not self.closed and self._conn.state.name == "OPEN":
                self.closed = True
                with suppress(DockerUnreachable, LocalProtocolError):
                    await self._write(self._conn.send(CloseConnection(code=1000)))
            self.closed = True
            await self._stack.aclose()

    async def __aenter__(self) -> DockerWebSocket:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def open_websocket(docker: Docker, path: str, params: dict[str, Any]) -> DockerWebSocket:
    key = base64.b64encode(os.urandom(16)).decode()
    headers = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": key,
        "Origin": "http://localhost",
    }
    stack = AsyncExitStack()
    try:
        response = await stack.enter_async_context(
            docker._stream(
                path, "GET", params=params, headers=headers, operation="attach websocket"
            )
        )
        network: httpcore.AsyncNetworkStream | None = response.extensions.get("network_stream")
        if response.status != 101 or network is None:
            raise DockerProtocolError(
                f"attach websocket: Docker did not switch protocols ({response.status})"
            )
    except BaseException:
        with anyio.CancelScope(shield=True):
            await stack.aclose()
        raise
    return DockerWebSocket(stack, network)


__all__ = ["DockerWebSocket", "open_websocket"]
