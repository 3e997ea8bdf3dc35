"""Property test for MemoryBudget: random interleavings of reserve / release /
cancel / timeout from many tasks, each example its own ``trio.run`` on a
MockClock (hypothesis drives Trio's scheduler deterministically)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import trio
import trio.testing
from hypothesis import event, given, settings
from hypothesis import strategies as st

from kiln.admission.memory import MemoryBudget, Reservation
from kiln.calls.errors import Unavailable

CAPACITY = 100


@dataclass(frozen=True)
class Request:
    start: float  # when the task calls reserve()
    amount: int
    is_async: bool
    hold: float  # how long it holds the memory once granted
    cancel_after: float | None  # outer cancel scope, from start (waiting or holding)


half_seconds = st.integers(min_value=0, max_value=16).map(lambda n: n / 2)

requests = st.builds(
    Request,
    start=half_seconds,
    # Mostly sizes that fit but contend; sometimes too big (for the pool or
    # for the async share).
    amount=st.integers(min_value=1, max_value=60)
    | st.integers(min_value=0, max_value=CAPACITY + 10),
    is_async=st.booleans(),
    hold=half_seconds,
    cancel_after=st.none() | half_seconds,
)


class CheckedPool(MemoryBudget):
    """Checks the invariants at every grant, with the pool's counters updated."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(CAPACITY, **kwargs)  # type: ignore[arg-type]
        self.grants: list[Reservation] = []

    def _on_grant(self, reservation: Reservation) -> None:
        s = self.statistics()
        assert 0 <= s.reserved <= s.capacity
        assert 0 <= s.reserved_async <= s.async_capacity
        async_before = s.reserved_async - (reservation.amount if reservation.is_async else 0)
        waiting = self.waiters()
        async_head = next((w for w in waiting if w.is_async), None)
        for w in waiting:
            if w.arrival > reservation.arrival:
                continue
            # Only earlier *async* waiters may be passed, only by a sync
            # request, and only while the async queue's head is blocked by the
            # async share (those behind it wait their turn behind it).
            assert w.is_async, (w, reservation)
            assert not reservation.is_async, (w, reservation)
            assert async_head is not None
            assert async_before + async_head.amount > s.async_capacity, (w, reservation)
        self.grants.append(reservation)


@settings(max_examples=200, deadline=None)
@given(
    reqs=st.lists(requests, min_size=2, max_size=25),
    queue_max=st.integers(min_value=0, max_value=8),
    queue_wait=st.integers(min_value=1, max_value=8).map(float),
    async_fraction=st.sampled_from([0.3, 0.5, 0.5, 1.0, 0.0]),
)
def test_pool_invariants(
    reqs: list[Request], queue_max: int, queue_wait: float, async_fraction: float
) -> None:
    pool = CheckedPool(queue_max=queue_max, queue_wait=queue_wait, async_fraction=async_fraction)
    outcomes: list[str] = []

    async def one(req: Request) -> None:
        await trio.sleep(req.start)
        timeout = req.cancel_after if req.cancel_after is not None else math.inf
        error: Unavailable | None = None
        with trio.move_on_after(timeout) as scope:
            t0 = trio.current_time()
            try:
                async with pool.reserve(req.amount, owner="f", is_async=req.is_async) as res:
                    assert res.amount == req.amount
                    assert pool.statistics().reserved <= CAPACITY
                    waited = trio.current_time() > t0
                    outcomes.append("granted after waiting" if waited else "granted at once")
                    await trio.sleep(req.hold)
            except Unavailable as exc:
                error = exc
        if error is not None:
            elapsed = trio.current_time() - t0
            if error.code == "queue_full":
                assert elapsed == 0
                assert error.retry_after == 1.0
                outcomes.append("queue_full")
            elif elapsed == 0:
                assert error.code == "no_memory"
                assert req.amount > (pool.statistics().async_capacity if req.is_async else CAPACITY)
                outcomes.append("too big")
            else:
                # Gave up after exactly queue_wait virtual seconds.
                assert trio.current_time() == t0 + queue_wait
                assert error.code == "no_memory"
                assert error.retry_after == queue_wait
                outcomes.append("timeout")
        if scope.cancelled_caught:
            outcomes.append("cancelled")

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for req in reqs:
                nursery.start_soon(one, req)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))

    s = pool.statistics()
    assert (s.reserved, s.reserved_async, s.reservations) == (0, 0, 0)
    assert (s.waiting, s.waiting_bytes, s.evicting_bytes) == (0, 0, 0)
    assert s.granted_total == len(pool.grants)
    assert all(r.released for r in pool.grants)
    # FIFO among sync requests: grant order = arrival order.
    sync_arrivals = [r.arrival for r in pool.grants if not r.is_async]
    assert sync_arrivals == sorted(sync_arrivals)
    async_arrivals = [r.arrival for r in pool.grants if r.is_async]
    assert async_arrivals == sorted(async_arrivals)
    assert s.rejected_queue_full == outcomes.count("queue_full")
    assert s.rejected_timeout == outcomes.count("timeout")
    for outcome in set(outcomes):
        event(outcome)
