"""The last lines of a container's output stream, which arrives in arbitrary pieces."""

from __future__ import annotations

from collections import deque

TAIL_LINES = 20
TAIL_BYTES = 4096


class StderrTail:
    """Keeps the last lines of a stream that arrives in arbitrary pieces."""

    def __init__(self, max_lines: int = TAIL_LINES, max_bytes: int = TAIL_BYTES):
        self._lines: deque[bytes] = deque(maxlen=max_lines)
        self._partial = b""
        self._max_bytes = max_bytes

    def feed(self, data: bytes) -> list[bytes]:
        """Add data; returns the lines completed by it (for logging)."""
        parts = (self._partial + data).split(b"\n")
        self._partial = parts.pop()[-self._max_bytes :]
        done = [p[-self._max_bytes :] for p in parts]
        self._lines.extend(done)
        return done

    def text(self) -> str:
        lines = list(self._lines)
        if self._partial:
            lines.append(self._partial)
        text = b"\n".join(lines)[-self._max_bytes :]
        return text.decode("utf-8", "replace").strip()
