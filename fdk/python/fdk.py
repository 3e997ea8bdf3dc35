"""A tiny Python FDK for the Fn ``http-stream`` contract (Kiln's hot functions).

One file, standard library only, Python >= 3.8; it imports nothing from Kiln.
Put it next to your code in the function's image::

    import fdk

    def handle(body: bytes, headers: dict) -> bytes:
        return b"hello " + body

    if __name__ == "__main__":
        fdk.serve(handle)

``handle(body, headers)`` gets the request body and a dict of the request's
headers (lowercase names; repeated headers joined with ``", "``; values decoded
as Latin-1, as HTTP/1.1 defines); the caller's headers, which the runner sends
as ``Fn-Http-H-<name>``, are also there under their own names, and the caller's
method and URL are ``fn-http-method`` and ``fn-http-request-url``. It returns the response body (``bytes``,
``str`` — sent as UTF-8 — or ``None``), or a tuple ``(status, headers, body)``
for the caller-facing status and headers. An exception becomes a 502 whose
body is the traceback's last line (the whole traceback goes to stderr).

What it does, per the contract:

* reads ``FN_LISTENER`` (``unix:/tmp/iofs/lsnr.sock``), binds
  ``phony<random>.sock`` in that dir, listens, makes it mode 0666, then
  symlinks ``lsnr.sock -> phony<random>.sock`` (relative): the name appears only
  once the socket accepts connections, which is how the runner knows it is ready;
* serves HTTP/1.1 keep-alive ``POST /call`` (``Content-Length`` or chunked
  bodies), one thread per connection;
* answers 200 with ``Fn-Http-Status: <status>``, ``Fn-Http-H-<name>: <value>``
  for each of the function's headers (``Content-Type`` is sent as itself),
  502 when ``handle`` raised, and 504 — without calling ``handle`` — when the
  call's ``Fn-Deadline`` has already passed.
"""

from __future__ import annotations

import calendar
import contextlib
import http
import os
import re
import secrets
import socket
import sys
import threading
import time
import traceback
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping
    from typing import Any, BinaryIO, TextIO

    Body = bytes | str | None
    Result = Body | tuple[int, Mapping[str, str] | None, Body]
    Handler = Callable[[bytes, dict[str, str]], Result]

__all__ = [
    "BadRequest",
    "Request",
    "bind_listener",
    "caller_view",
    "listener_path",
    "parse_deadline",
    "read_request",
    "serve",
    "serve_socket",
    "write_response",
]

MAX_LINE = 65536
MAX_HEADERS = 256
_COALESCE = 65536
_HEX = b"0123456789abcdefABCDEF"
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_DEADLINE = re.compile(
    r"^(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(\.\d+)?(?:([Zz])|([+-])(\d\d):(\d\d))$"
)


class BadRequest(Exception):
    """The peer sent something that is not HTTP/1.1 we understand; the connection is closed."""


class Request:
    """One parsed request: ``method``, ``target``, ``version``, ``headers`` (lowercase), ``body``."""

    __slots__ = ("body", "headers", "keep_alive", "method", "target", "version")

    def __init__(
        self, method: str, target: str, version: str, headers: dict[str, str], body: bytes
    ) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.body = body
        tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
        if version == "HTTP/1.1":
            self.keep_alive = "close" not in tokens
        else:
            self.keep_alive = "keep-alive" in tokens


# ---- the listener ------------------------------------------------------------


def listener_path(url: str | None = None) -> str:
    """The socket path in ``FN_LISTENER`` (or ``url``): ``unix:/path`` or ``unix:///path``."""
    if url is None:
        url = os.environ.get("FN_LISTENER", "")
    if not url.startswith("unix:/"):
        raise SystemExit(f"fdk: FN_LISTENER must be unix:/path/lsnr.sock, got {url!r}")
    return "/" + url[len("unix:") :].lstrip("/")


def bind_listener(path: str, backlog: int = 128) -> socket.socket:
    """Bind and listen on ``phony<random>.sock`` beside ``path``, then symlink ``path`` to it.

    The symlink is relative and made last, so ``path`` appears only once the
    socket accepts connections.
    """
    directory, link_name = os.path.split(path)
    phony = f"phony{secrets.token_hex(4)}.sock"
    phony_path = os.path.join(directory, phony)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(phony_path)
        sock.listen(backlog)
        os.chmod(phony_path, 0o666)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # a stale link from an earlier run in the same dir
        os.symlink(phony, os.path.join(directory, link_name))
    except BaseException:
        sock.close()
        raise
    return sock


# ---- HTTP/1.1, just enough ---------------------------------------------------------


def _read_line(rfile: BinaryIO) -> bytes:
    line = rfile.readline(MAX_LINE + 1)
    if len(line) > MAX_LINE:
        raise BadRequest("line too long")
    return line


