"""What a hot supervisor reports (``/status``, ``kiln show``, metrics): its containers
and its counters."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ContainerInfo:
    name: str
    id: str | None
    state: str
    age: float
    idle_for: float | None
    calls: int


@dataclass(frozen=True)
class SupervisorStatistics:
    function: str
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
    #: Seconds until the restart backoff lets min_warm containers start again (0: not held).
    restart_in: float = 0.0
