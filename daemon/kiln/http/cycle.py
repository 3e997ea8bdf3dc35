"""One HTTP request/response exchange: the ASGI app's ``receive`` and ``send``.

The cycle's state is one :class:`State`, changed only by :meth:`Cycle._to`,
which checks every transition against :data:`TRANSITIONS`::

    AWAITING ──start──▶ HEAD ──body, more──▶ SENDING ──last body──▶ COMPLETE
       │                 │ └──────────last body─────────────────────▲   │
       │                 │                                               │
       ├─────────────────┴──request unreadable──▶ REFUSED               │
       └──────── any state ──client gone / write failed──▶ GONE ◀──────┘

``AWAITING``: the app has not started its response. ``HEAD``: it has
(``http.response.start``), but the head is only buffered, so a 500 (the app
failed) or the server's refusal can still replace it. ``SENDING``: the head is
written, more body to come. ``COMPLETE``: the last body message went to h11.
``REFUSED``: the request body could not be read — a malformed chunk (400), the
body deadline passed (408), the connection was evicted to make room (503) —
and the server answers that itself once the app returned. ``GONE``: the client
went away or a write failed; nothing more is written.

``receive()`` reads the body on demand (``100 Continue`` first if the client
asked for it), every read bounded by the body deadline. Once the body has been
delivered, ``receive()`` blocks until the client disconnects and then returns
``http.disconnect``: the calling task itself waits on ``stream.receive_some()``
(no polling). EOF or a reset means *disconnected*; bytes that arrive instead (a
pipelined next request) are buffered into h11 for the next cycle and the wait
goes on. Trio's ``receive_some`` is cancel-safe, so when the app cancels its
disconnect watcher no byte of the next request is lost. At most
:data:`MAX_PIPELINE_BUFFER` pipelined bytes are buffered that way; past it, the
watch stops reading. ``receive()`` also returns ``http.disconnect`` once the
response is complete, and a ``receive()`` waiting then is woken with it.

``send()`` buffers ``http.response.start`` until the first
``http.response.body`` and writes head + body with one ``send_all``. A response
sent whole (one body message, no Content-Length) gets a Content-Length; a
streamed one without is chunked (h11). Bodies of HEAD, 1xx, 204 and 304
responses are dropped. Sends in ``GONE`` or ``REFUSED`` are dropped silently.
"""

from __future__ import annotations

import contextlib
import enum
import logging
from collections.abc import Callable

import h11
import trio

from kiln.http.asgi import ASGIApp, Message, Scope
from kiln.http.messages import REASONS, Refusal, error_response

log = logging.getLogger("kiln.http")

READ_SIZE = 64 * 1024
#: Pipelined bytes buffered while waiting for a disconnect; past it, the watch stops reading.
MAX_PIPELINE_BUFFER = 256 * 1024

_NO_BODY_STATUS = frozenset({204, 304})


class State(enum.Enum):
    AWAITING = "awaiting"  # the app has not started its response
    HEAD = "head"  # response started; the head is buffered, not written
    SENDING = "sending"  # head written, more body to come
    COMPLETE = "complete"  # the last body message went out
    REFUSED = "refused"  # the request body is unreadable; the server answers it
    GONE = "gone"  # the client is gone or the connection broke


TRANSITIONS: dict[State, frozenset[State]] = {
    State.AWAITING: frozenset({State.HEAD, State.REFUSED, State.GONE}),
    State.HEAD: frozenset({State.SENDING, State.COMPLETE, State.REFUSED, State.GONE}),
    State.SENDING: frozenset({State.COMPLETE, State.GONE}),
    State.COMPLETE: frozenset({State.GONE}),
    State.REFUSED: frozenset({State.GONE}),
    State.GONE: frozenset(),
}


class Outcome(enum.Enum):
    """What the connection does after a cycle."""

    KEEP = "keep"  # keep-alive: read the next request
    CLOSE = "close"  # close now
    LINGER = "linger"  # close after a bounded lingering read (the client may still send)


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
        "has_length",
        "headers",
        "lock",
        "no_body",
        "on_body_read",
        "pipelined",
        "read_scope",
        "refusal",
        "request",
        "shutdown",
        "state",
        "status",
        "stream",
        "watch",
    )

    def __init__(
        self,
        conn: h11.Connection,
        stream: trio.abc.Stream,
        request: h11.Request,
        *,
        body_deadline: float,
        shutdown: trio.Event | None = None,
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
        self.lock: trio.Lock | None = None
        self.watch: trio.CancelScope | None = None  # the disconnect watch reading the stream
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
        if new in (State.COMPLETE, State.GONE, State.REFUSED) and self.watch is not None:
            self.watch.cancel()  # receive() now says http.disconnect
        if new in (State.GONE, State.REFUSED) and self.read_scope is not None:
            self.read_scope.cancel()

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

    # ---------------------------------------------------------------- the app

    async def run(self, app: ASGIApp, scope: Scope) -> Outcome:
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
        """Block until the client disconnects (or the response is complete: ASGI
        says ``http.disconnect`` then too); buffer what the client sends meanwhile.

        Concurrent callers take turns reading (a lock), so that a cancelled reader
        hands the watch to the next one. Completing the response cancels the
        reader (``self.watch``); cancelled, ``receive_some`` consumes nothing."""
        if self.lock is None:
            self.lock = trio.Lock()
        async with self.lock:
            with trio.CancelScope() as self.watch:
                while not self.finished:
                    if self.pipelined > MAX_PIPELINE_BUFFER:
                        await trio.sleep_forever()  # stop reading; wait to be cancelled
                    try:
                        data = await self.stream.receive_some(READ_SIZE)
                    except trio.BrokenResourceError:
                        data = b""
                    if not data:
                        self._to(State.GONE)
                        return
                    self.pipelined += len(data)
                    self.conn.receive_data(data)  # type: ignore[arg-type]  # h11 takes bytearray too
            self.watch = None

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
