"""The connection cap of one server: how many connections are open, which of them
may be evicted to make room and in which order, and when accepting must wait.

A connection is in one of three phases: *idle* (waiting for a request, not one
byte of it received), *reading* (receiving a request head or body) or *busy*
(its request is complete: the app is working on it or answering). At the cap,
a new connection evicts the one that has waited longest on its client: idle
first, then the oldest reading; busy ones are never evicted, and when every
connection is busy, accepting waits until one closes or becomes evictable.

Eviction is sticky (:attr:`Handle.evicted`): a connection whose head arrives
whole in the very read the eviction raced with still closes instead of being
served. Nothing here does I/O; waiting is on parking lots woken by the changes
themselves (no polling).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import trio
from trio.lowlevel import ParkingLot

from kiln.http.cycle import Cycle
from kiln.http.messages import Refusal

EVICTED = "too many connections: this slow one was closed to make room"


class Handle:
    """What the server may do to one connection from outside its task: evict it."""

    __slots__ = ("cycle", "evicted", "head_scope")

    def __init__(self) -> None:
        self.head_scope: trio.CancelScope | None = None  # waiting for a request head
        self.cycle: Cycle | None = None  # a request whose body is not read yet
        self.evicted = False

    def evict(self) -> None:
        self.evicted = True
        if self.head_scope is not None:
            self.head_scope.cancel()
        if self.cycle is not None:
            self.cycle.refuse(Refusal(503, "overloaded", EVICTED, linger=False))


class Capacity:
    __slots__ = (
        "_changed",
        "_closed",
        "_pending_accepts",
        "idle",
        "max_connections",
        "open",
        "reading",
    )

    def __init__(self, max_connections: int) -> None:
        self.max_connections = max_connections
        self.open = 0
        #: Idle connections, oldest first.
        self.idle: dict[Handle, bool] = {}
        #: Connections receiving a request head or body, oldest first.
        self.reading: dict[Handle, bool] = {}
        self._closed = ParkingLot()  # a connection closed
        self._changed = ParkingLot()  # a connection closed or became evictable
        self._pending_accepts: set[trio.CancelScope] = set()

    # ---------------------------------------------------------------- phases

    def idle_now(self, handle: Handle) -> None:
        self._set(handle, self.idle)

    def reading_now(self, handle: Handle) -> None:
        self._set(handle, self.reading)

    def busy_now(self, handle: Handle) -> None:
        self._set(handle, None)

    def _set(self, handle: Handle, group: dict[Handle, bool] | None) -> None:
        # (on every request: kept cheap, parking lots touched only when someone waits)
        left = self.idle.pop(handle, False) or self.reading.pop(handle, False)
        if group is not None:
            if not handle.evicted:
                group[handle] = True
                if self._changed:
                    self._changed.unpark_all()
        elif left and self._pending_accepts and self.full():
            for scope in self._pending_accepts:
                scope.cancel()  # nothing left to evict: stop accepting for now

    # ---------------------------------------------------------------- the cap

    def full(self) -> bool:
        """At the cap with every connection busy: accept nothing."""
        return self.open >= self.max_connections and not (self.idle or self.reading)

    def evict_one(self) -> bool:
        """Evict the connection that has waited longest on its client, idle first."""
        for group in (self.idle, self.reading):
            if group:
                handle = next(iter(group))
                del group[handle]
                handle.evict()
                return True
        return False

    def close_idle(self) -> None:
        """Evict every idle connection (the server shuts down)."""
        for handle in list(self.idle):
            handle.evict()

    def opened(self) -> Handle:
        """A connection was accepted: count it, making room at the cap."""
        if self.open >= self.max_connections:
            self.evict_one()
        self.open += 1
        return Handle()

    def closed(self, handle: Handle) -> None:
        self.busy_now(handle)
        self.open -= 1
        if self._closed:
            self._closed.unpark_all()
        if self._changed:
            self._changed.unpark_all()

    # ---------------------------------------------------------------- waiting

    async def wait_for_room(self) -> None:
        """Return once a connection may be accepted."""
        while self.full():
            await self._changed.park()

    @contextmanager
    def accepting(self) -> Iterator[trio.CancelScope]:
        """A cancel scope for one ``accept()``: cancelled if the server becomes full
        while it waits (so that it never accepts past the cap)."""
        with trio.CancelScope() as scope:
            self._pending_accepts.add(scope)
            try:
                yield scope
            finally:
                self._pending_accepts.discard(scope)

    async def wait_for_a_close(self) -> None:
        """Wait until a connection closes."""
        await self._closed.park()
