"""The client side of ``http-stream``: HTTP/1.1 over a hot container's Unix socket.

h11 (sans-IO) over a ``trio.SocketStream``, keep-alive, exactly one request at
a time. The contract's meaning of the answer lives in :mod:`kiln.fncontract`;
this module only moves bytes.

Failure model (what the pool relies on):

* Any protocol failure — bad HTTP (``h11.RemoteProtocolError``), EOF before the
  answer is complete, connection reset, an answer over ``max_response`` bytes —
  raises :class:`FnProtocolError`.
* A call that does not finish (a protocol error, or cancellation by the
  caller's cancel scope at any point) leaves the connection **broken**: its
  socket is closed at once and every later :meth:`FnConnection.call` raises
  :class:`FnProtocolError`. Half a request may have reached the function, so
  the only safe thing is to kill (or replace) the container.
* A function that answers with ``Connection: close`` (or HTTP/1.0) is fine: the
  socket is closed after the answer and the next call reconnects.
* When not one byte of the request reached the socket — the connection was
  found closed or reset on the first write, or could not be made — the error
  is :class:`RequestNotSent`: the function cannot have seen the call, so it
  may be sent again (on a new connection). :meth:`FnConnection.stale` tells,
  without blocking, whether an idle connection is already dead.
"""

from __future__ import annotations

import os
import select
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import h11
import trio

READ_SIZE = 65536
#: Bodies up to this size go out in the same write as the request head.
COALESCE_LIMIT = 65536
#: Default cap on a response body (the invoke API caps request bodies the same way).
MAX_RESPONSE = 64 * 1024 * 1024
#: sun_path is 108 bytes on Linux, including the terminating NUL.
_SUN_PATH_MAX = 107

_METHOD = b"POST"
_TARGET = b"/call"
_HOST = (b"host", b"kiln")


class FnProtocolError(Exception):
    """The function's socket broke HTTP: cannot connect, reset, EOF mid-answer, garbage."""


class RequestNotSent(FnProtocolError):
    """Not one byte of the request reached the function: it is safe to send it again."""


class ResponseTooLarge(FnProtocolError):
    """The answer's body is over the connection's ``max_response`` (the rest is unread)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the answer is over {limit} bytes")
        self.limit = limit


@dataclass(slots=True)
class FnResponse:
    """A whole answer to ``POST /call``. Header names are lowercase (as h11 gives them)."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


async def _connect(path: Path) -> trio.SocketStream:
    """Connect to a Unix socket, even one whose path is too long for ``sun_path``.

    A long host path (a deep ``iofs_root``) is reached through
    ``/proc/self/fd/<dir fd>/<name>``, which the kernel resolves like any path.
    """
    try:
        if len(os.fsencode(path)) <= _SUN_PATH_MAX:
            return await trio.open_unix_socket(os.fspath(path))
        dir_fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            return await trio.open_unix_socket(f"/proc/self/fd/{dir_fd}/{path.name}")
        finally:
            os.close(dir_fd)
    except OSError as e:
        raise RequestNotSent(f"cannot connect to {path}: {e.strerror or e}") from e


