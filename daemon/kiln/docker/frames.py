"""Sans-IO decoder for Docker's multiplexed stdout/stderr stream.

Without a TTY, Docker frames the attach (and logs) stream: an 8-byte header —
stream type (0 stdin, 1 stdout, 2 stderr), three zero bytes, a big-endian
uint32 payload length — followed by the payload. Docker cuts frames at 32 KiB
regardless of how the process wrote. This module only turns bytes into
frames; it does no I/O.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from kiln.docker.errors import DockerProtocolError

STDIN = 0
STDOUT = 1
STDERR = 2
HEADER = struct.Struct(">BxxxI")


@dataclass(frozen=True, slots=True)
class Frame:
    stream: int
    data: bytes


def encode_frame(stream: int, data: bytes) -> bytes:
    """The bytes Docker would send for one frame (used by tests and the fake engine)."""
    return HEADER.pack(stream, len(data)) + data


_WORD = struct.Struct(">II")  # the header as two words: stream << 24 (the rest zero), length
_KINDS = {STDIN << 24: STDIN, STDOUT << 24: STDOUT, STDERR << 24: STDERR}


def frame_spans(data: bytes | bytearray | memoryview) -> tuple[list[tuple[int, int, int]], int]:
    """Where the whole frames in ``data`` are — ``(stream, start, end)`` of each payload —
    and where the rest (a frame not yet whole) starts. Nothing is copied."""
    spans: list[tuple[int, int, int]] = []
    pos = 0
    n = len(data)
    unpack = _WORD.unpack_from
    while n - pos >= 8:
        word, length = unpack(data, pos)
        stream = _KINDS.get(word)
        if stream is None:
            raise DockerProtocolError(
                f"bad stream frame header {bytes(data[pos : pos + 8])!r} (is the container a TTY?)"
            )
        end = pos + 8 + length
        if end > n:
            break
        spans.append((stream, pos + 8, end))
        pos = end
    return spans, pos


class FrameTexts:
    """A framed answer taken piece by piece (a sink of :meth:`Docker._query`): each
    frame's payload decoded into ``texts`` as soon as it is whole, straight from the
    piece that holds it, so the pieces read are let go as the answer comes."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self._head = b""  # a frame header cut between pieces
        self._left = -1  # bytes of the current payload still to come; -1: a header is next
        self._parts: list[memoryview] = []  # a payload cut between pieces

    def __call__(self, piece: memoryview) -> None:
        pos, n = 0, len(piece)
        while pos < n:
            if self._left < 0:
                if not self._head and n - pos >= 8:
                    word, length = _WORD.unpack_from(piece, pos)
                    pos += 8
                else:
                    take = min(8 - len(self._head), n - pos)
                    self._head += piece[pos : pos + take].tobytes()
                    pos += take
                    if len(self._head) < 8:
                        return
                    word, length = _WORD.unpack(self._head)
                    self._head = b""
                if word not in _KINDS:
                    raise DockerProtocolError(
                        f"bad stream frame header (word {word:#x}; is the container a TTY?)"
                    )
                self._left = length
            take = min(self._left, n - pos)
            if take == self._left and not self._parts:  # the whole payload is here
                self.texts.append(str(piece[pos : pos + take], "utf-8", "replace"))
            elif take:
                self._parts.append(piece[pos : pos + take])
                if take == self._left:
                    self.texts.append(str(b"".join(self._parts), "utf-8", "replace"))
                    self._parts = []
            pos += take
            self._left -= take
            if not self._left:
                self._left = -1

    def eof(self) -> None:
        """The answer ended: it must not end inside a frame."""
        if self._head or self._left >= 0:
            raise DockerProtocolError("the stream ended inside a frame")


class FrameDecoder:
    """Feed bytes in any split; get whole frames out.

    >>> d = FrameDecoder()
    >>> d.feed(b"\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x02hi")
    [Frame(stream=1, data=b'hi')]
    """

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        if self._buf:  # a frame begun in an earlier piece
            self._buf += data
            data = bytes(self._buf)
            self._buf.clear()
        elif not isinstance(data, bytes):
            data = bytes(data)
        spans, rest = frame_spans(data)
        if rest < len(data):
            self._buf += data[rest:]
        return [Frame(stream, data[start:end]) for stream, start, end in spans]

    @property
    def pending(self) -> int:
        """Bytes of a frame not yet complete."""
        return len(self._buf)

    def eof(self) -> None:
        """The stream ended: it must not end inside a frame."""
        if self._buf:
            raise DockerProtocolError(
                f"stream ended inside a frame ({len(self._buf)} bytes left over)"
            )
