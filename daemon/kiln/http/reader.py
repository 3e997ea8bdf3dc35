"""A connection's background reader: the task that reads a keep-alive connection
while its connection task is busy running the app.

Telling that a client left while its call runs takes a task waiting on the
socket. Started per request and cancelled once the answer is ready, such a task
costs a spawn, a nursery and a cancellation (an exception through every frame of
the read) on every call. The reader is one task per connection instead, started
at the first request that watches for its client and parked on an event between
uses. Armed when a cycle starts watching (:meth:`kiln.http.cycle.Cycle.watch`),
it reads on after the answer went out and parks as soon as the next request's
first bytes arrive, handing them to h11 for the connection task. A keep-alive
call thus costs two wake-ups and cancels nothing.

States (the reader's own; changed only in :meth:`ConnectionReader.arm`,
:meth:`ConnectionReader._park` and :meth:`ConnectionReader.close`)::

    PARKED ──arm()──▶ READING ──bytes, no cycle watching──▶ PARKED (``arrived``)
                        │  ├──bytes while a cycle watches: into h11 (pipelined),
                        │  │    read on up to the cycle's buffer limit, then PARKED
                        │  ├──EOF or reset while a cycle watches: its client is gone──▶ PARKED
                        │  ├──EOF, no cycle watching: into h11 (``eof``)──▶ PARKED
                        │  └──pause(): the read is cancelled; nothing is lost──▶ PARKED
    any ──close()──▶ CLOSED (the task returns)

While READING, nobody else reads the stream: the connection task waits for
:meth:`wait_arrived` instead, and calls :meth:`pause` before it reads itself (a
pipelined request whose head was already buffered, the lingering close).

Cancellation: :meth:`pause` and :meth:`wait_arrived` are cancellable and lose no
byte (Trio's ``receive_some`` consumes nothing when cancelled). The task ends
when the connection closes (:meth:`close`, then the stream's ``aclose``) or when
the nursery it runs in is cancelled.
"""

from __future__ import annotations

from typing import Protocol

import h11
import trio

READ_SIZE = 64 * 1024


class Watched(Protocol):
    """The cycle a reader reads for (:class:`kiln.http.cycle.Cycle`)."""

    @property
    def finished(self) -> bool:
        """True once nothing more goes to the client: bytes now are the next request's."""
        ...

    def client_sent(self, size: int) -> bool:
        """``size`` more bytes arrived while the app runs (already given to h11);
        False: stop reading (the buffer is full)."""
        ...

    def client_gone(self) -> None:
        """The client closed or reset the connection while the app runs."""
        ...


class ConnectionReader:
    """The background reader of one connection (see the module's docstring).

    Make one per connection (no task yet); the first :meth:`arm` starts its task in
    ``nursery``; :meth:`close` it when the connection ends.
    """

    __slots__ = (
        "_armed",
        "_arrived",
        "_closed",
        "_nursery",
        "_pausing",
        "_scope",
        "_started",
        "_wake",
        "conn",
        "eof",
        "stream",
        "watched",
    )

    def __init__(
        self, stream: trio.abc.Stream, conn: h11.Connection, nursery: trio.Nursery
    ) -> None:
        self.stream = stream
        self.conn = conn
        self._nursery = nursery
        #: The cycle whose client is watched; None between requests.
        self.watched: Watched | None = None
        #: The client's EOF was read (and given to h11 if no cycle was watching).
        self.eof = False
        self._armed = False
        self._pausing = False
        self._closed = False
        self._started = False
        self._scope: trio.CancelScope | None = None
        self._wake: trio.Event | None = None
        self._arrived: trio.Event | None = None

    @property
    def reading(self) -> bool:
        """True while the reader owns the stream's reading side."""
        return self._armed

    def arm(self, watched: Watched | None = None) -> None:
        """Read now (for ``watched``, if given) until bytes arrive; idempotent."""
        self.watched = watched
        if self._armed or self._closed:
            return
        self._armed = True
        if not self._started:
            self._started = True
            self._nursery.start_soon(self._run)
        elif self._wake is not None:
            self._wake.set()

    async def wait_arrived(self) -> None:
        """Return once the read in progress delivered (bytes or EOF, into h11) and the
        reader parked; at once if it is not reading."""
        if not self._armed:
            return
        if self._arrived is None:
            self._arrived = trio.Event()
        await self._arrived.wait()

    async def pause(self) -> None:
        """Stop reading (cancelling a read in progress) and return once parked, so the
        caller may read the stream itself."""
        if not self._armed:
            return
        self._pausing = True
        if self._scope is not None:
            self._scope.cancel()
        await self.wait_arrived()

    def close(self) -> None:
        """The connection is ending: the task returns (a read in progress ends when the
        stream is closed). Idempotent; never blocks."""
        self._closed = True
        self._park()
        if self._wake is not None:
            self._wake.set()

    def _park(self) -> None:
        self._armed = False
        self._pausing = False
        arrived, self._arrived = self._arrived, None
        if arrived is not None:
            arrived.set()

    async def _run(self) -> None:
        stream = self.stream
        try:
            while not self._closed:
                if not self._armed or self._pausing:
                    self._park()
                    wake = self._wake = trio.Event()
                    await wake.wait()
                    continue
                with trio.CancelScope() as scope:
                    self._scope = scope
                    try:
                        data = await stream.receive_some(READ_SIZE)
                    except trio.BrokenResourceError:
                        data = b""
                self._scope = None
                if scope.cancelled_caught:
                    self._park()  # paused
                    continue
                self._deliver(data)
        except trio.ClosedResourceError:
            pass
        finally:
            self._closed = True
            self._park()

    def _deliver(self, data: bytes | bytearray) -> None:
        if not data:
            self.eof = True
        watched = self.watched
        if watched is not None and not watched.finished:
            if not data:
                watched.client_gone()
                self._park()
                return
            self.conn.receive_data(data)  # type: ignore[arg-type]  # h11 takes bytearray too
            if not watched.client_sent(len(data)) or self._pausing:
                self._park()
            return  # read on: the client may still leave
        self.watched = None
        self.conn.receive_data(data)  # type: ignore[arg-type]  # the next request, or EOF
        self._park()
