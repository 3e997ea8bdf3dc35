"""A lean HTTP/1.1 server for ASGI apps, directly on Trio + h11: the connection loop.

::

    serve_asgi (owns the listeners and one nursery)
    ├── one accept loop per listener
    └── one task per connection: keep-alive loop of request cycles

Per request there is no extra task, no task group and no queue: the connection
task parses the head, runs one :class:`~kiln.http.cycle.Cycle` (``await
app(scope, receive, send)``) and writes the response. A connection whose app
watches for its client leaving gets one more task, for the connection's life:
its :class:`~kiln.http.reader.ConnectionReader`, which reads while the app runs
and until the next request's first bytes arrive. ``serve_asgi`` takes any
``trio.abc.Listener`` (tests use in-memory streams).

What the server answers itself, closing the connection after: a malformed head
(400), a head over ``max_head`` bytes, with more than ``max_headers`` headers or
more than ``max_header_bytes`` of names and values (431), ``CONNECT`` (405 with
``Allow``: there are no tunnels), ``Content-Length`` together with
``Transfer-Encoding`` (400: the framing is ambiguous, the classic request
smuggling vector), a malformed chunk (400), a body that did not arrive within
``body_timeout`` of the head (408), an app that raised or returned before its
response head went out (500). A connection is never kept alive when the
request body was not read to the end; it is closed after the response with a
bounded lingering close, so that the client sees the response rather than a
reset.

Connections are capped (``max_connections``; by default derived from
``RLIMIT_NOFILE`` so file descriptors remain for Docker, the containers and the
control socket). At the cap, a new connection evicts the connection that has
waited longest for a client that is slow to send: idle keep-alive connections
first, then the oldest still sending its head or body (answered 503 if its
request was under way). Only connections whose request is complete are never
evicted; when every connection is one, accepting waits for one to close. When
``accept()`` itself fails for lack of file descriptors (EMFILE, ENFILE,
ENOMEM, ENOBUFS), it backs off (waking early when a connection closes) and says
so at most once per :data:`ACCEPT_LOG_INTERVAL`.

Timers are deadlines only: the wait for a request head (first or next on a
keep-alive connection) is bounded by ``keep_alive_timeout``; the body by
``body_timeout``; the lingering close by :data:`LINGER_TIMEOUT`. Nothing ticks.

Shutdown (``shutdown`` set): the listeners are closed, keep-alive connections
waiting for a request (not one byte of it received) are closed at once,
requests in flight get ``grace`` seconds to finish (their responses say
``Connection: close``), then they are cancelled; then ``serve_asgi`` returns.

Cancellation: cancelling ``serve_asgi`` cancels every connection task, and so
every running app call; every stream is closed (``trio.aclose_forcefully``) on
every path, and so are the listeners.

Not handled: the ASGI ``lifespan`` protocol (Kiln's apps have nothing to set up),
WebSocket and HTTP upgrades (h11 denies them with any non-101 response),
HTTP/2, TLS, ``http.response.trailers``, HTTP/1.0 keep-alive (h11 closes 1.0
connections after each response). A half-close by the client (EOF after its
request) counts as a disconnect. No access log; app failures are logged on
``kiln.http``.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import h11
import trio

from kiln.http.asgi import ASGIApp
from kiln.http.capacity import EVICTED, Capacity, Handle
from kiln.http.cycle import Cycle
from kiln.http.listeners import default_max_connections, format_bind
from kiln.http.messages import error_response, make_scope
from kiln.http.reader import READ_SIZE, ConnectionReader
from kiln.http.states import Outcome

log = logging.getLogger("kiln.http")

#: Idle keep-alive connections (and clients slow to send a request head) are closed after this.
KEEP_ALIVE_TIMEOUT = 75.0
#: The whole request body must arrive within this long after its head.
BODY_TIMEOUT = 60.0
#: Largest request head (request line and headers) accepted; past it, 431.
MAX_HEAD = 16 * 1024
#: Most request headers accepted; past it, 431.
MAX_HEADERS = 100
#: Lingering close after an error response: read and discard for at most this long / this much.
LINGER_TIMEOUT = 1.0
LINGER_BYTES = 1 << 20
#: Backoff when accept() fails for lack of file descriptors or memory.
ACCEPT_BACKOFF = 0.1
#: At most one log line per this many seconds about failing accepts.
ACCEPT_LOG_INTERVAL = 10.0
_ACCEPT_CAPACITY_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
#: What ``Allow`` says when the server refuses CONNECT.
ALLOW = b"GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"


@dataclass(frozen=True)
class Limits:
    """What one server accepts from its clients."""

    keep_alive_timeout: float = KEEP_ALIVE_TIMEOUT
    body_timeout: float = BODY_TIMEOUT
    max_head: int = MAX_HEAD
    max_headers: int = MAX_HEADERS
    #: Sum of header names and values (the part an app may forward).
    max_header_bytes: int = MAX_HEAD
    #: Open connections; None: derived from RLIMIT_NOFILE (:func:`default_max_connections`).
    max_connections: int | None = None


async def serve_asgi(
    app: ASGIApp,
    listeners: Sequence[trio.abc.Listener[trio.abc.Stream]],
    *,
    shutdown: trio.Event,
    grace: float,
    limits: Limits | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` (HTTP only) on ``listeners`` until ``shutdown`` is set.

    ``task_status.started`` gets the bind strings (``"http://127.0.0.1:8080"``,
    ``"unix:/path"``). ``serve_asgi`` owns the listeners: it closes them on every
    path. After ``shutdown``: no new connections, idle keep-alive connections are
    closed at once, requests in flight have ``grace`` seconds to finish and are
    then cancelled; ``serve_asgi`` returns once every connection is closed.
    Cancelling ``serve_asgi`` cancels every request at once.
    """
    server = _Server(app, shutdown, limits or Limits())
    try:
        async with trio.open_nursery() as connections:
            async with trio.open_nursery() as acceptors:
                for listener in listeners:
                    acceptors.start_soon(server.accept_loop, listener, connections)
                task_status.started([format_bind(listener) for listener in listeners])
                await shutdown.wait()
                acceptors.cancel_scope.cancel()
            for listener in listeners:
                await trio.aclose_forcefully(listener)
            server.capacity.close_idle()
            connections.cancel_scope.deadline = min(
                connections.cancel_scope.deadline, trio.current_time() + grace
            )
    finally:
        for listener in listeners:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(listener)


