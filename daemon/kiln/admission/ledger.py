"""The memory budget's books, without any waiting: what is reserved, who waits
in which queue, who is served next, and which idle containers to evict.

:class:`~kiln.admission.memory.MemoryBudget` is this plus the Trio-facing
wait (checkpoints, the queue wait, the rejections). Nothing here blocks or
awaits: a grant assigns the memory to the waiter and sets its event; the time
a reservation is granted at comes from the ``clock`` given.

Rules
-----

*Admission.* A request for ``amount`` bytes is granted when it is the first
eligible waiter (see below) and ``amount <= capacity - reserved``. A release
grants from the head while the head fits: the releaser assigns the memory to
each granted waiter and sets that waiter's own event, so exactly the waiters
that can now run are woken — no herd, no re-check loop, no sleeping.

*Strict FIFO.* A big waiter at the head is never overtaken by smaller ones
behind it, even if they would fit: they wait behind it.

*Async share.* Reservations made with ``is_async=True`` may together hold at
most ``floor(async_fraction * capacity)`` bytes, so synchronous callers always
have room. Waiters are kept in two FIFO queues (sync, async) stamped with a
common arrival number. The async head is *eligible* unless granting it would
exceed the async share ("cap-blocked"); the sync head is always eligible. The
next waiter served is the eligible one that arrived first. So: an async waiter
blocked only by the async share does not hold up sync waiters behind it, but
it does hold up async waiters behind it (FIFO within the async queue); an
eligible waiter blocked by memory holds up everyone who arrived after it.

*Eviction.* When the first eligible waiter (the head) is short of memory and
an :class:`Evictor` is set, the pool asks it for idle containers of *other*
functions, takes them oldest idle first until the memory already being evicted
plus the picked amounts cover the shortfall, and evicts them only if they do
(otherwise nothing). ``evict()`` is a request: the container's own task removes
it later, and its memory comes back through the normal release of its
reservation, which then grants the head. Memory being evicted is counted, so
neither this waiter nor the next evicts more than needed. The pool asks again
whenever it re-examines a head that is still short (new head, a release, a
waiter leaving).
"""

from __future__ import annotations

import itertools
import logging
import math
from collections import deque
from collections.abc import Callable
from typing import Protocol

from kiln.admission.reservation import (
    EvictionCandidate,
    Evictor,
    MemoryStatistics,
    Reservation,
    WaiterInfo,
)
from kiln.units import format_size

log = logging.getLogger("kiln.admission.memory")


class Event(Protocol):
    """What wakes a waiter (a :class:`trio.Event`)."""

    def set(self) -> None: ...


class Waiter:
    __slots__ = ("amount", "arrival", "event", "is_async", "owner", "reservation", "since")

    def __init__(
        self, amount: int, owner: str, is_async: bool, arrival: int, since: float, event: Event
    ):
        self.amount = amount
        self.owner = owner
        self.is_async = is_async
        self.arrival = arrival
        self.since = since
        self.event = event
        self.reservation: Reservation | None = None  # set when granted


