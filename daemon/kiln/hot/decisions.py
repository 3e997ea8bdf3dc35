"""What the hot scheduler decides: the decisions it hands its supervisor to carry out.

Plain values (no behaviour): :class:`~kiln.hot.scheduler.Scheduler` returns a
list of them from every event, and the supervisor applies each in order.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Refusal(enum.Enum):
    """Why a call gets no container."""

    CLOSED = "closed"  # the function is being removed or replaced
    QUEUE_FULL = "queue_full"  # queue_max calls already wait
    RETIRED = "retired"  # it waited, then the function was retired
    SHUTDOWN = "shutdown"  # it waited, then the supervisor stopped
    START_FAILED = "start_failed"  # it waited for a container that failed to start


@dataclass(frozen=True)
class Start:
    """Start container ``seq`` (reserve its memory, create, start, wait until ready)."""

    seq: int


@dataclass(frozen=True)
class Hand:
    """Give container ``seq`` to call ``waiter``; ``first`` if it never served a call."""

    seq: int
    waiter: int
    first: bool


@dataclass(frozen=True)
class Park:
    """Container ``seq`` is idle until ``deadline`` (then tell :meth:`~kiln.hot.scheduler.Scheduler.idle_expired`)."""

    seq: int
    deadline: float


@dataclass(frozen=True)
class Retire:
    """Stop and remove container ``seq`` (then tell :meth:`~kiln.hot.scheduler.Scheduler.container_removed`)."""

    seq: int
    reason: str


@dataclass(frozen=True)
class Refuse:
    """Call ``waiter`` gets no container."""

    waiter: int
    why: Refusal
    detail: str = ""


@dataclass(frozen=True)
class Emptied:
    """The last container is gone."""


@dataclass(frozen=True)
class WarmAt:
    """Starts kept for ``min_warm`` are held by the restart backoff until ``deadline``
    (then tell :meth:`~kiln.hot.scheduler.Scheduler.warm_due`)."""

    deadline: float
    failures: int


Decision = Start | Hand | Park | Retire | Refuse | Emptied | WarmAt