class LogThrottle:
    """At most one log line per ``interval`` seconds; counts what it held back."""

    __slots__ = ("interval", "next_at", "suppressed")

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.next_at = -math.inf
        self.suppressed = 0

    def allow(self, now: float) -> int | None:
        """None: stay quiet. Else log now; the value is how many were held back."""
        if now < self.next_at:
            self.suppressed += 1
            return None
        held, self.suppressed = self.suppressed, 0
        self.next_at = now + self.interval
        return held


class _Server:
    __slots__ = ("accept_log", "app", "capacity", "limits", "shutdown")

    def __init__(self, app: ASGIApp, shutdown: trio.Event, limits: Limits) -> None:
        self.app = app
        self.shutdown = shutdown
        self.limits = limits
        self.capacity = Capacity(limits.max_connections or default_max_connections())
        self.accept_log = LogThrottle(ACCEPT_LOG_INTERVAL)

    # ---------------------------------------------------------------- accepting

    async def accept_loop(
        self, listener: trio.abc.Listener[trio.abc.Stream], nursery: trio.Nursery
    ) -> None:
        capacity = self.capacity
        while True:
            await capacity.wait_for_room()  # every connection is busy with a request
            try:
                with capacity.accepting() as scope:
                    stream = await listener.accept()
                if scope.cancelled_caught:
                    continue  # became full meanwhile
            except OSError as e:
                if e.errno not in _ACCEPT_CAPACITY_ERRORS:
                    raise
                held = self.accept_log.allow(trio.current_time())
                if held is not None:
                    more = f" ({held} more since the last report)" if held else ""
                    log.warning(
                        "accept: %s with %d connection(s) open; backing off%s",
                        e.strerror or e,
                        capacity.open,
                        more,
                    )
                capacity.evict_one()
                with trio.move_on_after(ACCEPT_BACKOFF):
                    await capacity.wait_for_a_close()
                continue
            nursery.start_soon(self.connection, stream, capacity.opened(), nursery)

    # ---------------------------------------------------------------- one connection

    async def connection(
        self, stream: trio.abc.Stream, handle: Handle, nursery: trio.Nursery
    ) -> None:
        """Serve one connection until it closes; never raises but ``Cancelled``.
        ``nursery`` runs the connection's reader, if it gets one."""
        limits = self.limits
        capacity = self.capacity
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_head)
        reader = ConnectionReader(stream, conn, nursery)
        client, server = _addresses(stream)
        linger = False
        try:
            while True:
                event = await self._next_request(conn, stream, handle, reader)
                if event is None:
                    return
                headers: list[tuple[bytes, bytes]] = []
                if isinstance(event, h11.Request):
                    headers = list(event.headers)  # once: h11's Headers iterate slowly
                    if handle.evicted:
                        # evicted as its head arrived: tell the client, do not serve it
                        event = error_response(503, "overloaded", EVICTED)
                    else:
                        event = self._check_head(event, headers) or event
                if not isinstance(event, h11.Request):
                    await stream.send_all(event)
                    linger = not handle.evicted  # an evicted one frees its descriptor now
                    return
                cycle = Cycle(
                    conn,
                    stream,
                    event,
                    body_deadline=trio.current_time() + limits.body_timeout,
                    shutdown=self.shutdown,
                    reader=reader,
                )
                if _has_body(headers):
                    handle.cycle = cycle
                    cycle.on_body_read = lambda: capacity.busy_now(handle)
                else:
                    capacity.busy_now(handle)
                try:
                    outcome = await cycle.run(self.app, make_scope(event, headers, client, server))
                finally:
                    handle.cycle = None
                    capacity.busy_now(handle)
                if outcome is not Outcome.KEEP:
                    linger = outcome is Outcome.LINGER
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client reset the connection
        except Exception:
            log.exception("HTTP connection from %s failed", client)
        finally:
            capacity.busy_now(handle)
            try:
                if linger:
                    await reader.pause()
                    await _linger(stream)
            finally:
                reader.close()
                await trio.aclose_forcefully(stream)
                capacity.closed(handle)

    async def _next_request(
        self,
        conn: h11.Connection,
        stream: trio.abc.Stream,
        handle: Handle,
        reader: ConnectionReader,
    ) -> h11.Request | bytes | None:
        """The next request head; an error response (bytes) to send before closing;
        None if the connection is to close (EOF, reset, keep-alive timeout,
        eviction, shutdown while idle). Reads itself, or — while the reader still
        reads after the last request — waits for the bytes it hands to h11."""
        if self.shutdown.is_set():
            return None
        with trio.move_on_after(self.limits.keep_alive_timeout) as scope:
            eof = False
            handle.head_scope = scope
            self.capacity.idle_now(handle)
            try:
                while True:
                    try:
                        event = conn.next_event()
                    except h11.RemoteProtocolError as e:
                        if eof:
                            return None  # EOF mid-head: nobody to answer
                        # h11 hints 501 for a transfer coding it does not know; what
                        # a caller sends is never the server's fault here: 400.
                        status = e.error_status_hint if e.error_status_hint < 500 else 400
                        code = "headers_too_large" if status == 431 else "bad_request"
                        return error_response(status, code, str(e))
                    if event is h11.NEED_DATA:
                        if reader.reading:
                            await reader.wait_arrived()
                            eof = reader.eof
                        else:
                            try:
                                data = await stream.receive_some(READ_SIZE)
                            except trio.BrokenResourceError:
                                return None
                            eof = not data
                            conn.receive_data(data)  # type: ignore[arg-type]  # h11 takes bytearray too
                        if not eof and handle in self.capacity.idle:
                            self.capacity.reading_now(handle)
                    elif isinstance(event, h11.Request):
                        await reader.pause()  # pipelined: the cycle reads the body itself
                        return event
                    else:  # ConnectionClosed
                        return None
            finally:
                handle.head_scope = None
        return None

    def _check_head(self, request: h11.Request, headers: list[tuple[bytes, bytes]]) -> bytes | None:
        """An error response for a head the server refuses itself, else None."""
        limits = self.limits
        if len(headers) > limits.max_headers:
            return error_response(
                431,
                "headers_too_large",
                f"{len(headers)} request headers; at most {limits.max_headers} are accepted",
            )
        header_bytes = sum(len(name) + len(value) for name, value in headers)
        if header_bytes > limits.max_header_bytes:
            return error_response(
                431,
                "headers_too_large",
                f"request headers of {header_bytes} bytes; "
                f"at most {limits.max_header_bytes} are accepted",
            )
        head = len(request.method) + len(request.target) + 12 + header_bytes + 4 * len(headers)
        if head > limits.max_head:
            return error_response(
                431,
                "headers_too_large",
                f"request head of about {head} bytes; at most {limits.max_head} are accepted",
            )
        if request.method == b"CONNECT":
            return error_response(
                405,
                "method_not_allowed",
                "CONNECT is not supported (no tunnels)",
                headers=((b"allow", ALLOW),),
            )
        names = {name for name, _ in headers}
        if b"transfer-encoding" in names and b"content-length" in names:
            return error_response(
                400,
                "bad_request",
                "both Content-Length and Transfer-Encoding: the body's length is ambiguous",
            )
        return None


