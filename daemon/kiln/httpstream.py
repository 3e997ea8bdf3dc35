"""The client side of ``http-stream``: HTTP/1.1 over the container's Unix socket.

h11 (sans-IO) over a ``trio.SocketStream``, keep-alive, one request at a time.
If a call is cancelled or fails half-way, the connection is *broken*: the
caller must treat the container as broken too (the contract says: kill it).
A container that answers with ``Connection: close`` is reconnected on the
next call.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h11
import trio

READ_SIZE = 65536


class FnProtocolError(Exception):
    """The container broke HTTP: reset, EOF mid-answer, garbage."""


@dataclass
class FnResponse:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


class FnConnection:
    def __init__(self, path: Path, stream: trio.SocketStream) -> None:
        self.path = path
        self._stream: trio.SocketStream | None = stream
        self._conn = h11.Connection(h11.CLIENT)
        self.broken = False

    @classmethod
    async def open(cls, path: Path) -> FnConnection:
        try:
            stream = await trio.open_unix_socket(str(path))
        except OSError as e:
            raise FnProtocolError(f"cannot connect to {path}: {e.strerror or e}") from e
        return cls(path, stream)

    async def aclose(self) -> None:
        if self._stream is not None:
            await trio.aclose_forcefully(self._stream)
            self._stream = None

    async def call(self, headers: list[tuple[bytes, bytes]], body: bytes) -> FnResponse:
        """``POST /call``; the whole answer. Cancelled or failed half-way → ``broken``."""
        if self.broken:
            raise FnProtocolError("connection is broken")
        if self._stream is None:
            fresh = await FnConnection.open(self.path)
            self._stream, self._conn = fresh._stream, h11.Connection(h11.CLIENT)
        stream = self._stream
        assert stream is not None
        self.broken = True  # until the exchange completes
        conn = self._conn
        try:
            out = conn.send(
                h11.Request(
                    method=b"POST",
                    target=b"/call",
                    headers=[
                        (b"host", b"localhost"),
                        (b"content-length", str(len(body)).encode()),
                        *headers,
                    ],
                )
            )
            await stream.send_all(
                out + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
                if body
                else out + conn.send(h11.EndOfMessage())
            )
            status = 0
            resp_headers: list[tuple[bytes, bytes]] = []
            chunks: list[bytes] = []
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(READ_SIZE)
                    conn.receive_data(bytes(data))
                    continue
                if isinstance(event, h11.Response):
                    status = event.status_code
                    resp_headers = list(event.headers)
                elif isinstance(event, h11.Data):
                    chunks.append(bytes(event.data))
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif isinstance(event, h11.InformationalResponse):
                    continue
                elif isinstance(event, h11.ConnectionClosed):
                    raise FnProtocolError("the function closed the connection before answering")
                else:
                    raise FnProtocolError(f"unexpected HTTP event {event!r}")
        except h11.ProtocolError as e:
            raise FnProtocolError(f"bad HTTP from the function: {e}") from e
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            raise FnProtocolError(f"connection to the function failed: {e}") from e
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        else:  # Connection: close — reconnect next time
            await self.aclose()
        self.broken = False
        return FnResponse(status, resp_headers, b"".join(chunks))
