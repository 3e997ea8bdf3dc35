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


class FrameDecoder:
    """Feed bytes in any split; get whole frames out.

    >>> d = FrameDecoder()
    >>> d.feed(b"\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x02hi")
    [Frame(stream=1, data=b'hi')]
    """

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        buf = self._buf
        buf += data
        out: list[Frame] = []
        pos = 0
        n = len(buf)
        while n - pos >= HEADER.size:
            stream, length = HEADER.unpack_from(buf, pos)
            if stream not in (STDIN, STDOUT, STDERR) or buf[pos + 1 : pos + 4] != b"\0\0\0":
                raise DockerProtocolError(
                    f"bad stream frame header {bytes(buf[pos : pos + 8])!r} (is the container a TTY?)"
                )
            end = pos + HEADER.size + length
            if end > n:
                break
            out.append(Frame(stream, bytes(buf[pos + HEADER.size : end])))
            pos = end
        if pos:
            del buf[:pos]
        return out

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
