"""The memory budget: reservations, FIFO waiters, a bounded queue, a wait
timeout, an async share and an eviction hook.

Every container holds a :class:`Reservation` of its function's memory for its
whole life; the reservation is an async context manager, so the memory comes
back on every exit path, cancellation included.

Who is granted what, and when, is kept by
:class:`~kiln.admission.ledger.MemoryLedger` (the admission, strict FIFO,
async-share and eviction rules are in :mod:`kiln.admission.ledger`'s
docstring); this module is the Trio-facing wait on it: the checkpoints, the
queue wait on Trio's clock, cancellation, and the rejections.

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
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import trio

from kiln.admission.ledger import MemoryLedger, Waiter
from kiln.admission.reservation import (
    EvictionCandidate,
    Evictor,
    MemoryStatistics,
    Reservation,
    WaiterInfo,
)
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

#: Retry-After (seconds) sent with ``queue_full``.
QUEUE_FULL_RETRY_AFTER = 1.0


class MemoryBudget(MemoryLedger):
    """A pool of ``capacity`` bytes that containers reserve from (see
    :mod:`kiln.admission.ledger` for the admission, FIFO, async-share and
    eviction rules, and this module's docstring for the rejections).

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
        super().__init__(
            capacity,
            queue_max=queue_max,
            async_fraction=async_fraction,
            evictor=evictor,
            clock=trio.current_time,
        )
        if not queue_wait >= 0:
            raise ValueError(f"queue_wait must be >= 0, got {queue_wait}")
        self._queue_wait = queue_wait

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

    # ------------------------------------------------------------------ the wait

    @asynccontextmanager
    async def _reserve(self, amount: int, owner: str, is_async: bool) -> AsyncIterator[Reservation]:
        reservation = await self._acquire(amount, owner, is_async)
        try:
            yield reservation
        finally:
            self._release(reservation)

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
        if self._queue_full():
            self._rejected_queue_full += 1
            raise Unavailable(
                f"{self._describe(amount, owner, is_async)}: the queue is full "
                f"({self._queue_max} waiting)",
                code="queue_full",
                retry_after=QUEUE_FULL_RETRY_AFTER,
            )
        now = trio.current_time()
        event = trio.Event()
        waiter = Waiter(amount, owner, is_async, arrival, now, event)
        self._enqueue(waiter)
        try:
            with trio.move_on_at(now + self._queue_wait):
                await event.wait()
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
