"""The in-memory log store: one bounded ring of lines per function.

A ring holds at most ``max_lines`` lines and ``max_bytes`` bytes of text
(the oldest go first). Lines get a sequence number from one daemon-wide
counter, so a follower can ask for "everything after line N" without gaps
or repeats. Pure data structure: no I/O, no clock.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from kiln.logs.lines import LogLine

#: What one stored line costs beyond its text (the record, the deque slot), for the byte cap.
LINE_OVERHEAD = 120


@dataclass(frozen=True)
class Query:
    """Which lines to return: all filters optional; ``tail`` keeps the last N that match."""

    since: float | None = None  # Unix seconds
    call: str | None = None
    tail: int | None = None
    after_seq: int = 0
    container: str | None = None

    def matches(self, line: LogLine) -> bool:
        return (
            line.seq > self.after_seq
            and (self.since is None or line.time >= self.since)
            and (self.call is None or line.call == self.call)
            and (self.container is None or line.container == self.container)
        )


class FunctionRing:
    __slots__ = ("bytes", "lines", "max_bytes", "max_lines")

    def __init__(self, max_lines: int, max_bytes: int) -> None:
        self.lines: deque[LogLine] = deque()
        self.bytes = 0
        self.max_lines = max_lines
        self.max_bytes = max_bytes

    def append(self, line: LogLine) -> None:
        lines = self.lines
        lines.append(line)
        self.bytes += len(line.text) + LINE_OVERHEAD
        while len(lines) > self.max_lines or (self.bytes > self.max_bytes and len(lines) > 1):
            old = lines.popleft()
            self.bytes -= len(old.text) + LINE_OVERHEAD

    def query(self, q: Query) -> list[LogLine]:
        if q.tail is not None:
            if q.tail <= 0:
                return []
            picked: list[LogLine] = []
            for line in reversed(self.lines):
                if line.seq <= q.after_seq or (q.since is not None and line.time < q.since):
                    break  # lines are in seq order; times nearly so
                if (q.call is None or line.call == q.call) and (
                    q.container is None or line.container == q.container
                ):
                    picked.append(line)
                    if len(picked) >= q.tail:
                        break
            picked.reverse()
            return picked
        return [line for line in self.lines if q.matches(line)]


class LogStore:
    """Rings by function name; makes the :class:`LogLine` records (and their seq)."""

    def __init__(self, *, max_lines: int, max_bytes: int) -> None:
        self.max_lines = max_lines
        self.max_bytes = max_bytes
        self._rings: dict[str, FunctionRing] = {}
        self._seq = itertools.count(1)

    def add(
        self,
        function: str,
        container: str,
        call: str | None,
        stream: str,
        text: str,
        time: float,
    ) -> LogLine:
        line = LogLine(next(self._seq), time, function, container, call, stream, text)
        ring = self._rings.get(function)
        if ring is None:
            ring = self._rings[function] = FunctionRing(self.max_lines, self.max_bytes)
        ring.append(line)
        return line

    def query(self, function: str, q: Query) -> list[LogLine]:
        ring = self._rings.get(function)
        return ring.query(q) if ring is not None else []

    def forget(self, function: str) -> None:
        """A removed function's lines go with it (the store stays bounded by live functions)."""
        self._rings.pop(function, None)

    def functions(self) -> Iterator[str]:
        return iter(self._rings)

    def usage(self, function: str) -> tuple[int, int]:
        """(lines, bytes) held for a function."""
        ring = self._rings.get(function)
        return (len(ring.lines), ring.bytes) if ring is not None else (0, 0)
