"""Property test for the hot scheduler: random sequences of events (calls arriving
and leaving, containers becoming ready, failing, dying, idling out, evicted,
rescaled, retired), driven the way the supervisor drives it, must keep its
promises:

* never more live containers than ``max_containers`` (a scale-down only ever
  shrinks the count; nothing starts above the limit);
* never one container handed to two calls, never a call handed two containers;
* never a call waiting while a container is idle, and never a waiting call with
  nothing on its way to serve it;
* below ``min_warm``, a start is always due (a removal under way, or the
  restart backoff's hold ending);
* after ``retire_all``, driving every container to its end leaves none, every
  call answered, and the supervisor told it is empty.

Pure: no Trio, no clock, so hypothesis explores thousands of sequences a second.
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from kiln.hot.backoff import BACKOFF_CAP
from kiln.hot.decisions import Decision, Emptied, Hand, Park, Refuse, Retire, Start, WarmAt
from kiln.hot.scheduler import Phase, Scheduler


class SchedulerMachine(RuleBasedStateMachine):
    """Plays the supervisor: applies every decision and checks it was allowed."""

    def __init__(self) -> None:
        super().__init__()
        self.s = Scheduler(max_containers=1, min_warm=0, idle_timeout=30.0, queue_max=4)
        self.now = 0.0
        self.starting: set[int] = set()  # Start decided, neither ready nor failed yet
        self.busy: dict[int, int] = {}  # container → the call it serves
        self.idle: dict[int, float] = {}  # container → its idle deadline
        self.removing: set[int] = set()  # retired or failed: removal due
        self.alive: set[int] = set()  # started and not yet removed
        self.waiting: set[int] = set()
        self.served: set[int] = set()  # calls that got a container
        self.answered: set[int] = set()  # calls served, refused or gone
        self.arrived: set[int] = set()
        self.emptied = 0
        self.warm_at: float | None = None  # the restart backoff's hold on warm starts

    # ---- the supervisor's side ------------------------------------------------

    def apply(self, decisions: list[Decision]) -> None:
        live_before = self.s.live
        for d in decisions:
            if isinstance(d, Start):
                assert d.seq not in self.alive
                self.alive.add(d.seq)
                self.starting.add(d.seq)
            elif isinstance(d, Hand):
                assert d.seq in self.alive
                assert d.seq not in self.removing
                assert d.seq not in self.busy, "one container handed to two calls"
                assert d.waiter in self.waiting, "a call handed a container twice"
                self.idle.pop(d.seq, None)
                self.waiting.discard(d.waiter)
                self.busy[d.seq] = d.waiter
                self.served.add(d.waiter)
                self.answered.add(d.waiter)
            elif isinstance(d, Park):
                assert d.seq in self.alive
                assert d.seq not in self.busy
                assert d.deadline == self.now + self.s.idle_timeout
                self.idle[d.seq] = d.deadline
            elif isinstance(d, Retire):
                assert d.seq in self.alive
                assert d.seq not in self.removing
                assert d.seq not in self.busy, "retired in the middle of a call"
                self.idle.pop(d.seq, None)
                self.starting.discard(d.seq)
                self.removing.add(d.seq)
            elif isinstance(d, Refuse):
                assert d.waiter in self.waiting
                self.waiting.discard(d.waiter)
                self.answered.add(d.waiter)
            elif isinstance(d, Emptied):
                assert not self.alive
                self.emptied += 1
            elif isinstance(d, WarmAt):
                # events without a time (rescale, call arrived) may name a hold that is
                # already over: the supervisor's timer then fires at once
                assert d.deadline <= self.now + BACKOFF_CAP
                self.warm_at = d.deadline
        if any(isinstance(d, Start) for d in decisions):
            assert self.s.live <= max(self.s.max_containers, live_before)
            assert self.s.live <= self.s.max_containers

    @initialize(
        max_containers=st.integers(1, 4),
        min_warm=st.integers(0, 4),
        queue_max=st.integers(0, 6),
    )
    def setup(self, max_containers: int, min_warm: int, queue_max: int) -> None:
        self.s = Scheduler(
            max_containers=max_containers,
            min_warm=min(min_warm, max_containers),
            idle_timeout=30.0,
            queue_max=queue_max,
        )
        self.apply(self.s.open())

    # ---- events ------------------------------------------------------------------

    @rule()
    def call_arrives(self) -> None:
        w = self.s.new_waiter()
        self.arrived.add(w)
        self.waiting.add(w)
        self.apply(self.s.call_arrived(w))

    @precondition(lambda self: self.waiting)
    @rule(data=st.data())
    def call_leaves(self, data: st.DataObject) -> None:
        w = data.draw(st.sampled_from(sorted(self.waiting)))
        self.s.waiter_left(w)
        self.waiting.discard(w)
        self.answered.add(w)

    @precondition(lambda self: self.starting)
    @rule(data=st.data())
    def ready(self, data: st.DataObject) -> None:
        seq = data.draw(st.sampled_from(sorted(self.starting)))
        self.starting.discard(seq)
        self.apply(self.s.container_ready(seq, self.now))

    @precondition(lambda self: self.starting)
    @rule(data=st.data())
    def start_fails(self, data: st.DataObject) -> None:
        seq = data.draw(st.sampled_from(sorted(self.starting)))
        self.starting.discard(seq)
        self.apply(self.s.start_failed(seq, self.now))
        self.removing.add(seq)  # the supervisor removes what failed to start

    @precondition(lambda self: self.busy)
    @rule(data=st.data(), broken=st.booleans())
    def call_done(self, data: st.DataObject, broken: bool) -> None:
        seq = data.draw(st.sampled_from(sorted(self.busy)))
        del self.busy[seq]
        self.apply(self.s.call_done(seq, self.now, "call timed out" if broken else None))

    @precondition(lambda self: self.alive - self.removing)
    @rule(data=st.data())
    def dies(self, data: st.DataObject) -> None:
        seq = data.draw(st.sampled_from(sorted(self.alive - self.removing)))
        self.apply(self.s.container_died(seq, "container exited (code 1)", self.now))

    @precondition(lambda self: self.idle)
    @rule(data=st.data())
    def idle_expires(self, data: st.DataObject) -> None:
        seq = data.draw(st.sampled_from(sorted(self.idle)))
        self.now = max(self.now, self.idle[seq])
        del self.idle[seq]  # the supervisor disarms it; only a new Park re-arms
        self.apply(self.s.idle_expired(seq, self.now))

    @precondition(lambda self: self.idle)
    @rule(data=st.data())
    def evicted(self, data: st.DataObject) -> None:
        seq = data.draw(st.sampled_from(sorted(self.idle)))
        self.apply(self.s.evict(seq))

    @rule(max_containers=st.integers(1, 4), min_warm=st.integers(0, 4))
    def rescale(self, max_containers: int, min_warm: int) -> None:
        self.apply(self.s.rescale(min(min_warm, max_containers), max_containers))

    @precondition(lambda self: self.removing)
    @rule(data=st.data())
    def removed(self, data: st.DataObject) -> None:
        seq = data.draw(st.sampled_from(sorted(self.removing)))
        self.removing.discard(seq)
        self.alive.discard(seq)
        self.apply(self.s.container_removed(seq, self.now))

    @precondition(lambda self: self.warm_at is not None)
    @rule()
    def warm_due(self) -> None:
        assert self.warm_at is not None
        self.now = max(self.now, self.warm_at)
        self.warm_at = None
        self.apply(self.s.warm_due(self.now))

    @rule(dt=st.floats(0, 60))
    def time_passes(self, dt: float) -> None:
        self.now += dt

    @precondition(lambda self: not self.s.closed)
    @rule()
    def retire_all(self) -> None:
        self.apply(self.s.retire_all("removed"))

    # ---- what must always hold -----------------------------------------------------

    @invariant()
    def no_call_waits_while_a_container_is_idle(self) -> None:
        assert not (self.s.waiters() and self.s.idle())
        assert not (self.waiting and self.idle)

    @invariant()
    def a_waiting_call_has_a_container_on_its_way(self) -> None:
        if self.s.closed or not self.s.waiters():
            return
        on_the_way = self.starting | set(self.busy) | self.removing
        assert on_the_way, "a call waits and nothing will ever serve it"

    @invariant()
    def min_warm_is_kept_or_restored(self) -> None:
        """Below min_warm, a start is due: after a removal under way, or when the
        restart backoff's hold ends."""
        if self.s.closed:
            return
        if self.s.live < min(self.s.min_warm, self.s.max_containers):
            assert self.removing or self.warm_at is not None, "min_warm silently abandoned"

    @invariant()
    def supervisor_and_scheduler_agree(self) -> None:
        assert set(self.s.waiters()) == self.waiting
        assert set(self.s.containers()) == self.alive
        assert set(self.s.idle()) == set(self.idle)
        for seq in self.busy:
            assert self.s.phase(seq) is Phase.BUSY
        for seq in self.idle:
            assert self.s.phase(seq) is Phase.IDLE
        for seq in self.removing:
            assert self.s.phase(seq) is Phase.RETIRING
        counts = self.s.counts()
        assert counts.busy == len(self.busy)
        assert counts.total == len(self.alive)

    @invariant()
    def never_beyond_max_containers_by_starting(self) -> None:
        assert self.s.live <= max(self.s.max_containers, len(self.alive))

    def teardown(self) -> None:
        """Retire, then let every container run to its end: none may be left."""
        had_containers = bool(self.alive)
        emptied_before = self.emptied
        self.apply(self.s.retire_all("removed"))
        assert not self.waiting
        for _ in range(100):
            if not self.alive:
                break
            for seq in sorted(self.starting):
                self.starting.discard(seq)
                self.apply(self.s.container_ready(seq, self.now))
            for seq in sorted(self.busy):
                del self.busy[seq]
                self.apply(self.s.call_done(seq, self.now, None))
            assert not self.idle, "an idle container outlived retire_all"
            for seq in sorted(self.removing):
                self.removing.discard(seq)
                self.alive.discard(seq)
                self.apply(self.s.container_removed(seq, self.now))
        assert not self.alive
        assert self.s.containers() == ()
        assert self.answered == self.arrived
        if had_containers:
            assert self.emptied == emptied_before + 1


SchedulerMachine.TestCase.settings = settings(
    max_examples=200, stateful_step_count=50, deadline=None
)
test_scheduler_state_machine = SchedulerMachine.TestCase