def _read_chunked(rfile: BinaryIO) -> bytes:
    chunks = []
    while True:
        line = _read_line(rfile)
        if not line.endswith(b"\n"):
            raise BadRequest("connection closed in a chunked body")
        size_field = line.split(b";", 1)[0].strip()
        if not size_field or size_field.strip(_HEX):
            raise BadRequest(f"bad chunk size {size_field!r}")
        size = int(size_field, 16)
        if size == 0:
            break
        data = rfile.read(size)
        if len(data) != size or _read_line(rfile) not in (b"\r\n", b"\n"):
            raise BadRequest("bad chunk")
        chunks.append(data)
    while True:  # trailers: read and dropped
        line = _read_line(rfile)
        if not line:
            raise BadRequest("connection closed in the trailers")
        if line in (b"\r\n", b"\n"):
            return b"".join(chunks)


def read_request(rfile: BinaryIO, sock: socket.socket | None = None) -> Request | None:
    """Read one request from a buffered socket file; ``None`` when the peer closed between requests.

    With ``sock``, a request with ``Expect: 100-continue`` gets its ``100 Continue`` before
    the body is read.
    """
    line = _read_line(rfile)
    while line in (b"\r\n", b"\n"):  # RFC 9112 §2.2: ignore blank lines before a request
        line = _read_line(rfile)
    if not line:
        return None
    parts = line.decode("latin-1").split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest(f"bad request line {line[:100]!r}")
    method, target, version = parts
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADERS):
        line = _read_line(rfile)
        if line in (b"\r\n", b"\n"):
            break
        if not line.endswith(b"\n"):
            raise BadRequest("connection closed in the headers")
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep or not _TOKEN.match(name):
            raise BadRequest(f"bad header line {line[:100]!r}")
        name = name.lower()
        value = value.strip()
        headers[name] = headers[name] + ", " + value if name in headers else value
    else:
        raise BadRequest("too many headers")
    if sock is not None and headers.get("expect", "").lower() == "100-continue":
        sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
    if "transfer-encoding" in headers:
        if headers["transfer-encoding"].lower() != "chunked":
            raise BadRequest(f"unsupported transfer-encoding {headers['transfer-encoding']!r}")
        body = _read_chunked(rfile)
    else:
        length = headers.get("content-length", "0")
        if not length.isdigit():
            raise BadRequest(f"bad content-length {length!r}")
        n = int(length)
        body = rfile.read(n) if n else b""
        if len(body) != n:
            raise BadRequest("connection closed in the body")
    return Request(method, target, version, headers, body)


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return f"Status {status}"


def write_response(
    sock: socket.socket,
    status: int,
    headers: list[tuple[str, str]],
    body: bytes,
    keep_alive: bool = True,
) -> None:
    """Send one HTTP/1.1 response with a ``Content-Length`` body."""
    lines = [f"HTTP/1.1 {status} {_reason(status)}"]
    lines.extend(f"{name}: {value}" for name, value in headers)
    lines.append(f"Content-Length: {len(body)}")
    if not keep_alive:
        lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    if len(body) <= _COALESCE:
        sock.sendall(head + body)
    else:
        sock.sendall(head)
        sock.sendall(body)


# ---- the contract ----------------------------------------------------------------


def parse_deadline(value: str | None) -> float | None:
    """``Fn-Deadline`` (RFC 3339) → Unix seconds; ``None`` if missing or unparsable."""
    if not value:
        return None
    m = _DEADLINE.match(value.strip())
    if m is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in m.group(1, 2, 3, 4, 5, 6))
    try:
        seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    except (ValueError, OverflowError):
        return None
    fraction = float("0" + m.group(7)) if m.group(7) else 0.0
    offset = 0
    if m.group(9):
        offset = (int(m.group(10)) * 60 + int(m.group(11))) * 60
        if m.group(9) == "-":
            offset = -offset
    return seconds + fraction - offset


def _check_header(name: str, value: str) -> None:
    if not _TOKEN.match(name):
        raise ValueError(f"bad response header name {name!r}")
    if "\r" in value or "\n" in value:
        raise ValueError(f"response header {name!r} has a line break in its value")
    value.encode("latin-1")  # UnicodeEncodeError (a ValueError) if it cannot be sent


def _to_bytes(body: Body) -> bytes:
    if body is None:
        return b""
    if isinstance(body, bytes):
        return body
    if isinstance(body, (bytearray, memoryview)):
        return bytes(body)
    if isinstance(body, str):
        return body.encode("utf-8")
    raise TypeError(f"a function must return bytes, str or None, not {type(body).__name__}")


_FN_HTTP_H = "fn-http-h-"


def caller_view(headers: dict[str, str]) -> dict[str, str]:
    """The request's headers plus each ``Fn-Http-H-<name>`` under ``<name>`` (which wins)."""
    out = dict(headers)
    for name, value in headers.items():
        if name.startswith(_FN_HTTP_H) and len(name) > len(_FN_HTTP_H):
            out[name[len(_FN_HTTP_H) :]] = value
    return out


