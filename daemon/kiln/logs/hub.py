"""Live followers of a function's log (``follow=1``, ``kiln logs -f``).

Each follower owns a bounded Trio memory channel. Publishing never waits: a
follower whose buffer is full misses lines, counted, and is told how many
before its next line — a slow reader can never hold up a function or the
daemon. With no follower, publishing is one dict lookup.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import trio

from kiln.logs.lines import LogLine

FOLLOW_BUFFER = 1024


class Follower:
    __slots__ = ("call", "dropped", "receive", "send")

    def __init__(self, call: str | None, buffer: int) -> None:
        self.call = call
        self.send, self.receive = trio.open_memory_channel[LogLine](buffer)
        self.dropped = 0

    def take_dropped(self) -> int:
        n, self.dropped = self.dropped, 0
        return n


class Hub:
    def __init__(self) -> None:
        self._followers: dict[str, set[Follower]] = {}

    def publish(self, line: LogLine) -> None:
        followers = self._followers.get(line.function)
        if not followers:
            return
        for f in followers:
            if f.call is not None and f.call != line.call:
                continue
            try:
                f.send.send_nowait(line)
            except trio.WouldBlock:
                f.dropped += 1

    @contextmanager
    def follow(
        self, function: str, *, call: str | None = None, buffer: int = FOLLOW_BUFFER
    ) -> Iterator[Follower]:
        f = Follower(call, buffer)
        self._followers.setdefault(function, set()).add(f)
        try:
            yield f
        finally:
            group = self._followers.get(function)
            if group is not None:
                group.discard(f)
                if not group:
                    del self._followers[function]
            f.send.close()
            f.receive.close()

    def followers(self, function: str) -> int:
        return len(self._followers.get(function, ()))
