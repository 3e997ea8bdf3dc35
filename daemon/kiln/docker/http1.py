"""Sans-IO HTTP/1.1 for short calls: the request's bytes, and a reader of the answer.

A short call sends one request and reads one whole answer on a keep-alive connection,
so all it needs is this: no state machine for pipelining, upgrades or streamed bodies
(those are the long calls', on httpcore and h11). Strict where a mistake would matter —
the status line, header syntax, ``Content-Length`` and chunk framing — and cheap for
Docker's usual answers, which arrive whole in one read. Anything it cannot frame for
sure ends the connection's reuse.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from kiln.docker.errors import DockerProtocolError, DockerUnreachable

MAX_HEAD = 64 * 1024
_STATUS = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: [\t\x20-\x7e\x80-\xff]*)?")
_FIELD = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*([\t\x20-\x7e\x80-\xff]*?)[ \t]*")
_CHUNK = re.compile(rb"([0-9A-Fa-f]{1,15})[ \t]*(?:;[^\r\n]*)?\r\n")


def request_head(
    method: str, target: str, host: bytes, headers: list[tuple[bytes, bytes]]
) -> bytearray:
    """``METHOD target HTTP/1.1`` and the headers, ready to send (the body goes after)."""
    out = bytearray(b"%s %s HTTP/1.1\r\nHost: %s\r\n" % (method.encode(), target.encode(), host))
    for name, value in headers:
        if b"\r" in value or b"\n" in value or b"\r" in name or b"\n" in name:
            raise ValueError(f"bad header {name!r}")
        out += b"%s: %s\r\n" % (name, value)
    out += b"\r\n"
    return out


def _bad(what: str) -> DockerProtocolError:
    return DockerProtocolError(f"bad HTTP from Docker: {what}")


_HEAD, _DATA, _SIZE, _CRLF, _TRAILER, _DONE = range(6)
_UNTIL_EOF = 1 << 62  # what is left of a body that runs until the connection ends
MAX_FRAMING = 4096  # a chunk-size line, or the trailers


class ResponseReader:
    """Feed the connection's bytes until :meth:`feed` says the answer is whole; then
    ``status``, ``headers``, ``body``, and ``reusable`` (whether the connection may carry
    another exchange).

    The body is kept as views of the pieces read and joined once at the end, so a large
    answer (an archive) is copied once, whatever its framing; or, with ``sink``, each
    piece of it is handed over as it comes (a log decoded on the way) and ``body`` stays
    empty."""

    __slots__ = (
        "_chunked",
        "_head_only",
        "_left",
        "_pieces",
        "_sink",
        "_state",
        "_tail",
        "body",
        "headers",
        "reusable",
        "status",
    )

    def __init__(
        self, *, head_only: bool = False, sink: Callable[[memoryview], None] | None = None
    ) -> None:
        self._head_only = head_only  # a HEAD request's answer has no body
        self._sink = sink
        self._state = _HEAD
        self._chunked = False
        self._tail = b""  # the start of a head, chunk-size line or trailers cut by a read
        self._left = 0  # _DATA: bytes of the body (or of its chunk) still to come
        self._pieces: list[memoryview] = []
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.reusable = True

    def feed(self, data: bytes) -> bool:
        """Take more bytes; True once the answer is whole."""
        if type(data) is not bytes:
            data = bytes(data)  # views are kept: the piece must not change
        if not self._tail:
            return self._feed(data, 0)
        if self._state == _HEAD:
            data, self._tail = self._tail + data, b""  # a head is small: copied whole
            return self._feed(data, 0)
        return self._feed_tail(data)

    def eof(self) -> None:
        """The connection ended: whole if the body runs until then, else an error."""
        self.reusable = False
        if self._state == _DATA and self._left > _UNTIL_EOF // 2:
            self._finish()
            return
        started = self._state != _HEAD or self._tail
        what = "in the middle of its answer" if started else "without answering"
        raise DockerUnreachable(f"Docker closed the connection {what}")

    def _feed(self, data: bytes, pos: int) -> bool:
        n = len(data)
        if self._state == _HEAD:
            pos = self._head(data)
            if pos < 0:
                return False
        view: memoryview | None = None
        while True:
            state = self._state
            if state == _DATA:
                take = min(self._left, n - pos)
                if take:
                    if view is None:
                        view = memoryview(data)
                    if self._sink is None:
                        self._pieces.append(view[pos : pos + take])
                    else:
                        self._sink(view[pos : pos + take])
                    pos += take
                    self._left -= take
                if self._left:
                    return False
                self._state = _CRLF if self._chunked else _DONE
            elif state == _DONE:
                if pos < n:
                    self.reusable = False  # more than the answer: trust nothing after it
                self._finish()
                return True
            else:
                at = self._framing(data, pos)
                if at < 0:
                    if n - pos > MAX_FRAMING:
                        raise _bad(f"chunk framing {data[pos : pos + 40]!r}")
                    self._tail = data[pos:]
                    return False
                pos = at

    def _feed_tail(self, data: bytes) -> bool:
        """Go on with chunk framing cut by the last read's end: only as much of the new
        piece as the framing can take is copied."""
        tail = self._tail
        probe = tail + data[:MAX_FRAMING]
        at = 0
        while self._state not in (_DATA, _DONE):
            next_at = self._framing(probe, at)
            if next_at < 0:
                rest = probe[at:]
                if len(data) > MAX_FRAMING or len(rest) > MAX_FRAMING:
                    raise _bad(f"chunk framing {rest[:40]!r}")
                self._tail = rest
                return False
            at = next_at
        self._tail = b""
        return self._feed(data, at - len(tail))

    def _head(self, data: bytes) -> int:
        """Read the head if it is whole: where the body starts, else -1."""
        start = 0
        while True:
            end = data.find(b"\r\n\r\n", start)
            if end < 0:
                if len(data) - start > MAX_HEAD:
                    raise _bad(f"a response head over {MAX_HEAD} bytes")
                self._tail = data[start:]
                return -1
            lines = data[start:end].split(b"\r\n")
            status = _STATUS.fullmatch(lines[0])
            if status is None:
                raise _bad(f"status line {lines[0][:100]!r}")
            code = int(status.group(2))
            if 100 <= code < 200 and code != 101:
                start = end + 4  # an interim answer (100 Continue): the real one follows
                continue
            break
        self.status = code
        self.reusable = status.group(1) == b"1"
        if code >= 400:
            self._sink = None  # an error's body is its message, kept for the caller
        length: int | None = None
        chunked = False
        headers = self.headers
        for line in lines[1:]:
            field = _FIELD.fullmatch(line)
            if field is None:
                raise _bad(f"header line {line[:100]!r}")
            name, value = field.groups()
            headers.append((name, value))
            key = name.lower()
            if key == b"content-length":
                if not value.isdigit() or (length is not None and int(value) != length):
                    raise _bad(f"Content-Length {value!r}")
                length = int(value)
            elif key == b"transfer-encoding":
                if value.lower() != b"chunked" or chunked:
                    raise _bad(f"Transfer-Encoding {value!r}")
                chunked = True
            elif key == b"connection" and b"close" in value.lower():
                self.reusable = False
        if self._head_only or code in (101, 204, 304):
            self._state = _DONE
            self.reusable = self.reusable and code != 101
        elif chunked:
            self._state, self._chunked = _SIZE, True
            if length is not None:
                self.reusable = False  # both framings announced: read by chunks, then close
        elif length is not None:
            self._state, self._left = (_DATA, length) if length else (_DONE, 0)
        else:
            self._state, self._left = _DATA, _UNTIL_EOF
            self.reusable = False
        return end + 4

    def _framing(self, data: bytes, pos: int) -> int:
        """One element of chunk framing at ``pos``: where the next one starts, or -1 (and
        no change) while it is not whole."""
        state = self._state
        if state == _CRLF:
            if len(data) - pos < 2:
                return -1
            if data[pos : pos + 2] != b"\r\n":
                raise _bad("a chunk not ended by CRLF")
            self._state = _SIZE
            return pos + 2
        if state == _SIZE:
            line = _CHUNK.match(data, pos)
            if line is None:
                if data.find(b"\r\n", pos, pos + MAX_FRAMING) >= 0:
                    raise _bad(f"chunk size line {data[pos : pos + 40]!r}")
                return -1
            size = int(line.group(1), 16)
            if size:
                self._state, self._left = _DATA, size
            else:
                self._state = _TRAILER
            return line.end()
        # _TRAILER: an empty line, or trailer fields ended by one
        if data[pos : pos + 2] == b"\r\n":
            self._state = _DONE
            return pos + 2
        if len(data) - pos < 2:
            return -1
        stop = data.find(b"\r\n\r\n", pos, pos + MAX_FRAMING)
        if stop < 0:
            return -1
        self._state = _DONE
        return stop + 4

    def _finish(self) -> None:
        self._state = _DONE
        pieces, self._pieces = self._pieces, []
        self.body = pieces[0].tobytes() if len(pieces) == 1 else b"".join(pieces)


__all__ = ["MAX_HEAD", "ResponseReader", "request_head"]
