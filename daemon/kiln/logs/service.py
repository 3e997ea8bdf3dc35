"""The daemon's log service: what containers write → store, mirror, daemon log, followers.

One :class:`ContainerLog` per container takes its output as it is read (one
batch per read of the container's stream) and turns it into lines:

* split and cut (:class:`~kiln.logs.lines.LineSplitter`), per stream;
* attributed to a call: the call the container is serving, or — for a line
  that arrives just after the call ended (the container's output travels
  through dockerd, its answer does not, so the answer often wins) — the call
  that ended less than ``LINGER`` seconds ago; otherwise no call.
  Functions whose FDK writes Fn's log frames (``FN_LOGFRAME_NAME``: a line
  ``kiln_call_id=ID`` before a call's output on each stream — Fn's FDKs at
  the start of every call, Kiln's before the call's first output) are
  attributed exactly: from a frame on, that stream's lines belong to its call
  while that call runs or lingers; after that, to the call being served (the
  output of a call whose FDK wrote no frame for it);
* rate-limited per function (:class:`~kiln.logs.lines.FloodLimiter`);
* stored, mirrored to files (if configured), forwarded to journald/stderr and
  published to followers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import trio

from kiln.logs.hub import Follower, Hub
from kiln.logs.journal import Forwarder, NoForwarder
from kiln.logs.lines import (
    KILN,
    STDERR,
    STDOUT,
    FloodLimiter,
    LineSplitter,
    LogLine,
    dropped_marker,
    line_text,
)
from kiln.logs.mirror import FileMirror
from kiln.logs.store import LogStore, Query

#: Seconds after a call ended during which arriving lines still count as that call's.
LINGER = 0.25
#: The log frame name Kiln asks FDKs for (``FN_LOGFRAME_NAME``); the value is the call id.
FRAME_NAME = "kiln_call_id"
FRAME_PREFIX = (FRAME_NAME + "=").encode()
#: Lines of a failed call quoted in its 502 answer.
ERROR_TAIL_LINES = 20
ERROR_TAIL_BYTES = 2000

# Docker's stream numbers → names.
_STREAMS = {1: STDOUT, 2: STDERR}


class Chunk(Protocol):
    """A piece of a container's output: Docker's stream number and the bytes
    (:class:`kiln.docker.Frame` is one)."""

    @property
    def stream(self) -> int: ...

    @property
    def data(self) -> bytes: ...


@dataclass(frozen=True)
class LogSettings:
    lines_per_function: int = 10_000
    bytes_per_function: int = 8 * 1024 * 1024
    max_line: int = 16 * 1024
    rate: float = 1000.0  # lines per second per function
    burst: int = 2000
    mirror_dir: str | None = None
    file_size: int = 10 * 1024 * 1024
    file_count: int = 5
    #: Hot containers get Fn's log-frame variables (``FN_LOGFRAME_NAME``/``_HDR``).
    call_frames: bool = True


class Logs:
    def __init__(
        self,
        settings: LogSettings | None = None,
        *,
        forwarder: Forwarder | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = s = settings or LogSettings()
        self.store = LogStore(max_lines=s.lines_per_function, max_bytes=s.bytes_per_function)
        self.hub = Hub()
        self.forwarder: Forwarder = forwarder or NoForwarder()
        self.mirror = (
            FileMirror(s.mirror_dir, max_size=s.file_size, count=s.file_count)
            if s.mirror_dir
            else None
        )
        self.wall_clock = wall_clock
        self._limiters: dict[str, FloodLimiter] = {}
        self._kept: dict[str, int] = {}

    # ---- writing ---------------------------------------------------------------

    def container(self, function: str, container: str) -> ContainerLog:
        return ContainerLog(self, function, container)

    def _limiter(self, function: str) -> FloodLimiter:
        lim = self._limiters.get(function)
        if lim is None:
            lim = self._limiters[function] = FloodLimiter(self.settings.rate, self.settings.burst)
        return lim

    def emit(
        self,
        function: str,
        container: str,
        lines: Iterable[tuple[str | None, str, str]],
        *,
        now: float,
        wall: float,
    ) -> None:
        """Admit, store and send on a batch of ``(call, stream, text)`` lines."""
        limiter = self._limiter(function)
        store, hub, mirror = self.store, self.hub, self.mirror
        sent: list[LogLine] = []
        kept = 0
        for call, stream, text in lines:
            if not limiter.admit(now):
                continue
            if limiter.dropped:
                n = limiter.take_dropped()
                self._one(
                    function, container, call, KILN, dropped_marker(n, self.settings.rate), wall
                )
            line = store.add(function, container, call, stream, text, wall)
            kept += 1
            hub.publish(line)
            sent.append(line)
            if mirror is not None:
                mirror.write(line)
        if kept:
            self._kept[function] = self._kept.get(function, 0) + kept
        if sent:
            self.forwarder.send(sent)
        if mirror is not None:
            mirror.flush()

    def _one(
        self, function: str, container: str, call: str | None, stream: str, text: str, wall: float
    ) -> None:
        line = self.store.add(function, container, call, stream, text, wall)
        self.hub.publish(line)
        self.forwarder.send([line])
        if self.mirror is not None:
            self.mirror.write(line)

    # ---- reading ---------------------------------------------------------------

    def query(self, function: str, q: Query) -> list[LogLine]:
        return self.store.query(function, q)

    @contextmanager
    def follow(self, function: str, call: str | None = None) -> Iterator[Follower]:
        with self.hub.follow(function, call=call) as f:
            yield f

    def call_tail(self, function: str, call: str, lines: int = ERROR_TAIL_LINES) -> str:
        """The last lines of one call, for its error answer ("" if it wrote none)."""
        picked = self.store.query(function, Query(call=call, tail=lines))
        text = "\n".join(line.text for line in picked if line.stream != KILN)
        return text[-ERROR_TAIL_BYTES:]

    # ---- housekeeping ------------------------------------------------------------

    def forget(self, function: str) -> None:
        self.store.forget(function)
        self._limiters.pop(function, None)
        self._kept.pop(function, None)
        if self.mirror is not None:
            self.mirror.forget(function)

    def dropped_total(self, function: str) -> int:
        lim = self._limiters.get(function)
        return lim.dropped_total if lim is not None else 0

    def statistics(self) -> dict[str, tuple[int, int]]:
        """(lines kept, lines dropped by the flood limit) per function, since it was deployed."""
        return {
            name: (self._kept.get(name, 0), lim.dropped_total)
            for name, lim in sorted(self._limiters.items())
        }

    def close(self) -> None:
        if self.mirror is not None:
            self.mirror.close()
        self.forwarder.close()


class _Stream:
    __slots__ = ("frame_call", "pending_empty", "splitter")

    def __init__(self, max_line: int) -> None:
        self.splitter = LineSplitter(max_line)
        self.frame_call: str | None = None
        self.pending_empty = False


class ContainerLog:
    """One container's output → lines of its function's log."""

    def __init__(self, logs: Logs, function: str, container: str) -> None:
        self.logs = logs
        self.function = function
        self.container = container
        self.call: str | None = None  # the call being served
        self.last_call: str | None = None
        self.ended_at = -float("inf")
        max_line = logs.settings.max_line
        self._streams = {STDOUT: _Stream(max_line), STDERR: _Stream(max_line)}

    def begin_call(self, call: str) -> None:
        self.call = call

    def end_call(self) -> None:
        if self.call is not None:
            self.last_call = self.call
            self.ended_at = trio.current_time()
        self.call = None

    def _attribute(self, st: _Stream, now: float) -> str | None:
        lingering = now - self.ended_at < LINGER
        frame = st.frame_call
        if frame is not None and (frame == self.call or (lingering and frame == self.last_call)):
            return frame
        if self.call is not None:
            return self.call
        return self.last_call if lingering else None

    def feed(self, chunks: Iterable[Chunk]) -> None:
        """One read's worth of output (Docker frames)."""
        now = trio.current_time()
        out: list[tuple[str | None, str, str]] = []
        for chunk in chunks:
            name = _STREAMS.get(chunk.stream)
            if name is None:
                continue
            st = self._streams[name]
            self._lines(st, name, st.splitter.feed(chunk.data), now, out)
        if out:
            self.logs.emit(self.function, self.container, out, now=now, wall=self.logs.wall_clock())

    def _lines(
        self,
        st: _Stream,
        name: str,
        lines: list[tuple[bytes, int]],
        now: float,
        out: list[tuple[str | None, str, str]],
    ) -> None:
        for raw, cut in lines:
            if not cut and raw.startswith(FRAME_PREFIX):
                framed = raw[len(FRAME_PREFIX) :].decode("ascii", "replace")
                if framed and framed in (self.call, self.last_call):
                    # Fn's log frame: swallow it (and the empty line before it).
                    st.frame_call = framed
                    st.pending_empty = False
                    continue
            if st.pending_empty:
                st.pending_empty = False
                out.append((self._attribute(st, now), name, ""))
            if not raw and not cut:
                st.pending_empty = True  # may be the newline that opens a frame
                continue
            out.append((self._attribute(st, now), name, line_text(raw, cut)))

    def tail_text(self, lines: int = ERROR_TAIL_LINES, *, call: str | None = None) -> str:
        """The last lines this container wrote (during ``call`` only, if given), for an
        error message."""
        q = Query(container=self.container, call=call, tail=lines)
        picked = self.logs.query(self.function, q)
        text = "\n".join(line.text for line in picked if line.stream != KILN)
        return text[-ERROR_TAIL_BYTES:]

    def close(self) -> None:
        """The container's output ended: its unterminated last lines are lines too."""
        now = trio.current_time()
        out: list[tuple[str | None, str, str]] = []
        for name, st in self._streams.items():
            self._lines(st, name, st.splitter.flush(), now, out)
            if st.pending_empty:
                st.pending_empty = False
                out.append((self._attribute(st, now), name, ""))
        if out:
            self.logs.emit(self.function, self.container, out, now=now, wall=self.logs.wall_clock())
