"""A lean HTTP/1.1 server for ASGI apps, directly on Trio + h11 (replaces hypercorn
for the invoke API).

::

    serve_asgi (owns the listeners and one nursery)
    ├── one accept loop per listener
    └── one task per connection: keep-alive loop of request cycles

Per request there is no extra task, no task group and no queue: the connection
task parses the head, calls ``await app(scope, receive, send)`` and writes the
response. ``receive()`` reads the body on demand (sending ``100 Continue`` first
if the client asked for it). Once the body has been delivered, a ``receive()``
call blocks until the client disconnects and then returns ``http.disconnect``:
the calling task itself waits on ``stream.receive_some()`` (no polling). EOF or a
reset means *disconnected*; bytes that arrive instead (a pipelined next request)
are buffered into h11 for the next cycle and the wait goes on. Trio's
``receive_some`` is cancel-safe (cancelled, it consumes nothing), so when the app
cancels its disconnect watcher no byte of the next request is stolen or lost; and
since the app's tasks have all finished when ``app()`` returns, nothing else
reads the stream when the connection task parses the next request. At most
``MAX_PIPELINE_BUFFER`` pipelined bytes are buffered that way; past it, the
watch stops reading (``receive()`` then just blocks until cancelled or the
response is complete). As ASGI says, ``receive()`` also returns
``http.disconnect`` once the response is complete, and a ``receive()`` waiting
then is woken with it (Starlette's disconnect listener relies on this).

``send()`` buffers ``http.response.start`` until the first
``http.response.body`` and writes head + body with one ``send_all``. A response
that the app sends whole (one body message, no Content-Length) gets a
Content-Length; a streamed one without Content-Length is chunked (h11). Bodies
of HEAD, 204 and 304 responses are dropped. If the client has gone away, sends
are dropped silently (as hypercorn does) and ``receive()`` says
``http.disconnect``.

Errors: a malformed request gets a 400 (431 for a head over
``MAX_INCOMPLETE_EVENT_SIZE``) and the connection is closed; an app that raises,
or returns, before its response head went out gets a 500
(``{"error": {"code": "internal", ...}}``) and the connection is closed; an app
that fails mid-response gets its connection closed. A connection is never kept
alive when the request body was not read to the end (what h11 already buffered
is drained; nothing is read for it); it is closed after the response, with a
bounded lingering close so that the client sees the response rather than a
reset.

Timers are deadlines only: the wait for a request head (first or next on a
keep-alive connection) is bounded by ``keep_alive_timeout``; the lingering close
by ``LINGER_TIMEOUT``. Nothing ticks.

Shutdown (``shutdown`` set): the listeners are closed, keep-alive connections
waiting for a request (not one byte of it received) are closed at once, requests
in flight get ``grace`` seconds to finish (their responses say
``Connection: close``), then they are cancelled; then ``serve_asgi`` returns.

Cancellation: cancelling ``serve_asgi`` cancels every connection task, and so
every running app call (its ``await app(...)`` raises ``trio.Cancelled``); every
stream is closed (``trio.aclose_forcefully``) on every path, and so are the
listeners. An app cancelled while writing its response leaves that connection
closed.

Not handled: the ASGI ``lifespan`` protocol (Kiln's apps have nothing to set up:
the server never sends a lifespan scope), WebSocket and HTTP upgrades / CONNECT
(refused with a closed connection by h11's state machine), HTTP/2, TLS,
``http.response.trailers``, HTTP/1.0 keep-alive (h11 closes 1.0 connections after
each response), and a read timeout on request bodies (the app bounds its own
calls). A half-close by the client (EOF after its request) counts as a
disconnect. No access log; app failures are logged on ``kiln.http``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import stat
from collections.abc import Awaitable, Callable, MutableMapping
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote_to_bytes

import h11
import trio

log = logging.getLogger("kiln.http")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Idle keep-alive connections (and clients slow to send a request head) are closed after this.
KEEP_ALIVE_TIMEOUT = 75.0
#: Largest request head h11 buffers before answering 431.
MAX_INCOMPLETE_EVENT_SIZE = 16 * 1024
READ_SIZE = 64 * 1024
#: Pipelined bytes buffered while waiting for a disconnect; past it, the watch stops reading.
MAX_PIPELINE_BUFFER = 256 * 1024
#: Lingering close after an error response: read and discard for at most this long / this much.
LINGER_TIMEOUT = 1.0
LINGER_BYTES = 1 << 20
#: Backoff when accept() fails for lack of file descriptors or memory (as trio.serve_listeners).
ACCEPT_BACKOFF = 0.1
_ACCEPT_CAPACITY_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})

_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
_NO_BODY_STATUS = frozenset({204, 304})


def _disconnect() -> Message:
    return {"type": "http.disconnect"}


def error_response(status: int, code: str, message: str) -> bytes:
    """A complete ``Connection: close`` error response, built without h11 (whose
    state may be ERROR by then)."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode() + b"\n"
    reason = _REASONS.get(status, b"")
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
        b"connection: close\r\n\r\n" % (status, reason, len(body))
    ) + body


