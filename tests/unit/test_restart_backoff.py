"""Restart backoff of a crash-looping ``min_warm`` function: the pure rule, the
scheduler's decisions, and the supervisor on the fake engine in virtual time."""

from __future__ import annotations

import math

import trio
import trio.testing

from kiln.hot.backoff import BACKOFF_CAP, HEALTHY_PERIOD, RestartBackoff
from kiln.hot.decisions import Emptied, Start, WarmAt
from kiln.hot.scheduler import Scheduler
from tests.harness import functions, stack


def test_backoff_doubles_to_its_cap_and_resets_when_healthy() -> None:
    b = RestartBackoff()
    holds = [b.failed(now=100.0) - 100.0 for _ in range(9)]
    assert holds == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert b.held(100.0)
    assert not b.held(160.0)
    assert b.died(ready_at=0.0, now=HEALTHY_PERIOD) is False  # lived long enough: healthy
    assert b.failures == 0
    assert not b.held(None)
    assert b.died(ready_at=10.0, now=11.0) is True  # died a second after ready
    assert b.failures == 1
    for _ in range(10_000):
        b.failed(0.0)
    assert b.delay() == BACKOFF_CAP


def test_scheduler_holds_warm_starts_but_not_calls() -> None:
    s = Scheduler(max_containers=5, min_warm=1, idle_timeout=30, queue_max=10)
    assert s.open() == [Start(1)]
    assert s.start_failed(1, now=10.0) == []
    # the replacement is held: a WarmAt, no Start
    assert s.container_removed(1, now=10.0) == [Emptied(), WarmAt(11.0, 1)]
    assert s.counts().consecutive_failures == 1
    assert s.counts().restart_held_until == 11.0
    # a call arriving meanwhile still gets a container started for it
    w = s.new_waiter()
    assert s.call_arrived(w) == [Start(2)]
    assert s.start_failed(2, now=10.5) != []  # the call is refused with the start's error
    assert s.container_removed(2, now=10.5) == [Emptied(), WarmAt(12.5, 2)]
    # when the hold is over, min_warm is started again
    assert s.warm_due(12.5) == [Start(3)]
    assert s.container_ready(3, now=13.0) != []
    # a container that serves a call proves the function healthy
    w = s.new_waiter()
    s.call_arrived(w)
    s.call_done(3, now=14.0, broken=None)
    assert s.counts().consecutive_failures == 0
    assert s.counts().restart_held_until is None


def test_a_death_soon_after_ready_counts_one_after_a_healthy_life_does_not() -> None:
    s = Scheduler(max_containers=5, min_warm=1, idle_timeout=math.inf, queue_max=10)
    s.open()
    s.container_ready(1, now=0.0)
    s.container_died(1, "container exited (code 1)", now=1.0)
    assert s.counts().consecutive_failures == 1
    assert s.container_removed(1, now=1.0) == [Emptied(), WarmAt(2.0, 1)]
    assert s.warm_due(2.0) == [Start(2)]
    s.container_ready(2, now=2.5)
    s.container_died(2, "container exited (code 1)", now=2.5 + HEALTHY_PERIOD)
    assert s.counts().consecutive_failures == 0
    assert s.container_removed(2, now=2.5 + HEALTHY_PERIOD) == [Emptied(), Start(3)]


FNS = functions(
    crashy={
        "image": "fnimage",
        "cmd": ["hot_exits"],
        "format": "http-stream",
        "memory": "64MiB",
        "min_warm": 1,
    }
)


async def test_crash_looping_min_warm_function_backs_off(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with stack(FNS) as s:
        await trio.sleep(20)
        # without backoff: a restart per failed start, hundreds in 20 s
        assert s.fake.created_total <= 6  # starts at 0, 1, 3, 7, 15 s (+ start time)
        stats = s.supervisors.get("crashy")
        assert stats is not None
        st = stats.statistics()
        assert st.consecutive_failures >= 4
        assert 0 < st.restart_in <= BACKOFF_CAP
        created = s.fake.created_total
        await trio.sleep(600)  # at the cap: one start a minute
        assert s.fake.created_total - created <= 600 / 30
        info = s.operations.function_info("crashy")
        assert info["stats"]["consecutive_failures"] >= 4
        status = await s.operations.status()
        assert status["restart_backoff"]["crashy"]["consecutive_failures"] >= 4
        text = s.metrics.render().decode()
        assert 'kiln_hot_consecutive_start_failures{function="crashy"}' in text
        assert 'kiln_hot_restart_backoff_seconds{function="crashy"}' in text
