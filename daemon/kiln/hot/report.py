"""What the hot side hands out: a call's :class:`HotResult`, and what a hot
supervisor reports (``/status``, ``kiln show``, metrics): its containers, its
counters and the scheduler's :class:`Counts` they are made from (both
:class:`ContainerCounts`)."""

from __future__ import annotations

from dataclasses import dataclass

from kiln.calls.errors import CallError


@dataclass(frozen=True)
class ContainerInfo:
    name: str
    id: str | None
    state: str
    age: float
    idle_for: float | None
    calls: int


@dataclass(frozen=True, kw_only=True)
class ContainerCounts:
    """A function's containers in each state, and its running totals."""

    starting: int
    idle: int
    busy: int
    retiring: int
    waiting: int
    total: int
    started_total: int
    start_failures: int
    evicted_total: int
    calls_total: int
    #: Failed starts (or deaths soon after ready) in a row; 0 when healthy.
    consecutive_failures: int = 0


@dataclass(frozen=True, kw_only=True)
class Counts(ContainerCounts):
    """The scheduler's counts (:meth:`~kiln.hot.scheduler.Scheduler.counts`)."""

    #: While the restart backoff holds min_warm starts: until when (Trio's clock).
    restart_held_until: float | None = None


@dataclass(frozen=True, kw_only=True)
class SupervisorStatistics(ContainerCounts):
    """What a supervisor reports: its scheduler's counts, as of now."""

    function: str
    #: Seconds until the restart backoff lets min_warm containers start again (0: not held).
    restart_in: float = 0.0


@dataclass
class HotResult:
    """A call's answer, or its ``error``; timed either way."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    cold: bool
    queue: float
    start: float
    run: float
    error: CallError | None = None