# --------------------------------------------------------------------------- listeners


def _format_bind(listener: trio.SocketListener) -> str:
    sock = listener.socket
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return f"unix:{name}"
    host, port = name[0], name[1]
    if sock.family == socket.AF_INET6:
        host = f"[{host}]"
    return f"http://{host}:{port}"


async def open_listeners(bind: str, *, backlog: int | None = None) -> list[trio.SocketListener]:
    """Listeners for ``"HOST:PORT"`` (``"[::1]:8080"``; an empty host or ``*``: every
    address), ``"unix:/path"`` (a stale socket file is replaced; a live one is
    refused with EADDRINUSE) or ``"fd://N"`` (an inherited, bound socket).

    Accepted TCP streams have TCP_NODELAY set (``trio.SocketStream`` does it)."""
    if bind.startswith("unix:"):
        return [_unix_listener(bind[len("unix:") :], backlog)]
    if bind.startswith("fd://"):
        sock = socket.socket(fileno=int(bind[len("fd://") :]))
        sock.setblocking(False)
        sock.listen(backlog or socket.SOMAXCONN)
        return [trio.SocketListener(trio.socket.from_stdlib_socket(sock))]
    host, sep, port = bind.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"bind {bind!r}: expected HOST:PORT, unix:/path or fd://N")
    host = host.strip("[]")
    return await trio.open_tcp_listeners(
        int(port), host=None if host in ("", "*") else host, backlog=backlog
    )


def _unix_listener(path: str, backlog: int | None) -> trio.SocketListener:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            sock.bind(path)
        except OSError as e:
            if e.errno != errno.EADDRINUSE or not _stale_unix_socket(path):
                raise
            os.unlink(path)
            sock.bind(path)
        sock.setblocking(False)
        sock.listen(backlog or socket.SOMAXCONN)
    except BaseException:
        sock.close()
        raise
    return trio.SocketListener(trio.socket.from_stdlib_socket(sock))


def _stale_unix_socket(path: str) -> bool:
    """True if ``path`` is a socket file nobody listens on."""
    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            return False
    except FileNotFoundError:
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            return True
        except OSError:
            return False
    return False


# --------------------------------------------------------------------------- server


async def serve_asgi(
    app: ASGIApp,
    listeners: list[trio.SocketListener],
    *,
    shutdown: trio.Event,
    grace: float,
    keep_alive_timeout: float = KEEP_ALIVE_TIMEOUT,
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
    server = _Server(app, shutdown, keep_alive_timeout)
    try:
        async with trio.open_nursery() as connections:
            async with trio.open_nursery() as acceptors:
                for listener in listeners:
                    acceptors.start_soon(server.accept_loop, listener, connections)
                task_status.started([_format_bind(listener) for listener in listeners])
                await shutdown.wait()
                acceptors.cancel_scope.cancel()
            for listener in listeners:
                await trio.aclose_forcefully(listener)
            server.close_idle()
            connections.cancel_scope.deadline = min(
                connections.cancel_scope.deadline, trio.current_time() + grace
            )
    finally:
        for listener in listeners:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(listener)


class _Server:
    __slots__ = ("app", "idle", "keep_alive_timeout", "shutdown")

    def __init__(self, app: ASGIApp, shutdown: trio.Event, keep_alive_timeout: float) -> None:
        self.app = app
        self.shutdown = shutdown
        self.keep_alive_timeout = keep_alive_timeout
        #: Cancel scopes of connections waiting for a request, not one byte of it received.
        self.idle: set[trio.CancelScope] = set()

    def close_idle(self) -> None:
        for scope in self.idle:
            scope.cancel()

    async def accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as e:
                if e.errno not in _ACCEPT_CAPACITY_ERRORS:
                    raise
                log.error("accept: %s; retrying in %g s", e, ACCEPT_BACKOFF)
                await trio.sleep(ACCEPT_BACKOFF)
                continue
            nursery.start_soon(self.connection, stream)

    async def connection(self, stream: trio.abc.Stream) -> None:
        """Serve one connection until it closes; never raises but ``Cancelled``."""
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_INCOMPLETE_EVENT_SIZE)
        client, server = _addresses(stream)
        linger = False
        try:
            while True:
                event = await self._next_request(conn, stream)
                if event is None:
                    return
                if isinstance(event, h11.RemoteProtocolError):
                    status = event.error_status_hint
                    code = "headers_too_large" if status == 431 else "bad_request"
                    await stream.send_all(error_response(status, code, str(event)))
                    linger = True
                    return
                cycle = _Cycle(self, conn, stream, event)
                outcome = await cycle.run(_scope(event, client, server))
                if outcome is not _KEEP:
                    linger = outcome is _LINGER
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client reset the connection
        except Exception:
            log.exception("HTTP connection from %s failed", client)
        finally:
            if linger:
                await _linger(stream)
            await trio.aclose_forcefully(stream)

    async def _next_request(
        self, conn: h11.Connection, stream: trio.abc.Stream
    ) -> h11.Request | h11.RemoteProtocolError | None:
        """The next request head; None if the connection is to close (EOF, reset,
        keep-alive timeout, shutdown while idle)."""
        if self.shutdown.is_set():
            return None
        with trio.move_on_after(self.keep_alive_timeout) as scope:
            idle = True
            eof = False
            self.idle.add(scope)
            try:
                while True:
                    try:
                        event = conn.next_event()
                    except h11.RemoteProtocolError as e:
                        return None if eof else e  # EOF mid-head: nobody to answer
                    if event is h11.NEED_DATA:
                        try:
                            data = await stream.receive_some(READ_SIZE)
                        except trio.BrokenResourceError:
                            return None
                        if not data:
                            eof = True
                        elif idle:
                            idle = False
                            self.idle.discard(scope)
                        conn.receive_data(data)  # type: ignore[arg-type]  # h11 takes bytearray too
                    elif isinstance(event, h11.Request):
                        return event
                    else:  # ConnectionClosed
                        return None
            finally:
                self.idle.discard(scope)
        return None