# --------------------------------------------------------------------------- helpers


def _has_body(headers: list[tuple[bytes, bytes]]) -> bool:
    """True if a body follows the head (a Content-Length over 0 or chunked)."""
    for name, value in headers:
        if name == b"transfer-encoding":
            return True
        if name == b"content-length":
            return value.strip() != b"0"
    return False


def _addresses(stream: trio.abc.Stream) -> tuple[Any, Any]:
    """(client, server) for the ASGI scope: (host, port) pairs for TCP, else None."""
    if not isinstance(stream, trio.SocketStream):
        return None, None
    sock = stream.socket
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None, None
    with contextlib.suppress(OSError):
        peer = sock.getpeername()
        local = sock.getsockname()
        return (peer[0], peer[1]), (local[0], local[1])
    return None, None


async def _linger(stream: trio.abc.Stream) -> None:
    """Lingering close: stop sending, then read and discard what the client still
    sends (bounded), so that closing does not reset the connection before the
    client read our response."""
    if not isinstance(stream, trio.abc.HalfCloseableStream):
        return
    with trio.move_on_after(LINGER_TIMEOUT), contextlib.suppress(trio.BrokenResourceError):
        await stream.send_eof()
        total = 0
        while total < LINGER_BYTES:
            data = await stream.receive_some(READ_SIZE)
            if not data:
                return
            total += len(data)
