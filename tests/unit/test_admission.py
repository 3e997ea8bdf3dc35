"""admission.MemoryBudget on a MockClock: FIFO, bounds, timeouts, cancellation,
the async share and eviction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial

import pytest
import trio
import trio.testing

from kiln.admission.memory import EvictionCandidate, MemoryBudget, Reservation
from kiln.calls.errors import Unavailable
from kiln.units import GiB, MiB


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


@dataclass
class Holder:
    """A task that reserves memory and holds it until told to let go."""

    pool: MemoryBudget
    amount: int
    owner: str = "f"
    is_async: bool = False
    release: trio.Event = field(default_factory=trio.Event)
    reservation: Reservation | None = None
    granted_at: float | None = None
    error: Unavailable | None = None
    cancelled: bool = False
    done: bool = False

    async def run(self, log: list[Holder] | None = None) -> None:
        try:
            async with self.pool.reserve(
                self.amount, owner=self.owner, is_async=self.is_async
            ) as res:
                self.reservation = res
                self.granted_at = trio.current_time()
                if log is not None:
                    log.append(self)
                await self.release.wait()
        except Unavailable as exc:
            self.error = exc
        except trio.Cancelled:
            self.cancelled = True
            raise
        finally:
            self.done = True


async def start(nursery: trio.Nursery, h: Holder, log: list[Holder] | None = None) -> Holder:
    nursery.start_soon(h.run, log)
    await trio.testing.wait_all_tasks_blocked()
    return h


def granted(log: list[Holder]) -> list[str]:
    """Owners in the order the pool granted them (not the order tasks resumed)."""
    return [
        h.owner
        for h in sorted(log, key=lambda h: h.reservation.grant_number if h.reservation else 0)
    ]


def assert_idle(pool: MemoryBudget) -> None:
    s = pool.statistics()
    assert (s.reserved, s.reserved_async, s.reservations) == (0, 0, 0)
    assert (s.waiting, s.waiting_bytes, s.evicting_bytes) == (0, 0, 0)


# ------------------------------------------------------------------ basics


async def test_reserve_and_release(autojump_clock: trio.testing.MockClock) -> None:
    pool = MemoryBudget(1 * GiB)
    async with pool.reserve(256 * MiB, owner="f") as res:
        assert (res.amount, res.owner, res.is_async) == (256 * MiB, "f", False)
        s = pool.statistics()
        assert (s.reserved, s.reservations, s.granted_total) == (256 * MiB, 1, 1)
    assert res.released
    assert_idle(pool)


async def test_release_on_exception_in_body(autojump_clock: trio.testing.MockClock) -> None:
    pool = MemoryBudget(100)
    with pytest.raises(KeyError):
        async with pool.reserve(60, owner="f"):
            raise KeyError("boom")
    assert_idle(pool)


async def test_amount_above_capacity_rejected_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pool = MemoryBudget(1 * GiB)
    t0 = trio.current_time()
    with pytest.raises(Unavailable) as info:
        async with pool.reserve(2 * GiB, owner="big"):
            pass
    assert info.value.code == "no_memory"
    assert info.value.status == 503
    assert info.value.retry_after is None
    assert "needs 2 GiB" in info.value.message
    assert trio.current_time() == t0
    assert_idle(pool)


# ------------------------------------------------------------------ FIFO


async def test_fifo_with_mixed_sizes(autojump_clock: trio.testing.MockClock) -> None:
    pool = MemoryBudget(100)
    log: list[Holder] = []
    async with trio.open_nursery() as nursery:
        a = await start(nursery, Holder(pool, 50, "a"), log)
        big = await start(nursery, Holder(pool, 60, "big"), log)
        small = await start(nursery, Holder(pool, 10, "small"), log)  # would fit now
        mid = await start(nursery, Holder(pool, 30, "mid"), log)
        last = await start(nursery, Holder(pool, 50, "last"), log)
        # The small one does not overtake the big head.
        assert granted(log) == ["a"]
        assert pool.statistics().waiting == 4
        a.release.set()
        await trio.testing.wait_all_tasks_blocked()
        # One release grants exactly what fits, from the head: 60 + 10 + 30.
        assert granted(log) == ["a", "big", "small", "mid"]
        assert pool.statistics().reserved == 100
        assert last.reservation is None
        big.release.set()
        await trio.testing.wait_all_tasks_blocked()
        assert granted(log) == ["a", "big", "small", "mid", "last"]
        for h in (small, mid, last):
            h.release.set()
    assert [h.reservation.grant_number for h in (a, big, small, mid, last) if h.reservation] == [
        1,
        2,
        3,
        4,
        5,
    ]
    assert_idle(pool)


async def test_release_wakes_only_satisfiable(autojump_clock: trio.testing.MockClock) -> None:
    pool = MemoryBudget(100)
    async with trio.open_nursery() as nursery:
        a = await start(nursery, Holder(pool, 100, "a"))
        w1 = await start(nursery, Holder(pool, 40, "w1"))
        w2 = await start(nursery, Holder(pool, 70, "w2"))
        a.release.set()
        await trio.testing.wait_all_tasks_blocked()
        assert w1.reservation is not None
        assert w2.reservation is None
        s = pool.statistics()
        assert (s.reserved, s.waiting, s.waiting_bytes) == (40, 1, 70)
        w1.release.set()
        await trio.testing.wait_all_tasks_blocked()
        assert w2.reservation is not None
        w2.release.set()
    assert_idle(pool)


# ------------------------------------------------------------------ bounds and timeouts


async def test_queue_full_rejected_at_once(autojump_clock: trio.testing.MockClock) -> None:
    pool = MemoryBudget(100, queue_max=2)
    async with trio.open_nursery() as nursery:
        a = await start(nursery, Holder(pool, 100))
        w = [await start(nursery, Holder(pool, 10)) for _ in range(2)]
        t0 = trio.current_time()
        with pytest.raises(Unavailable) as info:
            async with pool.reserve(10, owner="late"):
                pass
        assert trio.current_time() == t0
        assert info.value.code == "queue_full"
        assert info.value.retry_after == 1.0
        assert "2 calls waiting" in info.value.message
        assert pool.statistics().rejected_queue_full == 1
        a.release.set()
        await trio.testing.wait_all_tasks_blocked()
        for h in w:
            assert h.reservation is not None
            h.release.set()
    assert_idle(pool)


async def test_queue_wait_timeout_is_exact(autojump_clock: trio.testing.MockClock) -> None:
    pool = MemoryBudget(4 * GiB, queue_wait=10.0)
    async with trio.open_nursery() as nursery:
        holders = [await start(nursery, Holder(pool, 512 * MiB)) for _ in range(7)]
        await trio.sleep(3.7)
        t0 = trio.current_time()
        with pytest.raises(Unavailable) as info:
            async with pool.reserve(1 * GiB, owner="fn"):
                pass
        assert trio.current_time() == t0 + 10.0
        assert info.value.code == "no_memory"
        assert info.value.retry_after == 10.0
        assert info.value.message.startswith(
            "'fn' needs 1 GiB; 3.5 GiB of 4 GiB reserved by 7 containers"
        )
        assert pool.statistics().rejected_timeout == 1
        for h in holders:
            h.release.set()
    assert_idle(pool)


async def test_timeout_of_head_lets_the_next_in(autojump_clock: trio.testing.MockClock) -> None:
    pool = MemoryBudget(100, queue_wait=5.0)
    async with trio.open_nursery() as nursery:
        a = await start(nursery, Holder(pool, 50))
        big = await start(nursery, Holder(pool, 80, "big"))
        await trio.sleep(1.0)
        small = await start(nursery, Holder(pool, 20, "small"))
        t0 = trio.current_time()
        await trio.sleep(10)
        assert big.error is not None
        assert small.granted_at == t0 + 4.0  # the instant the big head gave up
        a.release.set()
        small.release.set()
    assert_idle(pool)


# ------------------------------------------------------------------ cancellation


async def test_cancel_while_waiting(autojump_clock: trio.testing.MockClock) -> None:
    pool = MemoryBudget(100)
    async with trio.open_nursery() as nursery:
        a = await start(nursery, Holder(pool, 50))
        victim = Holder(pool, 80, "victim")
        scope = trio.CancelScope()

        async def run_victim() -> None:
            with scope:
                await victim.run()

        nursery.start_soon(run_victim)
        await trio.testing.wait_all_tasks_blocked()
        behind = await start(nursery, Holder(pool, 30, "behind"))
        assert behind.reservation is None
        scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert victim.cancelled
        assert victim.reservation is None
        assert behind.reservation is not None  # granted when the head left
        s = pool.statistics()
        assert (s.reserved, s.waiting) == (80, 0)
        a.release.set()
        behind.release.set()
    assert_idle(pool)


async def test_cancel_while_holding(autojump_clock: trio.testing.MockClock) -> None:
    pool = MemoryBudget(100)
    with trio.move_on_after(5):
        async with pool.reserve(70, owner="f"):
            assert pool.statistics().reserved == 70
            await trio.sleep_forever()
    assert_idle(pool)


async def test_outer_cancel_of_all_waiters(autojump_clock: trio.testing.MockClock) -> None:
    pool = MemoryBudget(100)
    async with trio.open_nursery() as nursery:
        # One at a time, largest first (Trio runs tasks started together in either
        # order): 49 + 48 fit, 47 waits at the head, and so does everyone after it.
        for i in reversed(range(20)):
            await start(nursery, Holder(pool, 30 + i))
        assert pool.statistics().reservations == 2
        assert pool.statistics().waiting == 18
        nursery.cancel_scope.cancel()
    assert_idle(pool)


# ------------------------------------------------------------------ async share


async def test_async_cap_blocked_waiter_does_not_block_sync(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pool = MemoryBudget(100, async_fraction=0.5)
    log: list[Holder] = []
    async with trio.open_nursery() as nursery:
        a1 = await start(nursery, Holder(pool, 40, "a1", is_async=True), log)
        a2 = await start(nursery, Holder(pool, 20, "a2", is_async=True), log)  # over the share
        s1 = await start(nursery, Holder(pool, 30, "s1"), log)  # passes a2
        a3 = await start(nursery, Holder(pool, 5, "a3", is_async=True), log)  # behind a2
        assert granted(log) == ["a1", "s1"]
        st = pool.statistics()
        assert (st.reserved, st.reserved_async, st.async_capacity, st.waiting) == (70, 40, 50, 2)
        a1.release.set()
        await trio.testing.wait_all_tasks_blocked()
        assert granted(log) == ["a1", "s1", "a2", "a3"]
        for h in (a2, s1, a3):
            h.release.set()
    assert_idle(pool)


async def test_eligible_async_head_short_of_memory_blocks_sync_behind(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pool = MemoryBudget(100, async_fraction=0.5)
    log: list[Holder] = []
    async with trio.open_nursery() as nursery:
        s0 = await start(nursery, Holder(pool, 90, "s0"), log)
        a1 = await start(nursery, Holder(pool, 20, "a1", is_async=True), log)
        s1 = await start(nursery, Holder(pool, 5, "s1"), log)  # would fit, but FIFO
        assert granted(log) == ["s0"]
        s0.release.set()
        await trio.testing.wait_all_tasks_blocked()
        assert granted(log) == ["s0", "a1", "s1"]
        a1.release.set()
        s1.release.set()
    assert_idle(pool)


async def test_async_above_share_rejected_at_once(autojump_clock: trio.testing.MockClock) -> None:
    pool = MemoryBudget(100, async_fraction=0.5)
    with pytest.raises(Unavailable) as info:
        async with pool.reserve(60, owner="f", is_async=True):
            pass
    assert info.value.code == "no_memory"
    assert "async share" in info.value.message
    async with pool.reserve(60, owner="f"):  # fine as a sync call
        pass
    assert_idle(pool)


# ------------------------------------------------------------------ eviction


class FakeEvictor:
    """Idle containers are Holders; evict() removes one after ``removal_delay``."""

    def __init__(self, nursery: trio.Nursery, removal_delay: float = 2.0) -> None:
        self.nursery = nursery
        self.removal_delay = removal_delay
        self.idle: list[tuple[Holder, float]] = []
        self.asked: list[str] = []
        self.evicted: list[str] = []

    def candidates(self, exclude_owner: str) -> Sequence[EvictionCandidate]:
        self.asked.append(exclude_owner)
        # Deliberately includes the waiter's own function: the pool must skip it.
        return [
            EvictionCandidate(h.reservation, since, partial(self._evict, h))
            for h, since in self.idle
            if h.reservation is not None and not h.done
        ]

    def _evict(self, h: Holder) -> None:
        self.evicted.append(h.owner)
        self.nursery.start_soon(self._remove, h)

    async def _remove(self, h: Holder) -> None:
        await trio.sleep(self.removal_delay)  # container removal takes a while
        h.release.set()


async def idle_containers(
    nursery: trio.Nursery, pool: MemoryBudget, ev: FakeEvictor, spec: list[tuple[str, int, float]]
) -> list[Holder]:
    out = []
    for owner, amount, idle_since in spec:
        h = await start(nursery, Holder(pool, amount, owner))
        ev.idle.append((h, idle_since))
        out.append(h)
    return out


async def test_evicts_oldest_idle_first_just_enough(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        ev = FakeEvictor(nursery)
        pool = MemoryBudget(100, evictor=ev)
        idle = await idle_containers(
            nursery, pool, ev, [("f1", 30, 5.0), ("f2", 30, 1.0), ("f3", 30, 3.0)]
        )
        t0 = trio.current_time()
        g = await start(nursery, Holder(pool, 40, "g"))
        # free 10, short 30: the oldest idle (f2, 30) covers it; nothing else goes.
        assert ev.evicted == ["f2"]
        assert pool.statistics().evicting_bytes == 30
        await trio.sleep(5)
        assert g.granted_at == t0 + ev.removal_delay  # granted by the release
        assert ev.evicted == ["f2"]
        assert pool.statistics().evicting_bytes == 0
        for h in (*idle, g):
            h.release.set()
    assert_idle(pool)


async def test_picks_several_oldest_until_covered(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        ev = FakeEvictor(nursery)
        pool = MemoryBudget(100, evictor=ev)
        idle = await idle_containers(
            nursery,
            pool,
            ev,
            [("f1", 20, 5.0), ("f2", 20, 1.0), ("f3", 20, 3.0), ("f4", 20, 4.0), ("f5", 20, 9.0)],
        )
        g = await start(nursery, Holder(pool, 50, "g"))
        assert ev.evicted == ["f2", "f3", "f4"]  # 60 >= 50, oldest first
        await trio.sleep(5)
        assert g.reservation is not None
        for h in (*idle, g):
            h.release.set()
    assert_idle(pool)


async def test_never_evicts_the_waiters_own_function(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        ev = FakeEvictor(nursery)
        pool = MemoryBudget(100, evictor=ev)
        idle = await idle_containers(
            nursery, pool, ev, [("g", 40, 0.0), ("f1", 30, 5.0), ("f2", 30, 3.0)]
        )
        g = await start(nursery, Holder(pool, 30, "g"))
        assert ev.asked == ["g"]
        assert ev.evicted == ["f2"]  # g's own idle container (oldest) is left alone
        await trio.sleep(5)
        assert g.reservation is not None
        for h in (*idle, g):
            h.release.set()
    assert_idle(pool)


async def test_evicts_nothing_if_it_cannot_cover(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        ev = FakeEvictor(nursery)
        pool = MemoryBudget(100, evictor=ev, queue_wait=3.0)
        idle = await idle_containers(
            nursery, pool, ev, [("g", 40, 0.0), ("f1", 20, 5.0), ("f2", 20, 3.0)]
        )
        busy = await start(nursery, Holder(pool, 20, "busy"))  # not idle: no candidate
        g = await start(nursery, Holder(pool, 70, "g"))
        # short 70; the other functions' idle containers hold only 40.
        assert ev.asked == ["g"]
        assert ev.evicted == []
        await trio.sleep(5)
        assert g.error is not None
        assert g.error.code == "no_memory"
        for h in (*idle, busy):
            h.release.set()
    assert_idle(pool)


async def test_next_waiter_does_not_evict_twice(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        ev = FakeEvictor(nursery)
        pool = MemoryBudget(100, evictor=ev)
        idle = await idle_containers(nursery, pool, ev, [("f1", 50, 1.0), ("f2", 50, 2.0)])
        g1 = await start(nursery, Holder(pool, 50, "g1"))
        g2 = await start(nursery, Holder(pool, 50, "g2"))
        assert ev.evicted == ["f1"]  # only the head asks
        assert pool.statistics().evicting_bytes == 50
        # The head stays short until f1 is gone; re-examining it (on g2's
        # arrival) evicted nothing more.
        await trio.sleep(ev.removal_delay)
        await trio.testing.wait_all_tasks_blocked()
        assert g1.reservation is not None
        # Now g2 is the head and short: the pool asks again and evicts f2.
        assert ev.evicted == ["f1", "f2"]
        await trio.sleep(ev.removal_delay)
        await trio.testing.wait_all_tasks_blocked()
        assert g2.reservation is not None
        for h in (*idle, g1, g2):
            h.release.set()
    assert_idle(pool)


async def test_eviction_covers_for_the_next_head_when_head_leaves(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        ev = FakeEvictor(nursery)
        pool = MemoryBudget(100, evictor=ev)
        idle = await idle_containers(nursery, pool, ev, [("f1", 60, 1.0), ("f2", 40, 2.0)])
        scope = trio.CancelScope()
        head = Holder(pool, 60, "g1")

        async def run_head() -> None:
            with scope:
                await head.run()

        nursery.start_soon(run_head)
        await trio.testing.wait_all_tasks_blocked()
        assert ev.evicted == ["f1"]
        nxt = await start(nursery, Holder(pool, 50, "g2"))
        scope.cancel()  # the head leaves; 60 bytes are already on their way back
        await trio.testing.wait_all_tasks_blocked()
        assert ev.evicted == ["f1"]  # 60 being evicted covers g2's shortfall of 50
        await trio.sleep(ev.removal_delay)
        await trio.testing.wait_all_tasks_blocked()
        assert nxt.reservation is not None
        for h in (*idle, nxt):
            h.release.set()
    assert_idle(pool)
