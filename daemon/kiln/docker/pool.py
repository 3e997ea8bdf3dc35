"""The short calls' keep-alive pool: one request, one whole answer, per exchange.

Connections are opened through httpcore's ``AsyncNetworkBackend`` (a test's fake engine
plugs in there) and read and written through its streams, whose per-operation timeouts
bound every exchange. The rest is the least a short call needs (see
:mod:`kiln.docker.http1`): the request goes out in one write, the answer is framed by a
small sans-IO reader.

One cancellation-safe design. A caller waits for a slot (one of ``size``) cancellably;
once it has one, the exchange runs shielded — it finishes or fails on its timeout, so
a mutation is never left half-way and nothing is left mid-answer. A connection goes back
to the idle list only after an exchange that ended cleanly; any other is closed.
"""

from __future__ import annotations

import json
import select
import ssl
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
import httpcore

from kiln.docker.http1 import ResponseReader, request_head

READ_SIZE = 64 * 1024  # larger reads cost more (fresh buffers) than they save, even for 10 MB
CONNECT_TIMEOUT = 5.0


def connect_timeout(timeout: float | None) -> float:
    """How long connecting may take within a call's ``timeout``: at most
    :data:`CONNECT_TIMEOUT`."""
    return CONNECT_TIMEOUT if timeout is None else min(timeout, CONNECT_TIMEOUT)


class Transport(Protocol):
    """What a client may send requests through instead of its own connections: an
    httpcore connection pool, or a test's fake engine."""

    async def handle_async_request(self, request: httpcore.Request) -> httpcore.Response: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Reply:
    """A short call's answer, read whole."""

    status_code: int
    content: bytes
    headers: list[tuple[bytes, bytes]]

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.content)


class ShortPool:
    """At most ``size`` connections to the engine at ``uds`` (or ``host``:``port``, over
    TLS with ``ssl_context``); each carries one exchange at a time. With ``transport``,
    exchanges go through it instead (same slots, same shield)."""

    def __init__(
        self,
        base_url: str,
        *,
        size: int,
        uds: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        network_backend: httpcore.AsyncNetworkBackend | None = None,
        transport: Transport | None = None,
    ) -> None:
        self._base = base_url.encode()
        netloc = base_url.split("://", 1)[1]
        host, _, port = netloc.partition(":")
        self._netloc = netloc.encode()
        self._uds = uds
        self._host = host
        self._port = int(port or (443 if base_url.startswith("https") else 80))
        self.transport = transport
        self._ssl = ssl_context
        self._backend = network_backend
        self._idle: list[tuple[httpcore.AsyncNetworkStream, int]] = []  # with its socket's fd
        self._free = size
        self._waiters: deque[anyio.Event] = deque()

    # ---- slots -------------------------------------------------------------------

    async def _acquire(self) -> None:
        if self._free > 0 and not self._waiters:
            await anyio.lowlevel.checkpoint_if_cancelled()  # a cancelled caller sends nothing
            self._free -= 1
            return
        event = anyio.Event()
        self._waiters.append(event)
        try:
            await event.wait()
        except BaseException:
            if event.is_set():
                self._release()  # handed a slot while being cancelled: pass it on
            else:
                self._waiters.remove(event)
            raise

    def _release(self) -> None:
        if self._waiters:
            self._waiters.popleft().set()  # the slot goes straight to the next waiter
        else:
            self._free += 1

    # ---- connections ---------------------------------------------------------------

    async def _connect(self, timeout: float | None) -> httpcore.AsyncNetworkStream:
        if self._backend is None:
            self._backend = _default_backend()
        if self._uds is not None:
            return await self._backend.connect_unix_socket(self._uds, timeout=timeout)
        stream = await self._backend.connect_tcp(self._host, self._port, timeout=timeout)
        if self._ssl is not None:
            try:
                stream = await stream.start_tls(self._ssl, self._host, timeout=timeout)
            except BaseException:
                await stream.aclose()
                raise
        return stream

    async def _take(self, timeout: float | None) -> tuple[httpcore.AsyncNetworkStream, int]:
        """An idle connection the engine has not closed meanwhile, or a new one."""
        while self._idle:
            stream, fd = self._idle.pop()
            if not _readable(stream, fd):
                return stream, fd
            await stream.aclose()  # readable while idle: closed by the engine (or junk)
        connect = connect_timeout(timeout)
        stream = await self._connect(connect)
        fileno = getattr(stream.get_extra_info("socket"), "fileno", None)
        return stream, fileno() if callable(fileno) else -1

    async def exchange(
        self,
        method: str,
        target: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        *,
        timeout: float | None,
        sink: Callable[[memoryview], None] | None = None,
    ) -> Reply:
        """Send the request and read the whole answer (its body handed piece by piece to
        ``sink`` if there is one)."""
        await self._acquire()
        try:
            with anyio.CancelScope(shield=True):
                if self.transport is not None:
                    return await self._through(method, target, headers, body, timeout, sink)
                request = request_head(method, target, self._netloc, headers)
                request += body
                stream, fd = await self._take(timeout)
                reader = ResponseReader(head_only=method == "HEAD", sink=sink)
                try:
                    await stream.write(bytes(request), timeout=timeout)
                    while True:
                        data = await stream.read(READ_SIZE, timeout=timeout)
                        if not data:
                            reader.eof()
                            break
                        if reader.feed(data):
                            break
                except BaseException:
                    await stream.aclose()
                    raise
                if reader.reusable:
                    self._idle.append((stream, fd))
                else:
                    await stream.aclose()
        finally:
            self._release()
        return Reply(reader.status, reader.body, reader.headers)

    async def _through(
        self,
        method: str,
        target: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        timeout: float | None,
        sink: Callable[[memoryview], None] | None,
    ) -> Reply:
        assert self.transport is not None
        connect = connect_timeout(timeout)
        request = httpcore.Request(
            method.encode(),
            self._base + target.encode(),
            headers=[(b"Host", self._netloc), *headers],
            content=body,
            extensions={
                "timeout": {"connect": connect, "read": timeout, "write": timeout, "pool": timeout}
            },
        )
        response = await self.transport.handle_async_request(request)
        try:
            content = await response.aread()
        finally:
            await response.aclose()
        if sink is not None:
            sink(memoryview(content))
            content = b""
        return Reply(response.status, content, list(response.headers))

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for stream, _ in idle:
            await stream.aclose()
        if self.transport is not None:
            await self.transport.aclose()


def _default_backend() -> httpcore.AsyncNetworkBackend:
    """httpcore's own choice, made once per pool: its Trio backend under Trio, its anyio
    backend otherwise."""
    try:
        import sniffio
    except ImportError:  # Trio brings sniffio: without it, this is asyncio
        return httpcore.AnyIOBackend()
    if sniffio.current_async_library() == "trio":
        return httpcore.TrioBackend()
    return httpcore.AnyIOBackend()


def _readable(stream: httpcore.AsyncNetworkStream, fd: int) -> bool:
    """Whether an idle connection has something to read: only its end (or junk). Polls
    the socket's fd known since the connection was made (httpcore's ``is_readable``
    looks the socket up anew each time); a stream without one is asked."""
    if fd < 0:
        return bool(stream.get_extra_info("is_readable"))
    poll = select.poll()
    poll.register(fd, select.POLLIN)
    return bool(poll.poll(0))


__all__ = ["CONNECT_TIMEOUT", "Reply", "ShortPool", "Transport"]
