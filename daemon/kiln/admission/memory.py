"""The memory budget: reservations, FIFO waiters, a bounded queue, a wait
timeout, an async share and an eviction hook.

Every container holds a :class:`Reservation` of its function's memory for its
whole life; the reservation is an async context manager, so the memory comes
back on every exit path, cancellation included.

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

*Rejections* (all :class:`~kiln.errors.Unavailable`, HTTP 503):

===================  ============  ==============================================
condition            ``code``      ``retry_after``
===================  ============  ==============================================
``amount`` above     no_memory     ``None`` (retrying cannot help). The config
capacity (or above                 loader rejects such functions up front; this
the async share for                check is the last line of defence.
an async call)
``queue_max``        queue_full    :data:`QUEUE_FULL_RETRY_AFTER` (1 s): the queue
waiters already                    turns over quickly once memory is released.
waited               no_memory     ``queue_wait`` (at least 1 s): memory was
``queue_wait`` s                   short for that long, so ask the client to back
                                   off for as long as it already waited.
===================  ============  ==============================================

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
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

import trio

from kiln.calls.errors import Unavailable
from kiln.units import format_size

__all__ = [
    "QUEUE_FULL_RETRY_AFTER",
    "EvictionCandidate",
    "Evictor",
    "MemoryBudget",
    "MemoryStatistics",
    "Reservation",
    "WaiterInfo",
]

log = logging.getLogger(__name__)

#: Retry-After (seconds) sent with ``queue_full``.
QUEUE_FULL_RETRY_AFTER = 1.0


class Reservation:
    """Memory held for one container. Made only by :meth:`MemoryBudget.reserve`.

    ``arrival`` numbers requests in the order they reached the pool and
    ``grant_number`` in the order they were granted (both per pool).
    """

    __slots__ = (
        "_evicting",
        "_pool",
        "_released",
        "amount",
        "arrival",
        "grant_number",
        "granted_at",
        "is_async",
        "owner",
    )

    def __init__(
        self,
        pool: MemoryBudget,
        amount: int,
        owner: str,
        is_async: bool,
        arrival: int,
        grant_number: int,
        granted_at: float,
    ) -> None:
        self._pool = pool
        self.amount = amount
        self.owner = owner
        self.is_async = is_async
        self.arrival = arrival
        self.grant_number = grant_number
        self.granted_at = granted_at
        self._released = False
        self._evicting = False

    @property
    def released(self) -> bool:
        return self._released

    @property
    def evicting(self) -> bool:
        """Whether the pool asked for this reservation's container to be evicted."""
        return self._evicting

    def __repr__(self) -> str:
        return (
            f"<Reservation {self.owner!r} {format_size(self.amount)}"
            f"{' async' if self.is_async else ''}{' released' if self._released else ''}>"
        )


@dataclass(frozen=True)
class EvictionCandidate:
    """An idle container that could be evicted to free memory.

    ``reservation`` is the container's memory reservation (it gives ``owner``
    and ``amount``, and lets the pool tell when the evicted memory is back);
    ``idle_since`` is ``trio.current_time()`` when it went idle; ``evict`` asks
    the container's task to remove it. ``evict`` must not block; it should not
    raise (if it does, the error is logged and the candidate is not counted).
    """

    reservation: Reservation
    idle_since: float
    evict: Callable[[], None]

    @property
    def owner(self) -> str:
        return self.reservation.owner

    @property
    def amount(self) -> int:
        return self.reservation.amount


class Evictor(Protocol):
    """What the pool asks for idle containers (implemented by the supervisors)."""

    def candidates(self, exclude_owner: str) -> Sequence[EvictionCandidate]:
        """Idle containers of functions other than ``exclude_owner``. Must not block."""
        ...


@dataclass(frozen=True)
class MemoryStatistics:
    """Snapshot of a :class:`MemoryBudget` (for ``/status``, metrics and tests)."""

    capacity: int
    reserved: int
    reserved_async: int
    reservations: int
    waiting: int
    waiting_bytes: int
    evicting_bytes: int
    granted_total: int
    rejected_queue_full: int
    rejected_timeout: int
    async_capacity: int
    evictions_requested: int


@dataclass(frozen=True)
class WaiterInfo:
    """One queued request, for the status page."""

    owner: str
    amount: int
    is_async: bool
    arrival: int
    since: float


class _Waiter:
    __slots__ = ("amount", "arrival", "event", "is_async", "owner", "reservation", "since")

    def __init__(self, amount: int, owner: str, is_async: bool, arrival: int, since: float):
        self.amount = amount
        self.owner = owner
        self.is_async = is_async
        self.arrival = arrival
        self.since = since
        self.event = trio.Event()
        self.reservation: Reservation | None = None  # set when granted


