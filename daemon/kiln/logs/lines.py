"""Pure pieces of the log path: the line record, the line splitter, the flood limiter.

No I/O, no clock reads: every time is passed in, so tests drive it directly.

* :class:`LogLine` — one line a container wrote: function, container, call id
  (or None), stream, text, wall-clock time, and a sequence number that orders
  lines across the whole daemon.
* :class:`LineSplitter` — bytes arriving in arbitrary pieces → whole lines.
  A line longer than ``max_line`` bytes is cut: its first ``max_line`` bytes are
  kept and a marker says how many bytes were cut. Nothing is dropped silently.
* :class:`FloodLimiter` — a token bucket per function (lines per second and a
  burst). Lines over it are dropped and counted; the next line let through is
  preceded by a ``lines dropped`` marker carrying the count.
"""

from __future__ import annotations

import time as _time
from dataclasses import dataclass
from typing import Any

STDOUT = "stdout"
STDERR = "stderr"
#: Lines Kiln itself adds to a function's log (cut and drop markers).
KILN = "kiln"

CUT_MARKER = " …[kiln: line cut, {n} more bytes]"


@dataclass(frozen=True, slots=True)
class LogLine:
    seq: int
    time: float  # Unix seconds (wall clock: this is what people read)
    function: str
    container: str
    call: str | None
    stream: str
    text: str

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "time": format_time(self.time),
            "function": self.function,
            "container": self.container,
            "call": self.call,
            "stream": self.stream,
            "text": self.text,
        }

    def format_text(self) -> str:
        return f"{format_time(self.time)} {self.call or '-'} {self.stream}: {self.text}"


def format_time(t: float) -> str:
    """RFC 3339 UTC with milliseconds, e.g. ``2026-12-02T07:04:05.123Z``."""
    whole = int(t)
    ms = int((t - whole) * 1000)
    return _time.strftime("%Y-%m-%dT%H:%M:%S", _time.gmtime(whole)) + f".{ms:03d}Z"


class LineSplitter:
    """Turns one stream's bytes, arriving in any split, into whole lines.

    ``feed`` returns the lines completed by the data (without their newline,
    a trailing ``\\r`` removed), each as ``(bytes, cut)`` where ``cut`` is the
    number of bytes dropped from an over-long line (0 for most lines). A line
    is cut at ``max_line`` bytes; the cut bytes are counted until its newline.
    """

    __slots__ = ("_cut", "_max", "_partial")

    def __init__(self, max_line: int) -> None:
        self._max = max_line
        self._partial = b""
        self._cut = 0

    def feed(self, data: bytes) -> list[tuple[bytes, int]]:
        out: list[tuple[bytes, int]] = []
        start = 0
        n = len(data)
        max_line = self._max
        while start < n:
            nl = data.find(b"\n", start)
            end = n if nl < 0 else nl
            piece = data[start:end]
            if self._cut or len(self._partial) + len(piece) > max_line:
                room = max_line - len(self._partial)
                if room > 0:
                    self._partial += piece[:room]
                    self._cut += len(piece) - room
                else:
                    self._cut += len(piece)
            else:
                self._partial += piece
            if nl < 0:
                break
            line = self._partial
            if line.endswith(b"\r"):
                line = line[:-1]
            out.append((line, self._cut))
            self._partial = b""
            self._cut = 0
            start = nl + 1
        return out

    def flush(self) -> list[tuple[bytes, int]]:
        """The stream ended: an unterminated last line is a line too."""
        if not self._partial and not self._cut:
            return []
        line = (self._partial, self._cut)
        self._partial = b""
        self._cut = 0
        return [line]


def line_text(data: bytes, cut: int) -> str:
    text = data.decode("utf-8", "replace")
    if cut:
        text += CUT_MARKER.format(n=cut)
    return text


class FloodLimiter:
    """A token bucket over lines: ``rate`` per second, up to ``burst`` at once.

    ``admit(now)`` says whether one more line may go in. Lines refused are
    counted; :meth:`take_dropped` returns (and resets) that count, so the
    caller can write one marker line before the next line it lets through.
    """

    __slots__ = ("_burst", "_rate", "_stamp", "_tokens", "dropped", "dropped_total")

    def __init__(self, rate: float, burst: int) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._stamp: float | None = None
        self.dropped = 0
        self.dropped_total = 0

    def admit(self, now: float) -> bool:
        if self._stamp is not None and now > self._stamp:
            self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        self.dropped += 1
        self.dropped_total += 1
        return False

    def take_dropped(self) -> int:
        n, self.dropped = self.dropped, 0
        return n


def dropped_marker(n: int, rate: float) -> str:
    return f"[kiln: {n} line(s) dropped: the function logged faster than {rate:g} lines/s]"
