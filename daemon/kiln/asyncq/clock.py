"""Wall-clock time from Trio's clock.

The store keeps epoch seconds (they outlive the process and are shared
between hosts); the daemon's timers run on Trio's clock. A :class:`WallClock`
reads the wall clock once, at construction, and from then on advances with
Trio's clock, so deadlines are plain Trio deadlines and a ``MockClock`` drives
everything in tests.
"""

from __future__ import annotations

import math
import time

import trio


class WallClock:
    def __init__(self, wall_at_start: float | None = None) -> None:
        self._wall0 = time.time() if wall_at_start is None else wall_at_start
        self._trio0 = trio.current_time()

    def now(self) -> float:
        """Epoch seconds now."""
        return self._wall0 + (trio.current_time() - self._trio0)

    def deadline(self, wall: float | None) -> float:
        """The Trio deadline of epoch time ``wall`` (``inf`` for None)."""
        if wall is None:
            return math.inf
        return self._trio0 + (wall - self._wall0)
