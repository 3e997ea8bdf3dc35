"""Restart backoff for a hot function whose containers keep failing.

A ``min_warm`` function whose command exits at once would otherwise be
restarted as fast as Docker allows. Pure arithmetic on times handed in:

* a *failure* is a container that failed to start, or died within
  :data:`HEALTHY_PERIOD` of becoming ready;
* after ``n`` failures in a row, containers kept warm (``min_warm``) are not
  started again before ``first · 2^(n-1)`` seconds, capped at ``cap``;
* the count resets when a container proves healthy: it serves a call, or it
  lived :data:`HEALTHY_PERIOD` before dying.

Starts for waiting calls are not held: each such call gets its own answer
(the start's error), so calls never wait on a timer they cannot see.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

BACKOFF_FIRST = 1.0
BACKOFF_CAP = 60.0
HEALTHY_PERIOD = 30.0


@dataclass
class RestartBackoff:
    first: float = BACKOFF_FIRST
    cap: float = BACKOFF_CAP
    healthy_period: float = HEALTHY_PERIOD
    failures: int = 0
    hold_until: float = -math.inf

    def failed(self, now: float) -> float:
        """Count a failure at ``now``; the time before which warm starts wait."""
        self.failures += 1
        self.hold_until = now + self.delay()
        return self.hold_until

    def delay(self) -> float:
        """The hold after the current run of failures (0 with none)."""
        if self.failures == 0:
            return 0.0
        return min(self.first * 2.0 ** min(self.failures - 1, 30), self.cap)

    def died(self, ready_at: float | None, now: float) -> bool:
        """A container died at ``now`` (ready since ``ready_at``); True if it counts as a failure."""
        if ready_at is not None and now - ready_at >= self.healthy_period:
            self.reset()
            return False
        self.failed(now)
        return True

    def reset(self) -> None:
        self.failures = 0
        self.hold_until = -math.inf

    def held(self, now: float | None) -> bool:
        """Whether warm starts must wait at ``now`` (unknown time: while any failure counts)."""
        if now is None:
            return self.failures > 0 and self.hold_until > -math.inf
        return now < self.hold_until