class MemoryBudget:
    """A pool of ``capacity`` bytes that containers reserve from (see the
    module docstring for the admission, FIFO, async-share and eviction rules).

    ``queue_max`` bounds the number of waiters; ``queue_wait`` is how long a
    waiter waits (virtual seconds on Trio's clock) before giving up;
    ``async_fraction`` is the share of ``capacity`` that ``is_async``
    reservations may hold together. The pool owns no task.
    """

    def __init__(
        self,
        capacity: int,
        *,
        queue_max: int = 100,
        queue_wait: float = 10.0,
        async_fraction: float = 0.5,
        evictor: Evictor | None = None,
    ) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        if queue_max < 0:
            raise ValueError(f"queue_max must be >= 0, got {queue_max}")
        if not queue_wait >= 0:
            raise ValueError(f"queue_wait must be >= 0, got {queue_wait}")
        if not 0 <= async_fraction <= 1:
            raise ValueError(f"async_fraction must be in [0, 1], got {async_fraction}")
        self._capacity = capacity
        self._queue_max = queue_max
        self._queue_wait = queue_wait
        self._async_capacity = math.floor(async_fraction * capacity)
        self.evictor = evictor
        self._sync_q: deque[_Waiter] = deque()
        self._async_q: deque[_Waiter] = deque()
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

    # ------------------------------------------------------------------ public

    @property
    def capacity(self) -> int:
        return self._capacity

    def reserve(
        self, amount: int, *, owner: str, is_async: bool = False
    ) -> AbstractAsyncContextManager[Reservation]:
        """Wait for ``amount`` bytes, hold them for the body, release them on exit.

        ``owner`` is the function name (eviction never picks the waiter's own
        function; messages name it). Raises :class:`~kiln.errors.Unavailable`
        at once when ``amount`` can never fit (``no_memory``) or the queue is
        full (``queue_full``), and after ``queue_wait`` seconds of waiting
        (``no_memory``, with ``retry_after``).

        Cancellation: while waiting, the waiter leaves the queue having taken
        nothing (if memory was assigned to it in the same instant, it is handed
        straight back), and the waiters behind it are re-examined. While the body
        runs, the memory is released when the body exits, however it exits.
        Entering is a checkpoint.
        """
        if amount < 0:
            raise ValueError(f"amount must be >= 0, got {amount}")
        return self._reserve(amount, owner, is_async)

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

    # ------------------------------------------------------------------ internals

    @asynccontextmanager
    async def _reserve(self, amount: int, owner: str, is_async: bool) -> AsyncIterator[Reservation]:
        reservation = await self._acquire(amount, owner, is_async)
        try:
            yield reservation
        finally:
            self._release(reservation)

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

    def _cap_blocked(self, w: _Waiter) -> bool:
        return w.is_async and self._reserved_async + w.amount > self._async_capacity

    def _head(self) -> _Waiter | None:
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
            self, amount, owner, is_async, arrival, self._granted_total, trio.current_time()
        )
        self._on_grant(res)
        return res

    def _on_grant(self, reservation: Reservation) -> None:
        """Called after every grant with the pool's counters already updated.

        A no-op; subclasses (tests, instrumentation) override it to observe
        grants. Must not block or raise.
        """

    async def _acquire(self, amount: int, owner: str, is_async: bool) -> Reservation:
        await trio.lowlevel.checkpoint_if_cancelled()
        limit = self._async_capacity if is_async else self._capacity
        if amount > limit:
            what = "the async share" if is_async else "the pool"
            raise Unavailable(
                f"{self._describe(amount, owner, is_async)}: more than {what} "
                f"({format_size(limit)}) can ever hold",
                code="no_memory",
            )
        arrival = next(self._arrivals)
        if self._admissible_now(amount, is_async):
            res = self._make_reservation(amount, owner, is_async, arrival)
            try:
                await trio.lowlevel.cancel_shielded_checkpoint()
            except BaseException:  # pragma: no cover - a shielded checkpoint only fails on KI
                self._release(res)
                raise
            return res
        if len(self._sync_q) + len(self._async_q) >= self._queue_max:
            self._rejected_queue_full += 1
            raise Unavailable(
                f"{self._describe(amount, owner, is_async)}: the queue is full "
                f"({self._queue_max} waiting)",
                code="queue_full",
                retry_after=QUEUE_FULL_RETRY_AFTER,
            )
        now = trio.current_time()
        waiter = _Waiter(amount, owner, is_async, arrival, now)
        (self._async_q if is_async else self._sync_q).append(waiter)
        self._waiting_bytes += amount
        self._grant()  # cannot grant the newcomer, but it may be a new head to evict for
        try:
            with trio.move_on_at(now + self._queue_wait):
                await waiter.event.wait()
        except BaseException:
            self._abandon(waiter)
            raise
        if waiter.reservation is not None:
            # Granted (possibly in the same instant the deadline expired: the
            # grant wins, the memory is ours).
            return waiter.reservation
        self._abandon(waiter)
        self._rejected_timeout += 1
        raise Unavailable(
            f"{self._describe(amount, owner, is_async)}: no memory after waiting "
            f"{self._queue_wait:g} s",
            code="no_memory",
            retry_after=max(1.0, self._queue_wait),
        )

    def _abandon(self, waiter: _Waiter) -> None:
        """The waiter's task leaves (timeout or cancellation)."""
        if waiter.reservation is not None:
            self._release(waiter.reservation)  # assigned but never used: hand it back
            return
        (self._async_q if waiter.is_async else self._sync_q).remove(waiter)
        self._waiting_bytes -= waiter.amount
        self._grant()  # the head may have changed

    def candidates_changed(self) -> None:
        """An idle container just appeared somewhere: a waiter short of memory may
        now be able to evict it. (The evictor calls this; cheap when nobody waits.)"""
        self._grant()

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

    def _maybe_evict(self, head: _Waiter) -> None:
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
