"""The async queue as the rest of the daemon sees it: accept, read, cancel.

:class:`AsyncQueue` owns the store (run off the event loop) and the clock,
and tells the dispatcher when something changed (:attr:`changed`): a new
call to run, or a finished one whose retention the purger must schedule.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import trio

from kiln.asyncq.clock import WallClock
from kiln.asyncq.records import CallRecord, NewCall, State, new_call_id
from kiln.asyncq.store import Accepted, QueueStats, Store
from kiln.asyncq.threaded import Observer, ThreadedStore
from kiln.config import Config

Change = Literal["accepted", "finished"]


def default_host(config: Config) -> str:
    return config.async_.host or f"{socket.gethostname()}/{config.daemon.id}"


def open_store(config: Config) -> Store:
    """The store ``[async] store`` names (blocking: call it before the event loop
    is busy, or from a thread). Raises :class:`~kiln.asyncq.store.StoreError`."""
    if config.async_.store == "sqlite":
        from kiln.asyncq.sqlite import SQLiteStore

        return SQLiteStore(f"{config.daemon.state_dir}/async.db")
    from kiln.asyncq.postgres import PostgresStore

    return PostgresStore(config.async_.store)


@dataclass
class Counters:
    """What happened to async calls in this daemon (the metrics read these)."""

    accepted: int = 0
    started: int = 0
    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    cancelled: int = 0
    #: The last figures read from the store (refreshed when the dispatcher goes idle).
    stats: QueueStats = field(default_factory=lambda: QueueStats(0, 0, None))


class AsyncQueue:
    def __init__(
        self,
        store: Store,
        *,
        host: str,
        queue_max: int,
        retention: float,
        dsn: str | None = None,
        clock: WallClock | None = None,
        observer: Observer | None = None,
    ) -> None:
        self.store = ThreadedStore(store, observer=observer)
        self.host = host
        self.queue_max = queue_max
        self.retention = retention
        #: The PostgreSQL URL when the store is shared (the dispatcher listens on it).
        self.dsn = dsn
        self.clock = clock or WallClock()
        self.counters = Counters()
        self.accepting = True
        self._listeners: list[Callable[[Change], None]] = []
        #: Readers waiting for a call to finish: its event and how many wait on it.
        self._waiters: dict[str, tuple[trio.Event, int]] = {}

    def on_change(self, fn: Callable[[Change], None]) -> None:
        """Call ``fn(kind)`` after every accept ("accepted") and cancel ("finished")."""
        self._listeners.append(fn)

    def changed(self, kind: Change) -> None:
        for fn in self._listeners:
            fn(kind)

    async def accept(
        self,
        function: str,
        body: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        idempotency_key: str | None,
    ) -> Accepted:
        """Record a call durably; returns once it is committed. Raises QueueFull, StoreError."""
        call = NewCall(
            id=new_call_id(),
            function=function,
            body=body,
            headers=tuple(headers),
            idempotency_key=idempotency_key,
            created=self.clock.now(),
        )
        accepted = await self.store.accept(call, queue_max=self.queue_max)
        if accepted.created:
            self.counters.accepted += 1
            self.changed("accepted")
        return accepted

    def finished(self, call_id: str) -> None:
        """A call finished (or was cancelled) here: wake the readers waiting on it."""
        entry = self._waiters.get(call_id)
        if entry is not None:
            entry[0].set()

    async def wait_finished(self, call_id: str) -> None:
        """Return when ``call_id`` finished here (a call another host runs is only
        seen by reading it again: callers bound this wait)."""
        event, n = self._waiters.get(call_id, (trio.Event(), 0))
        self._waiters[call_id] = (event, n + 1)
        try:
            await event.wait()
        finally:
            event, n = self._waiters[call_id]
            if n <= 1:
                del self._waiters[call_id]
            else:
                self._waiters[call_id] = (event, n - 1)

    async def get(self, call_id: str) -> CallRecord | None:
        return await self.store.get(call_id)

    async def find(
        self, *, function: str | None = None, state: State | None = None, limit: int = 100
    ) -> list[CallRecord]:
        return await self.store.find(function=function, state=state, limit=limit)

    async def cancel(self, call_id: str) -> CallRecord | None:
        record = await self.store.cancel(call_id, now=self.clock.now())
        if record is not None and record.state == "cancelled":
            self.counters.cancelled += 1
            self.finished(call_id)
            self.changed("finished")
        return record

    def status(self) -> dict[str, object]:
        """For ``GET /status``: the queue as last seen."""
        s = self.counters.stats
        c = self.counters
        return {
            "store": "postgresql" if self.store.shared else "sqlite",
            "host": self.host,
            "queued": s.queued,
            "running": s.running,
            "oldest_due_age": None
            if s.oldest_due is None
            else max(0.0, self.clock.now() - s.oldest_due),
            "accepted": c.accepted,
            "succeeded": c.succeeded,
            "failed": c.failed,
            "retried": c.retried,
        }
