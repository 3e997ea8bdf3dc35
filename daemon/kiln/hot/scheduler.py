"""The hot scheduler: which container serves which call, when one starts, when one goes.

Pure: no Trio, no I/O, no clock (the time comes in with the events that need
it). The :class:`~kiln.hot.supervisor.Supervisor` feeds it events and carries
out the decisions it returns; every state transition of a hot container is
made here and nowhere else.

One container's phases::

                 ready                    call arrived
    STARTING ─────────────▶ IDLE ─────────────────────▶ BUSY
       │                     ▲ │ ◀───────────────────── │
       │                     │ │       call done         │
       │ start failed        └─┘ idle expired,           │ call broke, or
       │                       │ kept for min_warm       │ retirement pending
       ▼                       ▼ idle expired, evicted,  ▼
    RETIRING ◀─────────────────  scaled down, retired ────
       │
       ▼ removed: forgotten

* **Herd control by arithmetic** (:func:`containers_to_start`): a container
  starts only while waiting calls outnumber idle + starting containers, never
  beyond ``max_containers``; ``min_warm`` are kept started ahead of calls.
* **LIFO reuse**: the most recently idle container serves the next call, so
  surplus containers reach their idle timeout and go.
* **FIFO hand-off**: a container that becomes free goes to the first waiting
  call; a call never waits while a container is idle.
* A retirement decided for a STARTING or BUSY container (the function is
  retired, the container died) is *pending*: it takes effect when the start
  ends or the call is done.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from kiln.hot.backoff import RestartBackoff
from kiln.hot.decisions import (
    Decision,
    Emptied,
    Hand,
    Park,
    Refusal,
    Refuse,
    Retire,
    Start,
    WarmAt,
)
from kiln.hot.report import Counts


def containers_to_start(
    *, waiting: int, idle: int, starting: int, total: int, max_containers: int, min_warm: int
) -> int:
    """How many containers to start now.

    ``total`` counts every live container (starting, idle, busy) of the function.
    No first-call lock: a thousand simultaneous first calls start at most
    ``max_containers`` containers, and never more than there are waiting calls.
    """
    room = max_containers - total
    if room <= 0:
        return 0
    for_calls = waiting - idle - starting
    for_warmth = min_warm - total
    return max(0, min(room, max(for_calls, for_warmth)))


def should_retire_idle(*, total: int, min_warm: int) -> bool:
    """An idle container reaching its idle timeout goes, unless that would drop below min_warm."""
    return total > min_warm


class Phase(enum.Enum):
    STARTING = "starting"
    IDLE = "idle"
    BUSY = "busy"
    RETIRING = "retiring"


# ---- the state machine ----------------------------------------------------------


@dataclass
class Slot:
    """One container as the scheduler sees it."""

    seq: int
    phase: Phase = Phase.STARTING
    idle_since: float = 0.0
    calls: int = 0
    pending: str | None = None  # a retirement waiting for the start or the call to end
    ready_at: float | None = None


class Scheduler:
    """The scheduling state of one hot function's containers and waiting calls."""

    def __init__(
        self, *, max_containers: int, min_warm: int, idle_timeout: float, queue_max: int
    ) -> None:
        self.max_containers = max_containers
        self.min_warm = min_warm
        self.idle_timeout = idle_timeout
        self.queue_max = queue_max
        self.running = False
        self.closed = False
        self._slots: dict[int, Slot] = {}
        self._idle: list[int] = []  # LIFO: the end is the most recently idle
        self._waiters: deque[int] = deque()
        self._next_seq = 1
        self._next_waiter = 1
        self._started_total = 0
        self._start_failures = 0
        self._evicted_total = 0
        self._calls_total = 0
        self.backoff = RestartBackoff()
        self._warm_at: float | None = None  # the WarmAt deadline last decided

    # ---- queries -------------------------------------------------------------

    def phase(self, seq: int) -> Phase | None:
        slot = self._slots.get(seq)
        return slot.phase if slot else None

    def idle(self) -> Sequence[int]:
        """Idle containers, the longest idle first."""
        return tuple(self._idle)

    def idle_since(self, seq: int) -> float:
        return self._slots[seq].idle_since

    def containers(self) -> Sequence[int]:
        return tuple(self._slots)

    def waiters(self) -> Sequence[int]:
        """Waiting calls, the first to be served first."""
        return tuple(self._waiters)

    @property
    def live(self) -> int:
        """Containers that are or will be serving (not retiring, no retirement pending)."""
        return sum(1 for s in self._slots.values() if self._is_live(s))

    @staticmethod
    def _is_live(s: Slot) -> bool:
        return s.phase is not Phase.RETIRING and s.pending is None

    def _count(self, phase: Phase) -> int:
        return sum(1 for s in self._slots.values() if s.phase is phase)

    def counts(self) -> Counts:
        return Counts(
            starting=self._count(Phase.STARTING),
            idle=len(self._idle),
            busy=self._count(Phase.BUSY),
            retiring=self._count(Phase.RETIRING),
            waiting=len(self._waiters),
            total=len(self._slots),
            started_total=self._started_total,
            start_failures=self._start_failures,
            evicted_total=self._evicted_total,
            calls_total=self._calls_total,
            consecutive_failures=self.backoff.failures,
            restart_held_until=self._warm_at,
        )

    def new_waiter(self) -> int:
        """An id for a call about to ask for a container."""
        w = self._next_waiter
        self._next_waiter += 1
        return w

    # ---- events --------------------------------------------------------------

    def open(self) -> list[Decision]:
        """The supervisor runs: start ``min_warm`` containers."""
        self.running = True
        return self._starts()

    def call_arrived(self, waiter: int) -> list[Decision]:
        """A call wants a container: an idle one now, else it waits (and maybe one starts)."""
        if self.closed:
            return [Refuse(waiter, Refusal.CLOSED)]
        if self._idle:
            return [self._hand(self._slots[self._idle.pop()], waiter)]
        if len(self._waiters) >= self.queue_max:
            return [Refuse(waiter, Refusal.QUEUE_FULL)]
        self._waiters.append(waiter)
        return self._starts()

    def waiter_left(self, waiter: int) -> None:
        """A waiting call gave up (timed out or cancelled) before it got anything."""
        if waiter in self._waiters:
            self._waiters.remove(waiter)

    def container_ready(self, seq: int, now: float) -> list[Decision]:
        slot = self._slots.get(seq)
        if slot is None or slot.phase is not Phase.STARTING:
            return []
        slot.ready_at = now
        self._started_total += 1
        if slot.pending is not None or self.closed:
            return [self._retire(slot, slot.pending or "function retired")]
        return [self._offer(slot, now)]

    def start_failed(self, seq: int, now: float | None = None) -> list[Decision]:
        """The container could not start (its removal follows: tell :meth:`container_removed`).

        With ``now``, it counts towards the restart backoff. Also told when a
        started container's life ended unexpectedly; it is then simply retiring
        (no decision: it is being removed already).
        """
        slot = self._slots.get(seq)
        if slot is None or slot.phase is Phase.RETIRING:
            return []
        if slot.phase is not Phase.STARTING:
            self._retire(slot, slot.pending or "its supervisor lost it")
            return []
        if now is not None:
            self.backoff.failed(now)
        self._start_failures += 1
        slot.phase = Phase.RETIRING
        if self._waiters:
            return [Refuse(self._waiters.popleft(), Refusal.START_FAILED)]
        return []

    def call_done(self, seq: int, now: float, broken: str | None) -> list[Decision]:
        """A call on ``seq`` ended; ``broken`` says why the container must go, if it must."""
        slot = self._slots.get(seq)
        if slot is None or slot.phase is not Phase.BUSY:
            return []
        if broken is None:
            self.backoff.reset()  # it served a call: healthy
            self._warm_at = None
        reason = broken or slot.pending or ("function retired" if self.closed else None)
        # live <= len(_slots): count only when a scale-down may have left surplus
        if (
            reason is None
            and len(self._slots) > self.max_containers
            and self.live > self.max_containers
        ):
            reason = f"scaled down to max_containers = {self.max_containers}"
        if reason is not None:
            return [self._retire(slot, reason), *self._starts()]
        return [self._offer(slot, now)]

    def container_died(self, seq: int, reason: str, now: float | None = None) -> list[Decision]:
        """The container exited on its own (or was killed from outside).

        With ``now``, a death soon after it became ready counts towards the
        restart backoff (one after a healthy period resets it)."""
        slot = self._slots.get(seq)
        if slot is None or slot.phase is Phase.RETIRING:
            return []
        if now is not None:
            self.backoff.died(slot.ready_at, now)
        if slot.phase is Phase.IDLE:
            return [self._retire(slot, reason)]
        if slot.pending is None:
            slot.pending = reason
        return self._starts()

    def idle_expired(self, seq: int, now: float) -> list[Decision]:
        """``seq``'s idle deadline passed: it goes, unless it is kept for min_warm."""
        slot = self._slots.get(seq)
        if slot is None or slot.phase is not Phase.IDLE:
            return []
        if should_retire_idle(total=self.live, min_warm=self.min_warm):
            return [self._retire(slot, f"idle for {self.idle_timeout:g} s")]
        slot.idle_since = now
        return [Park(seq, now + self.idle_timeout)]

    def evict(self, seq: int) -> list[Decision]:
        """Admission wants the memory of idle container ``seq`` for another function."""
        slot = self._slots.get(seq)
        if slot is None or slot.phase is not Phase.IDLE:
            return []
        self._evicted_total += 1
        return [self._retire(slot, "evicted to free memory for another function")]

    def rescale(self, min_warm: int, max_containers: int) -> list[Decision]:
        """New limits: retire idle surplus (the longest idle first), start what is missing."""
        self.min_warm = min_warm
        self.max_containers = max_containers
        surplus = max(0, self.live - max_containers)
        reason = f"scaled down to max_containers = {max_containers}"
        out: list[Decision] = [self._retire(self._slots[s], reason) for s in self._idle[:surplus]]
        return out + self._starts()

    def retire_all(self, reason: str) -> list[Decision]:
        """Retire every container: idle ones now, starting and busy ones when they are done.

        Waiting calls are refused: the function's replacement or removal takes over.
        """
        self.closed = True
        out: list[Decision] = []
        for slot in list(self._slots.values()):
            if slot.phase is Phase.IDLE:
                out.append(self._retire(slot, reason))
            elif slot.phase is not Phase.RETIRING and slot.pending is None:
                slot.pending = reason
        out.extend(self._refuse_all(Refusal.RETIRED, reason))
        return out

    def shutdown(self) -> list[Decision]:
        """The supervisor stops (its containers are being removed): refuse the waiters."""
        self.closed = True
        return self._refuse_all(Refusal.SHUTDOWN)

    def container_removed(self, seq: int, now: float | None = None) -> list[Decision]:
        """``seq`` is gone (on every path): forget it; maybe start a replacement."""
        slot = self._slots.pop(seq, None)
        if slot is None:
            return []
        if seq in self._idle:
            self._idle.remove(seq)
        out: list[Decision] = [Emptied()] if not self._slots else []
        return out + self._starts(now)

    def warm_due(self, now: float) -> list[Decision]:
        """The restart backoff's hold (a :class:`WarmAt`) is over: start what min_warm lacks."""
        self._warm_at = None
        return self._starts(now)

    # ---- transitions -----------------------------------------------------------

    def _hand(self, slot: Slot, waiter: int) -> Hand:
        first = slot.calls == 0
        slot.phase = Phase.BUSY
        slot.calls += 1
        self._calls_total += 1
        return Hand(slot.seq, waiter, first)

    def _offer(self, slot: Slot, now: float) -> Decision:
        """A container is free: the first waiting call gets it, else it parks idle."""
        if self._waiters:
            return self._hand(slot, self._waiters.popleft())
        slot.phase = Phase.IDLE
        slot.idle_since = now
        self._idle.append(slot.seq)
        return Park(slot.seq, now + self.idle_timeout)

    def _retire(self, slot: Slot, reason: str) -> Retire:
        if slot.seq in self._idle:
            self._idle.remove(slot.seq)
        slot.phase = Phase.RETIRING
        slot.pending = None
        return Retire(slot.seq, reason)

    def _refuse_all(self, why: Refusal, detail: str = "") -> list[Decision]:
        out: list[Decision] = [Refuse(w, why, detail) for w in self._waiters]
        self._waiters.clear()
        return out

    def _starts(self, now: float | None = None) -> list[Decision]:
        if not self.running or self.closed:
            return []
        starting = sum(
            1 for s in self._slots.values() if s.phase is Phase.STARTING and s.pending is None
        )
        held = self.backoff.held(now)
        n = containers_to_start(
            waiting=len(self._waiters),
            idle=len(self._idle),
            starting=starting,
            total=self.live,
            max_containers=self.max_containers,
            min_warm=0 if held else self.min_warm,
        )
        out: list[Decision] = []
        if held and self.min_warm > self.live + n and self.live + n < self.max_containers:
            deadline = self.backoff.hold_until
            if self._warm_at != deadline:
                self._warm_at = deadline
                out.append(WarmAt(deadline, self.backoff.failures))
        for _ in range(n):
            seq = self._next_seq
            self._next_seq += 1
            self._slots[seq] = Slot(seq)
            out.append(Start(seq))
        return out