def log_frame(headers: Mapping[str, str], environ: Mapping[str, str] | None = None) -> str | None:
    """Fn's log framing: with ``FN_LOGFRAME_NAME`` and ``FN_LOGFRAME_HDR`` set, a
    call's output on stdout and stderr starts with the line ``<NAME>=<value of
    header HDR>`` (after a newline ending any unterminated line), so the runner can
    tell which call later lines belong to. Written before the call's first output
    on each stream (:class:`FramedStream`), not for a call that writes nothing.
    None when not asked for (or no such header)."""
    env = os.environ if environ is None else environ
    name, header = env.get("FN_LOGFRAME_NAME"), env.get("FN_LOGFRAME_HDR")
    if not name or not header:
        return None
    value = headers.get(header.lower())
    if not value or "\n" in value or "\r" in value:
        return None
    return f"\n{name}={value}\n"


class FramedStream:
    """``sys.stdout`` / ``sys.stderr`` while serving with log framing: a call's frame
    goes out just before the first text the call writes through the stream, so a
    call that writes nothing costs the runner nothing. Everything else is the
    wrapped stream's."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.pending: str | None = None

    def write(self, text: str) -> int:
        pending = self.pending
        if pending is not None:
            self.pending = None
            self.stream.write(pending)
        return self.stream.write(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def _frame_streams() -> None:
    """Wrap ``sys.stdout`` and ``sys.stderr`` in :class:`FramedStream` (once)."""
    if not isinstance(sys.stdout, FramedStream):
        sys.stdout = FramedStream(sys.stdout)
    if not isinstance(sys.stderr, FramedStream):
        sys.stderr = FramedStream(sys.stderr)


def _set_frame(frame: str | None) -> None:
    """The call's frame, before its first output on each stream (None: the call
    ended; flush what it wrote). Streams a function replaced get it at once."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if isinstance(stream, FramedStream):
                stream.pending = frame
                if frame is None:
                    stream.flush()
            elif frame is not None:
                stream.write(frame)
                stream.flush()
        except (OSError, ValueError):
            pass


def _call(handle: Handler, request: Request) -> tuple[int, list[tuple[str, str]], bytes]:
    """Run ``handle`` and wrap its answer in the contract: (HTTP status, headers, body)."""
    frame = log_frame(request.headers)
    if frame is None:
        return _answer(handle, request)
    _set_frame(frame)
    try:
        return _answer(handle, request)
    finally:
        _set_frame(None)


def _answer(handle: Handler, request: Request) -> tuple[int, list[tuple[str, str]], bytes]:
    deadline = parse_deadline(request.headers.get("fn-deadline"))
    if deadline is not None and deadline <= time.time():
        return (
            504,
            [("Content-Type", "text/plain")],
            b"the call's deadline passed before it started",
        )
    try:
        result = handle(request.body, caller_view(request.headers))
        status: object = 200
        fn_headers: Mapping[str, str] | None = None
        body: Body
        if isinstance(result, tuple):
            if len(result) != 3:
                raise TypeError("a function's tuple answer must be (status, headers, body)")
            status, fn_headers, body = result
        else:
            body = result
        if not isinstance(status, int) or not 200 <= status <= 599:
            raise ValueError(f"a function's status must be an int in 200..599, not {status!r}")
        out = [("Fn-Http-Status", str(status))]
        for name, value in (fn_headers or {}).items():
            value = str(value)
            _check_header(name, value)
            if name.lower() == "content-type":
                out.append(("Content-Type", value))
            else:
                out.append(("Fn-Http-H-" + name, value))
        return 200, out, _to_bytes(body)
    except Exception as e:
        traceback.print_exc(file=sys.stderr)
        sys.stderr.flush()
        last = traceback.format_exception_only(type(e), e)[-1].strip()
        return 502, [("Content-Type", "text/plain; charset=utf-8")], last.encode("utf-8", "replace")


def _serve_connection(conn: socket.socket, handle: Handler) -> None:
    rfile: BinaryIO = conn.makefile("rb", buffering=65536)  # type: ignore[assignment]
    try:
        while True:
            try:
                request = read_request(rfile, conn)
            except BadRequest as e:
                write_response(conn, 400, [("Content-Type", "text/plain")], str(e).encode(), False)
                return
            if request is None:
                return
            if request.method != "POST" or request.target.split("?", 1)[0] != "/call":
                status, headers, body = 404, [("Content-Type", "text/plain")], b"use POST /call"
            else:
                status, headers, body = _call(handle, request)
            write_response(conn, status, headers, body, request.keep_alive)
            if not request.keep_alive:
                return
    except OSError:
        pass  # the runner went away; nothing to answer
    finally:
        rfile.close()
        conn.close()


def serve_socket(sock: socket.socket, handle: Handler) -> None:
    """Accept connections on a listening socket forever, each served by its own thread."""
    while True:
        conn, _ = sock.accept()
        threading.Thread(target=_serve_connection, args=(conn, handle), daemon=True).start()


def serve(handle: Handler, listener: str | None = None) -> None:
    """Bind the listener from ``FN_LISTENER`` (or ``listener``) and serve calls until killed."""
    path = listener_path(listener)
    if os.environ.get("FN_LOGFRAME_NAME") and os.environ.get("FN_LOGFRAME_HDR"):
        _frame_streams()
    sock = bind_listener(path)
    try:
        serve_socket(sock, handle)
    finally:
        sock.close()