class MemoryLedger:
    """The books of a pool of ``capacity`` bytes (see the module docstring for
    the admission, FIFO, async-share and eviction rules).

    ``queue_max`` bounds the number of waiters; ``async_fraction`` is the share
    of ``capacity`` that ``is_async`` reservations may hold together; ``clock``
    gives the time of a grant.
    """

    def __init__(
        self,
        capacity: int,
        *,
        queue_max: int,
        async_fraction: float,
        evictor: Evictor | None,
        clock: Callable[[], float],
    ) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        if queue_max < 0:
            raise ValueError(f"queue_max must be >= 0, got {queue_max}")
        if not 0 <= async_fraction <= 1:
            raise ValueError(f"async_fraction must be in [0, 1], got {async_fraction}")
        self._capacity = capacity
        self._queue_max = queue_max
        self._async_capacity = math.floor(async_fraction * capacity)
        self._clock = clock
        self.evictor = evictor
        self._sync_q: deque[Waiter] = deque()
        self._async_q: deque[Waiter] = deque()
        self._arrivals = itertools.count()
        self._reserved = 0
        self._reserved_async = 0
        self._reservations = 0
        self._waiting_bytes = 0
        self._evicting_bytes = 0
        self._granted_total = 0
        self._rejected_queue_full = 0
        self._rejected_timeout = 0
        self._evictions_requested = 0

    @property
    def capacity(self) -> int:
        return self._capacity

    def statistics(self) -> MemoryStatistics:
        return MemoryStatistics(
            capacity=self._capacity,
            reserved=self._reserved,
            reserved_async=self._reserved_async,
            reservations=self._reservations,
            waiting=len(self._sync_q) + len(self._async_q),
            waiting_bytes=self._waiting_bytes,
            evicting_bytes=self._evicting_bytes,
            granted_total=self._granted_total,
            rejected_queue_full=self._rejected_queue_full,
            rejected_timeout=self._rejected_timeout,
            async_capacity=self._async_capacity,
            evictions_requested=self._evictions_requested,
        )

    def waiters(self) -> list[WaiterInfo]:
        """The queued requests in arrival order."""
        merged = sorted(itertools.chain(self._sync_q, self._async_q), key=lambda w: w.arrival)
        return [WaiterInfo(w.owner, w.amount, w.is_async, w.arrival, w.since) for w in merged]

    def candidates_changed(self) -> None:
        """An idle container just appeared somewhere: a waiter short of memory may
        now be able to evict it. (The evictor calls this; cheap when nobody waits.)"""
        self._grant()

    # ------------------------------------------------------------------ the books

    def _describe(self, amount: int, owner: str, is_async: bool) -> str:
        waiting = len(self._sync_q) + len(self._async_q)
        text = (
            f"{owner!r} needs {format_size(amount)}; {format_size(self._reserved)} of "
            f"{format_size(self._capacity)} reserved by {self._reservations} "
            f"container{'s' if self._reservations != 1 else ''}, "
            f"{waiting} call{'s' if waiting != 1 else ''} waiting"
        )
        if is_async:
            text += (
                f"; async calls hold {format_size(self._reserved_async)} of their "
                f"{format_size(self._async_capacity)} share"
            )
        return text

    def _free(self) -> int:
        return self._capacity - self._reserved

    def _cap_blocked(self, w: Waiter) -> bool:
        return w.is_async and self._reserved_async + w.amount > self._async_capacity

    def _head(self) -> Waiter | None:
        """The first eligible waiter (see the module docstring)."""
        s = self._sync_q[0] if self._sync_q else None
        a = self._async_q[0] if self._async_q else None
        if a is not None and self._cap_blocked(a):
            a = None
        if s is None:
            return a
        if a is None:
            return s
        return s if s.arrival < a.arrival else a

    def _admissible_now(self, amount: int, is_async: bool) -> bool:
        """Would a new request be granted at once (no eligible waiter ahead, fits)?"""
        if self._sync_q or amount > self._free():
            return False
        if is_async:
            return not self._async_q and self._reserved_async + amount <= self._async_capacity
        return not self._async_q or self._cap_blocked(self._async_q[0])

    def _make_reservation(
        self, amount: int, owner: str, is_async: bool, arrival: int
    ) -> Reservation:
        self._reserved += amount
        if is_async:
            self._reserved_async += amount
        self._reservations += 1
        self._granted_total += 1
        res = Reservation(
            self, amount, owner, is_async, arrival, self._granted_total, self._clock()
        )
        self._on_grant(res)
        return res

    def _on_grant(self, reservation: Reservation) -> None:
        """Called after every grant with the pool's counters already updated.

        A no-op; subclasses (tests, instrumentation) override it to observe
        grants. Must not block or raise.
        """

    def _queue_full(self) -> bool:
        return len(self._sync_q) + len(self._async_q) >= self._queue_max

    def _enqueue(self, waiter: Waiter) -> None:
        (self._async_q if waiter.is_async else self._sync_q).append(waiter)
        self._waiting_bytes += waiter.amount
        self._grant()  # cannot grant the newcomer, but it may be a new head to evict for

    def _abandon(self, waiter: Waiter) -> None:
        """The waiter's task leaves (timeout or cancellation)."""
        if waiter.reservation is not None:
            self._release(waiter.reservation)  # assigned but never used: hand it back
            return
        (self._async_q if waiter.is_async else self._sync_q).remove(waiter)
        self._waiting_bytes -= waiter.amount
        self._grant()  # the head may have changed

    def _release(self, reservation: Reservation) -> None:
        if reservation._released:
            return
        reservation._released = True
        self._reserved -= reservation.amount
        if reservation.is_async:
            self._reserved_async -= reservation.amount
        self._reservations -= 1
        if reservation._evicting:
            self._evicting_bytes -= reservation.amount
        self._grant()

    def _grant(self) -> None:
        """Grant from the head while the head fits; then evict for a short head."""
        while True:
            head = self._head()
            if head is None:
                return
            if head.amount > self._free():
                self._maybe_evict(head)
                return
            (self._async_q if head.is_async else self._sync_q).popleft()
            self._waiting_bytes -= head.amount
            head.reservation = self._make_reservation(
                head.amount, head.owner, head.is_async, head.arrival
            )
            head.event.set()

    def _maybe_evict(self, head: Waiter) -> None:
        if self.evictor is None:
            return
        need = head.amount - self._free() - self._evicting_bytes
        if need <= 0:
            return  # evictions already under way cover it
        candidates = [
            c
            for c in self.evictor.candidates(exclude_owner=head.owner)
            if c.owner != head.owner
            and c.reservation._pool is self
            and not c.reservation._released
            and not c.reservation._evicting
        ]
        candidates.sort(key=lambda c: c.idle_since)
        picked: list[EvictionCandidate] = []
        total = 0
        for c in candidates:
            if total >= need:
                break
            picked.append(c)
            total += c.amount
        if total < need:
            return  # evicting would not cover the shortfall: evict nothing
        for c in picked:
            try:
                c.evict()
            except Exception:
                log.exception("evicting an idle container of %r failed", c.owner)
                continue
            c.reservation._evicting = True
            self._evicting_bytes += c.amount
            self._evictions_requested += 1
