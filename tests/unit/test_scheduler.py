"""The hot scheduler, pure: the herd arithmetic and the state machine driven by hand."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from kiln.hot.decisions import Emptied, Hand, Park, Refusal, Refuse, Retire, Start
from kiln.hot.scheduler import Phase, Scheduler, containers_to_start, should_retire_idle


def start(**kw: int) -> int:
    args = {"waiting": 0, "idle": 0, "starting": 0, "total": 0, "max_containers": 10, "min_warm": 0}
    args.update(kw)
    return containers_to_start(**args)


def test_first_calls_start_one_each_up_to_max() -> None:
    assert start(waiting=1) == 1
    assert start(waiting=3) == 3
    assert start(waiting=1000) == 10


def test_idle_and_starting_containers_count_as_coming() -> None:
    assert start(waiting=3, idle=1, total=1) == 2
    assert start(waiting=3, starting=3, total=3) == 0
    assert start(waiting=5, starting=2, total=4) == 3


def test_never_beyond_max() -> None:
    assert start(waiting=50, total=10) == 0
    assert start(waiting=50, total=9, starting=1) == 1


def test_min_warm_prewarms_without_calls() -> None:
    assert start(min_warm=2) == 2
    assert start(min_warm=2, total=1, idle=1) == 1
    assert start(min_warm=2, total=2, idle=2) == 0


def test_retire_keeps_min_warm() -> None:
    assert should_retire_idle(total=3, min_warm=2)
    assert not should_retire_idle(total=2, min_warm=2)


@given(
    st.integers(0, 2000),
    st.integers(0, 20),
    st.integers(0, 20),
    st.integers(0, 20),
    st.integers(1, 20),
    st.integers(0, 20),
)
def test_invariants(
    waiting: int, idle: int, starting: int, busy: int, max_c: int, warm: int
) -> None:
    total = idle + starting + busy
    n = containers_to_start(
        waiting=waiting,
        idle=idle,
        starting=starting,
        total=total,
        max_containers=max_c,
        min_warm=min(warm, max_c),
    )
    assert n >= 0
    assert total + n <= max(total, max_c)  # never beyond max_containers
    # never more starting than the waiting calls need, unless keeping min_warm
    assert starting + n <= max(waiting - idle, starting, min(warm, max_c) - total + starting)


# ---- the state machine, driven by hand (no Trio, no clock) -------------------


def sched(**kw: float) -> Scheduler:
    args: dict[str, float] = {
        "max_containers": 2,
        "min_warm": 0,
        "idle_timeout": 30.0,
        "queue_max": 3,
    }
    args.update(kw)
    s = Scheduler(
        max_containers=int(args["max_containers"]),
        min_warm=int(args["min_warm"]),
        idle_timeout=args["idle_timeout"],
        queue_max=int(args["queue_max"]),
    )
    assert s.open() == [Start(i) for i in range(1, int(args["min_warm"]) + 1)]
    return s


def test_first_call_starts_one_and_gets_it_when_ready() -> None:
    s = sched()
    w = s.new_waiter()
    assert s.call_arrived(w) == [Start(1)]
    assert s.phase(1) is Phase.STARTING
    assert s.container_ready(1, now=5.0) == [Hand(1, w, first=True)]
    assert s.phase(1) is Phase.BUSY
    assert s.call_done(1, now=6.0, broken=None) == [Park(1, 36.0)]
    assert s.idle() == (1,)


def test_idle_container_served_lifo_without_waiting() -> None:
    s = sched()
    a, b = s.new_waiter(), s.new_waiter()
    s.call_arrived(a)
    s.call_arrived(b)
    s.container_ready(1, 1.0)
    s.container_ready(2, 2.0)
    s.call_done(1, now=3.0, broken=None)
    s.call_done(2, now=4.0, broken=None)
    c = s.new_waiter()
    assert s.call_arrived(c) == [Hand(2, c, first=False)]  # the most recently idle


def test_free_container_goes_to_first_waiter_fifo() -> None:
    s = sched(max_containers=1)
    a, b, c = s.new_waiter(), s.new_waiter(), s.new_waiter()
    assert s.call_arrived(a) == [Start(1)]
    assert s.call_arrived(b) == []  # max_containers reached: it waits
    assert s.call_arrived(c) == []
    s.container_ready(1, 1.0)
    assert s.call_done(1, 2.0, broken=None) == [Hand(1, b, first=False)]


def test_queue_full_and_closed_are_refused() -> None:
    s = sched(max_containers=1, queue_max=1)
    a, b = s.new_waiter(), s.new_waiter()
    s.call_arrived(a)
    assert s.call_arrived(b) == [Refuse(b, Refusal.QUEUE_FULL)]
    assert s.retire_all("removed") == [Refuse(a, Refusal.RETIRED, "removed")]
    c = s.new_waiter()
    assert s.call_arrived(c) == [Refuse(c, Refusal.CLOSED)]


def test_broken_call_retires_and_replaces_for_waiters() -> None:
    s = sched(max_containers=1)
    a, b = s.new_waiter(), s.new_waiter()
    s.call_arrived(a)
    s.call_arrived(b)
    s.container_ready(1, 1.0)
    assert s.call_done(1, 2.0, broken="call timed out") == [
        Retire(1, "call timed out"),
        Start(2),
    ]


def test_idle_expiry_retires_but_keeps_min_warm() -> None:
    s = sched(min_warm=1, max_containers=3)
    s.container_ready(1, 0.0)
    w = s.new_waiter()
    assert s.call_arrived(w) == [Hand(1, w, first=True)]
    s.new_waiter()
    w2 = s.new_waiter()
    assert s.call_arrived(w2) == [Start(2)]
    s.container_ready(2, 1.0)
    s.call_done(1, 2.0, broken=None)
    s.call_done(2, 3.0, broken=None)
    assert s.idle_expired(1, 32.0) == [Retire(1, "idle for 30 s")]
    assert s.idle_expired(2, 33.0) == [Park(2, 63.0)]  # the last one is kept warm


def test_start_failure_refuses_one_waiter_then_replacement_on_removal() -> None:
    s = sched(max_containers=1)
    a, b = s.new_waiter(), s.new_waiter()
    s.call_arrived(a)
    s.call_arrived(b)
    assert s.start_failed(1) == [Refuse(a, Refusal.START_FAILED)]
    assert s.container_removed(1) == [Emptied(), Start(2)]
    assert s.counts().start_failures == 1


def test_death_while_busy_retires_after_the_call() -> None:
    s = sched()
    w = s.new_waiter()
    s.call_arrived(w)
    s.container_ready(1, 0.0)
    assert s.container_died(1, "container exited (code 1)") == []
    assert s.phase(1) is Phase.BUSY
    assert s.call_done(1, 1.0, broken=None) == [Retire(1, "container exited (code 1)")]


def test_evict_only_idle() -> None:
    s = sched()
    w = s.new_waiter()
    s.call_arrived(w)
    assert s.evict(1) == []  # starting
    s.container_ready(1, 0.0)
    assert s.evict(1) == []  # busy
    s.call_done(1, 1.0, broken=None)
    assert s.evict(1) == [Retire(1, "evicted to free memory for another function")]
    assert s.counts().evicted_total == 1


def test_rescale_down_retires_oldest_idle_then_busy_surplus_after_its_call() -> None:
    s = sched(max_containers=3)
    ws = [s.new_waiter() for _ in range(3)]
    for w in ws:
        s.call_arrived(w)
    for seq in (1, 2, 3):
        s.container_ready(seq, float(seq))
    s.call_done(1, 10.0, broken=None)  # 1 idle, 2 and 3 busy
    assert s.rescale(0, 1) == [Retire(1, "scaled down to max_containers = 1")]
    assert s.live == 2
    assert s.call_done(2, 12.0, broken=None) == [Retire(2, "scaled down to max_containers = 1")]
    assert s.call_done(3, 13.0, broken=None) == [Park(3, 43.0)]
    assert s.live == 1


def test_retire_all_waits_for_starting_and_busy() -> None:
    s = sched()
    a, b = s.new_waiter(), s.new_waiter()
    s.call_arrived(a)
    s.call_arrived(b)
    s.container_ready(1, 0.0)  # busy with a; 2 still starting
    # the call still waiting for 2 is refused: the replacement takes it from here
    assert s.retire_all("replaced by a new spec") == [
        Refuse(b, Refusal.RETIRED, "replaced by a new spec")
    ]
    assert s.container_ready(2, 1.0) == [Retire(2, "replaced by a new spec")]
    assert s.call_done(1, 2.0, broken=None) == [Retire(1, "replaced by a new spec")]
    assert s.container_removed(1) == []
    assert s.container_removed(2) == [Emptied()]
