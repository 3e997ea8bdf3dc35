"""One HTTP request/response exchange: the ASGI app's ``receive`` and ``send``.

The cycle's state is one :class:`~kiln.http.states.State`, changed only by
:meth:`Cycle._to`, which checks every transition against
:data:`~kiln.http.states.TRANSITIONS` (the diagram is in :mod:`kiln.http.states`).

``receive()`` reads the body on demand (``100 Continue`` first if the client
asked for it), every read bounded by the body deadline. Once the body has been
delivered, ``receive()`` blocks until the client disconnects and then returns
``http.disconnect``. An app that only needs to stop work when its client leaves
uses the scope's :data:`DISCONNECT_WATCH` extension instead — the cycle itself
(:meth:`Cycle.watch`): a callback, no task of the app's waiting in ``receive()``.
Either way the connection's :class:`~kiln.http.reader.ConnectionReader` does the
reading (no polling): EOF or a reset means *disconnected*; bytes that arrive
instead (a pipelined next request) are buffered into h11 for the next cycle and
the watch goes on. At most :data:`MAX_PIPELINE_BUFFER` pipelined bytes are
buffered that way; past it, the watch stops reading. ``receive()`` also returns
``http.disconnect`` once the response is complete, and a ``receive()`` waiting
then is woken with it.

``send()`` buffers ``http.response.start`` until the first
``http.response.body`` and writes head + body with one ``send_all``. A response
sent whole (one body message, no Content-Length) gets a Content-Length; a
streamed one without is chunked (h11). Bodies of HEAD, 1xx, 204 and 304
responses are dropped. Sends in ``GONE`` or ``REFUSED`` are dropped silently.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

import h11
import trio

from kiln.http.asgi import DISCONNECT_WATCH, ASGIApp, Message, Scope
from kiln.http.messages import REASONS, Refusal, error_response
from kiln.http.reader import READ_SIZE, ConnectionReader
from kiln.http.states import TRANSITIONS, Outcome, State

log = logging.getLogger("kiln.http")

#: Pipelined bytes buffered while waiting for a disconnect; past it, the watch stops reading.
MAX_PIPELINE_BUFFER = 256 * 1024

_NO_BODY_STATUS = frozenset({204, 304})


def _disconnect() -> Message:
    return {"type": "http.disconnect"}


class Cycle:
    """One request/response exchange on a connection."""

    __slots__ = (
        "body_deadline",
        "body_read",
        "conn",
        "done",
        "eof",
        "finished_event",
        "has_length",
        "headers",
        "no_body",
        "on_body_read",
        "on_gone",
        "pipelined",
        "read_scope",
        "reader",
        "refusal",
        "request",
        "shutdown",
        "state",
        "status",
        "stream",
    )

    def __init__(
        self,
        conn: h11.Connection,
        stream: trio.abc.Stream,
        request: h11.Request,
        *,
        body_deadline: float,
        shutdown: trio.Event | None = None,
        reader: ConnectionReader | None = None,
    ) -> None:
        self.conn = conn
        self.stream = stream
        self.request = request
        self.body_deadline = body_deadline
        #: Once set (the server shuts down), responses say ``Connection: close``.
        self.shutdown = shutdown
        self.state = State.AWAITING
        self.body_read = False  # receive() returned more_body=False
        self.done = False  # the app returned
        self.eof = False  # the client's EOF went to h11
        self.refusal: Refusal | None = None
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.has_length = False
        self.no_body = request.method == b"HEAD"
        self.pipelined = 0
        #: Reads for the cycle once the body is read (None: nothing watches the client).
        self.reader = reader
        self.on_gone: Callable[[], None] | None = None  # see watch()
        self.finished_event: trio.Event | None = None  # a receive() waits for the end
        self.read_scope: trio.CancelScope | None = None  # a body read in progress
        #: Called once the body has been read to its end (the connection is busy, not reading).
        self.on_body_read: Callable[[], None] | None = None

    # ---------------------------------------------------------------- state

    def _to(self, new: State) -> None:
        """The one place the state changes."""
        if new is self.state:
            return
        if new not in TRANSITIONS[self.state]:
            raise RuntimeError(f"HTTP cycle: {self.state.value} -> {new.value} is not a transition")
        self.state = new
        if new in (State.COMPLETE, State.GONE, State.REFUSED) and self.finished_event is not None:
            self.finished_event.set()  # receive() now says http.disconnect
        if new in (State.GONE, State.REFUSED) and self.read_scope is not None:
            self.read_scope.cancel()
        if new is State.GONE and self.on_gone is not None:
            on_gone, self.on_gone = self.on_gone, None
            on_gone()

    @property
    def finished(self) -> bool:
        """Nothing more goes to the client from the app: its receive() says disconnect."""
        return self.done or self.state in (State.COMPLETE, State.GONE, State.REFUSED)

    def refuse(self, refusal: Refusal) -> None:
        """The request cannot be read to its end (bad framing, deadline, eviction):
        stop reading; the server answers it if the app has not started to."""
        if self.state in (State.AWAITING, State.HEAD):
            self.refusal = refusal
            self._to(State.REFUSED)
        elif self.state is State.SENDING:
            self._to(State.GONE)  # only closing can tell the client now

    # ---------------------------------------------------------------- watching the client

    def watch(self, on_gone: Callable[[], None]) -> None:
        """Call ``on_gone`` (once, from the reader's task) if the client leaves before
        :meth:`unwatch`; at once if it already has. Call after the body is read.
        The scope's :data:`DISCONNECT_WATCH` extension."""
        if self.state is State.GONE:
            on_gone()
            return
        self.on_gone = on_gone
        if self.body_read and not self.finished and self.reader is not None:
            self.reader.arm(self)

    def unwatch(self) -> None:
        """Stop watching (the reader reads on, for the next request)."""
        self.on_gone = None

    def client_sent(self, size: int) -> bool:
        """The reader gave h11 ``size`` pipelined bytes; False: stop reading."""
        self.pipelined += size
        return self.pipelined <= MAX_PIPELINE_BUFFER

    def client_gone(self) -> None:
        """The reader saw EOF or a reset while the app runs."""
        self._to(State.GONE)

    # ---------------------------------------------------------------- the app

    async def run(self, app: ASGIApp, scope: Scope) -> Outcome:
        extensions = scope.get("extensions")
        if extensions is None:
            scope["extensions"] = {DISCONNECT_WATCH: self}
        else:
            extensions[DISCONNECT_WATCH] = self
        try:
            await app(scope, self.receive, self.send)
        except Exception:
            log.exception(
                "ASGI app failed on %s %s",
                self.request.method.decode("ascii", "replace"),
                self.request.target.decode("ascii", "replace"),
            )
            return await self._fail("internal error: the app failed")
        finally:
            self.done = True
            if self.finished_event is not None:
                self.finished_event.set()
        state = self.state
        if state is State.GONE:
            return Outcome.CLOSE
        if state is State.REFUSED:
            return await self._answer_refusal()
        if state is State.SENDING:
            return Outcome.CLOSE  # a truncated response: closing is all that tells the client
        if state is not State.COMPLETE:
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
                return Outcome.CLOSE
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
            return Outcome.KEEP
        return Outcome.CLOSE if conn.their_state in (h11.DONE, h11.MUST_CLOSE) else Outcome.LINGER

    async def _fail(self, message: str) -> Outcome:
        if self.state is State.REFUSED:
            return await self._answer_refusal()
        if self.state not in (State.AWAITING, State.HEAD):
            return Outcome.CLOSE
        await self._write_final(error_response(500, "internal", message))
        return (
            Outcome.CLOSE if self.conn.their_state in (h11.DONE, h11.MUST_CLOSE) else Outcome.LINGER
        )

    async def _answer_refusal(self) -> Outcome:
        refusal = self.refusal
        assert refusal is not None
        await self._write_final(error_response(refusal.status, refusal.code, refusal.message))
        return Outcome.LINGER if refusal.linger else Outcome.CLOSE

    async def _write_final(self, data: bytes) -> None:
        """The server's own last words on this connection (the app has returned)."""
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self.stream.send_all(data)

    # ---------------------------------------------------------------- receive

    async def receive(self) -> Message:
        if self.finished:
            return _disconnect()
        if not self.body_read:
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
            except h11.RemoteProtocolError as e:
                if self.eof:
                    self._to(State.GONE)  # EOF mid-body: nobody to answer
                else:
                    self.refuse(Refusal(400, "bad_request", f"malformed request body: {e}"))
                return _disconnect()
            if isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                self.body_read = True
                if self.on_body_read is not None:
                    self.on_body_read()
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            elif event is h11.NEED_DATA:
                if chunks:
                    return {"type": "http.request", "body": b"".join(chunks), "more_body": True}
                if self.finished:  # the 100 Continue could not be written, or refused meanwhile
                    return _disconnect()
                data = await self._receive_body_bytes()
                if data is None:
                    return _disconnect()
                if not data:
                    self.eof = True
                conn.receive_data(data)  # type: ignore[arg-type]  # h11 takes bytearray too
            else:  # PAUSED: a CONNECT or Upgrade request is complete; nothing more to read
                self.body_read = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

    async def _receive_body_bytes(self) -> bytes | bytearray | None:
        """Bytes of the body, ``b""`` at EOF; None if the read was stopped (deadline,
        eviction): the cycle is then REFUSED."""
        with trio.CancelScope(deadline=self.body_deadline) as self.read_scope:
            try:
                return await self.stream.receive_some(READ_SIZE)
            except trio.BrokenResourceError:
                return b""
            finally:
                self.read_scope = None
        if self.state is not State.REFUSED and not self.finished:
            self.refuse(
                Refusal(
                    408, "request_timeout", "the request body did not arrive in time", linger=False
                )
            )
        return None

    async def _wait_disconnect(self) -> None:
        """Block until the client disconnects or the response is complete (ASGI says
        ``http.disconnect`` then too); the reader buffers what the client sends
        meanwhile. Any number of tasks may wait; cancelling one costs nothing else."""
        if self.reader is not None:
            self.reader.arm(self)
        if self.finished_event is None:
            self.finished_event = trio.Event()
        await self.finished_event.wait()

    # ---------------------------------------------------------------- send

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.body":
            await self._send_body(message)
        elif kind == "http.response.start":
            self._start(message)
        else:
            raise RuntimeError(f"ASGI: unexpected message {kind!r} on an HTTP connection")

    def _start(self, message: Message) -> None:
        if self.state in (State.GONE, State.REFUSED):
            return  # dropped, but start must still come first: remember it was sent
        if self.state is not State.AWAITING:
            raise RuntimeError("ASGI: http.response.start sent twice")
        status = int(message["status"])
        headers: list[tuple[bytes, bytes]] = list(message.get("headers", ()))
        for name, _ in headers:
            lowered = name.lower()
            if lowered == b"content-length" or lowered == b"transfer-encoding":
                self.has_length = True
        if self.shutdown is not None and self.shutdown.is_set():
            headers.append((b"connection", b"close"))
        if status in _NO_BODY_STATUS or status < 200:
            self.no_body = True
        self.status = status
        self.headers = headers
        self._to(State.HEAD)

    async def _send_body(self, message: Message) -> None:
        state = self.state
        if state in (State.GONE, State.REFUSED):
            return  # the client is gone, or the server answers: drop
        if state is State.AWAITING:
            raise RuntimeError("ASGI: http.response.body before http.response.start")
        if state is State.COMPLETE:
            raise RuntimeError("ASGI: http.response.body after the response is complete")
        body: bytes = message.get("body", b"")
        more: bool = message.get("more_body", False)
        conn = self.conn
        data = b""
        if state is State.HEAD:
            if not self.has_length and not more and not self.no_body:
                self.headers.append((b"content-length", b"%d" % len(body)))
            response = h11.Response(
                status_code=self.status, headers=self.headers, reason=REASONS.get(self.status, b"")
            )
            data = conn.send(response) or b""
        if body and not self.no_body:
            data += conn.send(h11.Data(data=body)) or b""
        if more:
            # Only now (h11 accepted it all) is the head committed: before, a 500 can replace it.
            self._to(State.SENDING)
        else:
            data += conn.send(h11.EndOfMessage()) or b""
            self._to(State.COMPLETE)
        if data:
            await self._write(data)

    async def _write(self, data: bytes) -> None:
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._to(State.GONE)
        except BaseException:
            self._to(State.GONE)  # e.g. cancelled mid-write: the stream is in an unknown state
            raise