# The outcome of a request cycle.
_KEEP = "keep"
_CLOSE = "close"
_LINGER = "linger"


class _Cycle:
    """One request/response exchange on a connection: the app's receive and send."""

    __slots__ = (
        "complete",
        "conn",
        "done",
        "gone",
        "has_length",
        "head_sent",
        "headers",
        "lock",
        "no_body",
        "pipelined",
        "request",
        "server",
        "started",
        "status",
        "stream",
        "unread_body",
        "watch",
    )

    def __init__(
        self, server: _Server, conn: h11.Connection, stream: trio.abc.Stream, request: h11.Request
    ) -> None:
        self.server = server
        self.conn = conn
        self.stream = stream
        self.request = request
        self.unread_body = True  # until receive() returned more_body=False
        self.started = False  # http.response.start received
        self.head_sent = False  # the response head was handed to h11 / written
        self.complete = False  # the last body message was sent
        self.done = False  # the app returned
        self.gone = False  # the client is gone (EOF, reset, failed write)
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.has_length = False
        self.no_body = request.method == b"HEAD"
        self.pipelined = 0
        self.lock: trio.Lock | None = None
        self.watch: trio.CancelScope | None = None  # the disconnect watch reading the stream

    async def run(self, scope: Scope) -> str:
        try:
            await self.server.app(scope, self.receive, self.send)
        except Exception:
            log.exception(
                "ASGI app failed on %s %s",
                self.request.method.decode("ascii", "replace"),
                self.request.target.decode("ascii", "replace"),
            )
            return await self._fail("internal error: the app failed")
        finally:
            self.done = True
        if self.gone:
            return _CLOSE
        if not self.complete:
            if self.head_sent:
                return _CLOSE  # a truncated response: closing is all that tells the client
            log.error("ASGI app returned without a response")
            return await self._fail("internal error: the app returned without a response")
        conn = self.conn
        if conn.their_state is h11.SEND_BODY:
            # The app did not read the whole body: what h11 holds may finish it.
            try:
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA or isinstance(event, h11.EndOfMessage):
                        break
            except h11.RemoteProtocolError:
                return _CLOSE
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
            return _KEEP
        return _CLOSE if conn.their_state in (h11.DONE, h11.MUST_CLOSE) else _LINGER

    async def _fail(self, message: str) -> str:
        if self.gone or self.head_sent:
            return _CLOSE
        self.head_sent = True
        await self._write(error_response(500, "internal", message))
        return _CLOSE if self.conn.their_state in (h11.DONE, h11.MUST_CLOSE) else _LINGER

    # ---------------------------------------------------------------- receive

    async def receive(self) -> Message:
        if self.done or self.gone or self.complete:
            return _disconnect()
        if self.unread_body:
            return await self._read_body()
        await self._wait_disconnect()
        return _disconnect()

    async def _read_body(self) -> Message:
        conn = self.conn
        if conn.they_are_waiting_for_100_continue:
            await self._write(
                conn.send(h11.InformationalResponse(status_code=100, headers=[])) or b""
            )
        chunks: list[bytes] = []
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError:  # EOF mid-body, or a malformed chunk
                self._set_gone()
                return _disconnect()
            if isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                self.unread_body = False
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            elif event is h11.NEED_DATA:
                if chunks:
                    return {"type": "http.request", "body": b"".join(chunks), "more_body": True}
                if self.gone:  # the 100 Continue could not be written
                    return _disconnect()
                try:
                    data = await self.stream.receive_some(READ_SIZE)
                except trio.BrokenResourceError:
                    data = b""
                conn.receive_data(data)  # type: ignore[arg-type]  # h11 takes bytearray too
            else:  # pragma: no cover - h11 yields nothing else mid-body
                raise RuntimeError(f"unexpected h11 event {event!r}")

    async def _wait_disconnect(self) -> None:
        """Block until the client disconnects (or the response is complete: ASGI
        says ``http.disconnect`` then too); buffer what the client sends meanwhile.

        Concurrent callers take turns reading (a lock), so that a cancelled reader
        hands the watch to the next one. Completing the response cancels the
        reader (``self.watch``); cancelled, ``receive_some`` consumes nothing."""
        if self.lock is None:
            self.lock = trio.Lock()
        async with self.lock:
            with trio.CancelScope() as self.watch:
                while not (self.gone or self.complete):
                    if self.pipelined > MAX_PIPELINE_BUFFER:
                        await trio.sleep_forever()  # stop reading; wait to be cancelled
                    try:
                        data = await self.stream.receive_some(READ_SIZE)
                    except trio.BrokenResourceError:
                        data = b""
                    if not data:
                        self.gone = True
                        return
                    self.pipelined += len(data)
                    self.conn.receive_data(data)  # type: ignore[arg-type]  # h11 takes bytearray too
            self.watch = None

    def _set_gone(self) -> None:
        self.gone = True
        if self.watch is not None:
            self.watch.cancel()

    # ---------------------------------------------------------------- send

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.body":
            if not self.started:
                raise RuntimeError("ASGI: http.response.body before http.response.start")
            if self.complete:
                raise RuntimeError("ASGI: http.response.body after the response is complete")
            if self.gone:
                return  # the client is gone: drop (as hypercorn does)
            body: bytes = message.get("body", b"")
            more: bool = message.get("more_body", False)
            conn = self.conn
            if self.head_sent:
                data = b""
            else:
                if not self.has_length and not more and not self.no_body:
                    self.headers.append((b"content-length", b"%d" % len(body)))
                data = (
                    conn.send(
                        h11.Response(
                            status_code=self.status,
                            headers=self.headers,
                            reason=_REASONS.get(self.status, b""),
                        )
                    )
                    or b""
                )
            if body and not self.no_body:
                data += conn.send(h11.Data(data=body)) or b""
            if not more:
                data += conn.send(h11.EndOfMessage()) or b""
                self.complete = True
            # Only now (h11 accepted it all) is the head committed: before, a 500 can replace it.
            self.head_sent = True
            if data:
                await self._write(data)
            if self.complete and self.watch is not None:
                self.watch.cancel()  # receive() now says http.disconnect
        elif kind == "http.response.start":
            if self.started:
                raise RuntimeError("ASGI: http.response.start sent twice")
            self.started = True
            status = int(message["status"])
            headers: list[tuple[bytes, bytes]] = list(message.get("headers", ()))
            for name, _ in headers:
                lowered = name.lower()
                if lowered == b"content-length" or lowered == b"transfer-encoding":
                    self.has_length = True
            if self.server.shutdown.is_set():
                headers.append((b"connection", b"close"))
            if status in _NO_BODY_STATUS or status < 200:
                self.no_body = True
            self.status = status
            self.headers = headers
        else:
            raise RuntimeError(f"ASGI: unexpected message {kind!r} on an HTTP connection")

    async def _write(self, data: bytes) -> None:
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._set_gone()
        except BaseException:
            self._set_gone()  # e.g. cancelled mid-write: the stream is in an unknown state
            raise


# --------------------------------------------------------------------------- helpers


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


def _scope(request: h11.Request, client: Any, server: Any) -> Scope:
    raw_path, _, query = request.target.partition(b"?")
    if b"%" in raw_path:
        path = unquote_to_bytes(raw_path).decode("utf-8", "replace")
    else:
        path = raw_path.decode("utf-8", "replace")
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": request.http_version.decode("ascii"),
        "method": request.method.decode("ascii"),
        "scheme": "http",
        "path": path,
        "raw_path": raw_path,
        "query_string": query,
        "root_path": "",
        "headers": list(request.headers),
        "client": client,
        "server": server,
    }


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