class FnConnection:
    """A keep-alive HTTP/1.1 connection to one container's listener; one call at a time.

    Use :meth:`open`, then :meth:`call` as often as needed, and always
    :meth:`aclose` (or ``async with``) — the socket is released on every path.
    """

    __slots__ = ("_broken", "_busy", "_h11", "_stream", "max_response", "path")

    def __init__(
        self, path: Path, stream: trio.SocketStream, *, max_response: int = MAX_RESPONSE
    ) -> None:
        self.path = path
        self.max_response = max_response
        self._stream: trio.SocketStream | None = stream
        self._h11 = h11.Connection(h11.CLIENT)
        self._broken: str | None = None
        self._busy = False

    @classmethod
    async def open(cls, path: Path, *, max_response: int = MAX_RESPONSE) -> FnConnection:
        """Connect to the socket at ``path``; :class:`FnProtocolError` if that fails."""
        return cls(path, await _connect(path), max_response=max_response)

    @property
    def broken(self) -> bool:
        """True once a call failed or was cancelled half-way: the connection is unusable."""
        return self._broken is not None

    @property
    def broken_reason(self) -> str | None:
        return self._broken

    def stale(self) -> bool:
        """Whether an idle connection is already dead: the peer closed it, reset it, or
        sent something unasked (an HTTP server's 408 before closing). No I/O wait."""
        if self._busy or self._stream is None:
            return False
        poller = select.poll()
        poller.register(self._stream.socket.fileno(), select.POLLIN | select.POLLPRI)
        return bool(poller.poll(0))

    async def aclose(self) -> None:
        """Close the socket (idempotent). Completes even when cancelled."""
        if self._broken is None:
            self._broken = "connection closed"
        stream, self._stream = self._stream, None
        if stream is not None:
            await trio.aclose_forcefully(stream)

    async def __aenter__(self) -> FnConnection:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _drop_socket(self) -> None:
        """Close the socket now, synchronously (no checkpoint: safe while being cancelled)."""
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.socket.close()

    async def call(self, headers: Iterable[tuple[bytes, bytes]], body: bytes) -> FnResponse:
        """Send ``POST /call`` with ``headers`` and ``body``; return the whole answer.

        ``headers`` come from :func:`kiln.fncontract.call_request_headers`; ``Host``
        and ``Content-Length`` are added here. The call has no timeout of its own:
        the caller's cancel scope bounds it. If it is cancelled (or fails) before
        the answer is complete, the connection is marked broken and its socket
        closed — the caller must kill or replace the container.
        """
        if self._busy:
            raise trio.BusyResourceError("FnConnection carries one call at a time")
        if self._broken is not None:
            raise FnProtocolError(f"connection unusable: {self._broken}")
        self._busy = True
        self._broken = "call interrupted"  # cleared only when the exchange completes
        try:
            if self._stream is None:  # the last answer said Connection: close
                self._stream = await _connect(self.path)
                self._h11 = h11.Connection(h11.CLIENT)
            response = await self._exchange(self._stream, self._h11, headers, body)
        except FnProtocolError as e:
            self._broken = str(e)
            self._drop_socket()
            raise
        except BaseException:
            self._drop_socket()
            raise
        finally:
            self._busy = False
        conn = self._h11
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        else:  # Connection: close / HTTP/1.0: reconnect on the next call
            self._drop_socket()
        self._broken = None
        return response

    async def _exchange(
        self,
        stream: trio.SocketStream,
        conn: h11.Connection,
        headers: Iterable[tuple[bytes, bytes]],
        body: bytes,
    ) -> FnResponse:
        try:
            request = h11.Request(
                method=_METHOD,
                target=_TARGET,
                headers=[_HOST, (b"content-length", b"%d" % len(body)), *headers],
            )
            head = conn.send(request)
            assert head is not None
            if body:
                conn.send_with_data_passthrough(h11.Data(data=body))
            conn.send(h11.EndOfMessage())  # b"" with Content-Length framing
        except h11.LocalProtocolError as e:
            raise FnProtocolError(f"cannot send the request: {e}") from e
        coalesce = len(body) <= COALESCE_LIMIT
        first, rest = (head + body, b"") if coalesce else (head, body)
        try:
            sent = await stream.socket.send(first)
        except OSError as e:
            # Closed or reset before one byte went out: the function never saw the call.
            raise RequestNotSent(f"the connection was closed: {e.strerror or e}") from e
        try:
            if sent < len(first):
                await stream.send_all(memoryview(first)[sent:])
            if rest:
                await stream.send_all(rest)
            status = 0
            response_headers: list[tuple[bytes, bytes]] = []
            chunks: list[bytes] = []
            size = 0
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(READ_SIZE))
                elif type(event) is h11.Data:
                    size += len(event.data)
                    if size > self.max_response:
                        raise ResponseTooLarge(self.max_response)
                    chunks.append(event.data)
                elif type(event) is h11.Response:
                    status = event.status_code
                    response_headers = list(event.headers)
                elif type(event) is h11.EndOfMessage:
                    return FnResponse(status, response_headers, b"".join(chunks))
                elif type(event) is h11.InformationalResponse:
                    continue  # 100 Continue and the like
                elif type(event) is h11.ConnectionClosed:
                    raise FnProtocolError("the function closed the connection before answering")
                else:
                    raise FnProtocolError(f"unexpected HTTP event from the function: {event!r}")
        except h11.RemoteProtocolError as e:
            raise FnProtocolError(f"bad HTTP from the function: {e}") from e
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            raise FnProtocolError(f"the connection to the function failed: {e}") from e
