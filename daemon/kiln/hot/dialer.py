"""A hot container's connection, kept the way Fn FDKs can bear it.

FDKs run their own timers on an idle connection: HTTP servers answer a
connection that sent nothing for too long with 408 and close it (fdk-python
after 60 s); fdk-python's keep-alive timer, once a connection that served a
call has idled 75 s, re-arms itself with no delay and spins a core. So, as
Fn's agent does, a :class:`Dialer` never leaves a connection idle for long:

* it dials when a call needs a connection and has none;
* it closes a connection that has been idle for ``idle`` seconds (its
  :meth:`Dialer.run` task sleeps until that deadline; no ticker);
* before reusing an idle connection it checks, without waiting, that the
  function has not closed it or sent something unasked (``stale``).

The reconnect rule: a *reused* connection found dead before one byte of the
request reached it (:class:`RequestNotSent`), or answering 408 (a server's
"you sent nothing" on a connection it had given up on), is replaced and the
call sent once more. A failure after the request went out is never retried:
the function may have run it. When a new connection cannot be made at all,
:class:`Undelivered` says the call never reached this container.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterable

import trio

from kiln.hot.httpstream import FnProtocolError, RequestNotSent
from kiln.hot.transport import DEFAULT_IDLE, HotConnection, HotResponse

#: What an HTTP server answers on a connection it gave up on before a request came.
REQUEST_TIMEOUT = 408


class Undelivered(FnProtocolError):
    """The call never reached the function: no connection to its listener could be made."""


class Dialer:
    """The connection to one container: dialed on demand, closed when idle, one call at a time."""

    def __init__(self, dial: Callable[[], Awaitable[HotConnection]], *, idle: float = DEFAULT_IDLE):
        self._dial = dial
        self.idle = idle
        self._conn: HotConnection | None = None
        self._busy = False
        self._closed = False
        self._idle_deadline = math.inf
        self._wake = trio.Event()
        self._sleeping_forever = False
        #: Connections made, for tests and statistics.
        self.dials = 0

    @property
    def connected(self) -> bool:
        return self._conn is not None

    async def connect(self) -> None:
        """Dial now (the container just became ready); the connection then idles as any."""
        self._conn = await self._open()
        self._park()

    async def run(self) -> None:
        """Close the connection once it has been idle for ``idle`` s. Run it in the
        container's nursery.

        The idle deadline only ever moves later while this task sleeps towards it,
        so a call never wakes it: it wakes at the deadline it knew, and sleeps on
        if the deadline moved (about once per ``idle`` seconds under steady calls).
        Only a deadline set while it sleeps without one wakes it.
        """
        while True:
            deadline = self._idle_deadline
            self._sleeping_forever = deadline == math.inf
            wake = self._wake = trio.Event()
            with trio.move_on_at(deadline):
                await wake.wait()
            self._sleeping_forever = False
            if not self._busy and trio.current_time() >= self._idle_deadline:
                self._idle_deadline = math.inf
                await self._drop()

    async def call(self, headers: Iterable[tuple[bytes, bytes]], body: bytes) -> HotResponse:
        """Send one call; see the module's reconnect rule. Raises :class:`FnProtocolError`
        (:class:`Undelivered` when no connection could be made)."""
        if self._busy:
            raise trio.BusyResourceError("a container carries one call at a time")
        if self._closed:
            raise Undelivered("the connection to the container is closed")
        request = list(headers)
        self._busy = True
        self._idle_deadline = math.inf
        ok = False
        try:
            conn = self._conn
            if conn is not None and conn.stale():
                await self._drop()
                conn = None
            if conn is not None:
                try:
                    response = await conn.call(request, body)
                    if response.status != REQUEST_TIMEOUT:
                        ok = True
                        return response
                except RequestNotSent:
                    pass
                await self._drop()  # dead before the call reached it: once more, anew
            self._conn = await self._open()
            try:
                response = await self._conn.call(request, body)
            except RequestNotSent as e:  # a fresh connection: the listener is not serving
                raise Undelivered(str(e)) from e
            ok = True
            return response
        finally:
            self._busy = False
            if ok:
                self._park()
            else:
                with trio.CancelScope(shield=True):
                    await self._drop()

    async def aclose(self) -> None:
        """Close the connection for good (the container is going away). Idempotent."""
        self._closed = True
        await self._drop()

    def _park(self) -> None:
        self._idle_deadline = trio.current_time() + self.idle
        if self._sleeping_forever:
            self._wake.set()

    async def _open(self) -> HotConnection:
        try:
            conn = await self._dial()
        except RequestNotSent as e:
            raise Undelivered(str(e)) from e
        except OSError as e:
            raise Undelivered(f"cannot connect: {e.strerror or e}") from e
        self.dials += 1
        return conn

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.aclose()
