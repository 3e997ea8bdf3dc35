"""Raw HTTP requests for fuzzing the invoke port, and a blocking client that sends
one and reads what comes back. Used by ``test_http_fuzz.py`` (bounded, in CI)
and ``bench/fuzz_soak.py`` (long).

A request is built from parts, each drawn from a mix of the well-formed, the
known-dangerous (request smuggling, CONNECT, ``Expect``, huge or negative
lengths, hundreds of headers, bare LF) and random bytes; then it is sent whole,
cut short, pipelined with a second request, or followed by a half-close.
"""

from __future__ import annotations

import contextlib
import re
import socket
import struct
import time
from dataclasses import dataclass
from typing import TypeVar

from hypothesis import strategies as st

T = TypeVar("T")

METHODS = st.one_of(
    st.sampled_from(
        [b"GET", b"POST", b"PUT", b"HEAD", b"DELETE", b"OPTIONS", b"PATCH", b"CONNECT", b"TRACE"]
    ),
    st.sampled_from([b"PRI", b"post", b"G ET", b"", b"POST\x00", b"\xff\xfe"]),
    st.binary(max_size=10),
)
TARGETS = st.one_of(
    st.sampled_from(
        [
            b"/invoke/echo",
            b"/invoke/echo/sub/path?x=1&y",
            b"/invoke/nope",
            b"/invoke/",
            b"/healthz",
            b"/metrics",
            b"*",
            b"example.com:443",
            b"http://kiln/invoke/echo",
            b"/invoke/%00",
            b"/invoke/echo%2F..%2F..",
            b"/invoke/" + b"a" * 5000,
            b"/invoke/echo?" + b"q" * 20000,
        ]
    ),
    st.binary(max_size=40).map(lambda b: b"/invoke/" + b),
    st.binary(max_size=40),
)
VERSIONS = st.sampled_from(
    [
        b"HTTP/1.1",
        b"HTTP/1.1",
        b"HTTP/1.1",
        b"HTTP/1.0",
        b"HTTP/2.0",
        b"http/1.1",
        b"HTTP/1.1 ",
        b"",
    ]
)
HEADER_NAMES = st.one_of(
    st.sampled_from(
        [
            b"Host",
            b"Content-Length",
            b"Transfer-Encoding",
            b"Expect",
            b"Connection",
            b"Content-Type",
            b"Upgrade",
            b"Fn-Call-Id",
            b"Fn-Http-Status",
            b"Kiln-Timing",
            b"X-Echo",
            b" Host",
            b"Host ",
        ]
    ),
    st.binary(max_size=16),
)
HEADER_VALUES = st.one_of(
    st.sampled_from(
        [
            b"0",
            b"5",
            b"-1",
            b"+5",
            b"99999999999999999999999",
            b"5, 6",
            b"chunked",
            b"gzip, chunked",
            b"chunked, gzip",
            b"identity",
            b"100-continue",
            b"close",
            b"keep-alive",
            b"upgrade",
            b"h2c",
            b"200",
            b"999",
            b"x" * 9000,
        ]
    ),
    st.binary(max_size=32),
)
HEADERS_NONE = st.tuples(st.just(b""), st.just(b""))
LINE_ENDS = st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n"])


@st.composite
def chunked(draw: st.DrawFn, body: bytes, *, broken: bool) -> bytes:
    """``body`` in chunks: well-formed, or broken in one of the usual ways."""
    if broken:
        kind = draw(st.sampled_from(["bad_size", "no_end", "huge", "negative"]))
    else:
        kind = draw(st.sampled_from(["ok", "ext"]))
    if kind == "bad_size":
        return b"zz\r\n" + body + b"\r\n0\r\n\r\n"
    if kind == "no_end":
        return b"%x\r\n" % len(body) + body
    if kind == "huge":
        return b"fffffffffffffffffff\r\n" + body
    if kind == "negative":
        return b"-5\r\n" + body + b"\r\n0\r\n\r\n"
    ext = b";name=value" if kind == "ext" else b""
    out = b""
    rest = body
    while rest:
        n = draw(st.integers(1, max(1, len(rest))))
        out += b"%x%s\r\n%s\r\n" % (n, ext, rest[:n])
        rest = rest[n:]
    return out + b"0\r\n\r\n"


@dataclass(frozen=True)
class RawRequest:
    data: bytes
    #: after sending: "keep" (wait for an answer), "half_close" (shut down our
    #: sending side, then read) or "close" (close at once)
    ending: str
    #: the first request is a HEAD: its response has no body whatever it says
    head: bool = False

    def __repr__(self) -> str:
        return f"RawRequest({self.data[:300]!r}{'...' if len(self.data) > 300 else ''}, {self.ending!r})"


GOOD_METHODS = st.sampled_from([b"GET", b"POST", b"POST", b"POST", b"PUT", b"HEAD", b"DELETE"])
GOOD_TARGETS = st.sampled_from(
    [b"/invoke/echo", b"/invoke/echo", b"/invoke/echo/a/b?c=d", b"/invoke/nope", b"/healthz"]
)
TOKEN = st.text(
    "abcdefghijklmnopqrstuvwxyz-ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=1, max_size=20
)
GOOD_HEADERS = st.tuples(
    st.one_of(st.sampled_from([b"X-Echo", b"Accept", b"User-Agent"]), TOKEN.map(str.encode)),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40).map(
        lambda v: v.strip().encode()
    ),
)


def mostly(good: st.SearchStrategy[T], bad: st.SearchStrategy[T]) -> st.SearchStrategy[T]:
    """``good`` four times in five: most requests get far enough to reach a function."""
    return st.sampled_from([good, good, good, good, bad]).flatmap(lambda chosen: chosen)


@st.composite
def raw_requests(draw: st.DrawFn) -> RawRequest:
    method = draw(mostly(GOOD_METHODS, METHODS))
    target = draw(mostly(GOOD_TARGETS, TARGETS))
    version = draw(mostly(st.just(b"HTTP/1.1"), VERSIONS))
    eol = draw(mostly(st.just(b"\r\n"), LINE_ENDS))
    body = draw(st.binary(max_size=300))
    headers: list[tuple[bytes, bytes]] = []
    if draw(mostly(st.just(b"y"), st.just(b""))):
        headers.append((b"Host", b"kiln"))
    framing = draw(
        mostly(
            st.sampled_from(["length", "length", "chunked", "none"]),
            st.sampled_from(["both", "wrong_length", "bad_chunked"]),
        )
    )
    if framing == "length":
        headers.append((b"Content-Length", b"%d" % len(body)))
    elif framing == "wrong_length":
        headers.append((b"Content-Length", b"%d" % draw(st.integers(0, 1000))))
    elif framing == "chunked":
        headers.append((b"Transfer-Encoding", b"chunked"))
        body = draw(chunked(body, broken=False))
    elif framing == "bad_chunked":
        headers.append((b"Transfer-Encoding", b"chunked"))
        body = draw(chunked(body, broken=True))
    elif framing == "both":
        headers.append((b"Content-Length", b"%d" % len(body)))
        headers.append((b"Transfer-Encoding", b"chunked"))
        body = draw(chunked(body, broken=False))
    headers += draw(st.lists(GOOD_HEADERS, max_size=5))
    headers += draw(
        mostly(
            st.just([]), st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), min_size=1, max_size=3)
        )
    )
    many = draw(st.sampled_from([0, 0, 0, 0, 0, 0, 40, 63, 70, 150, 300]))
    headers += [(b"X-Many-%d" % i, b"v") for i in range(many)]
    headers = draw(st.permutations(headers)) if len(headers) < 12 else headers
    head = method + b" " + target + b" " + version + eol
    head += b"".join(name + b": " + value + eol for name, value in headers) + eol
    data = head + body
    shape = draw(st.sampled_from(["whole", "whole", "whole", "whole", "cut", "pipelined"]))
    endings = ["keep", "keep", "keep", "half_close", "close"]
    if shape == "cut":
        data = data[: draw(st.integers(0, max(0, len(data) - 1)))]
        endings = ["half_close", "close"]  # else the server rightly waits for the rest
    elif shape == "pipelined":
        data += b"GET /healthz HTTP/1.1\r\nHost: kiln\r\n\r\n"
    return RawRequest(data, draw(st.sampled_from(endings)), head=method == b"HEAD")


_STATUS = re.compile(rb"HTTP/1\.[01] (\d{3}) ")


@dataclass
class Exchange:
    statuses: list[int]
    raw: bytes
    seconds: float


def exchange(host: str, port: int, request: RawRequest, *, timeout: float = 5.0) -> Exchange:
    """Send ``request``; read until the server closes, the first answer is
    complete (``keep``), or ``timeout``. ``statuses`` are the status codes of
    the answers that begin a response (what a body echoes is not counted)."""
    t0 = time.monotonic()
    raw = b""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        try:
            sock.sendall(request.data)
            if request.ending == "close":
                # an abortive close (RST), as a client that crashes does
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return Exchange([], b"", time.monotonic() - t0)
            if request.ending == "half_close":
                sock.shutdown(socket.SHUT_WR)
            deadline = t0 + timeout
            while time.monotonic() < deadline:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = sock.recv(65536)
                if not chunk:
                    break
                raw += chunk
                if request.ending == "keep" and _first_response_complete(raw, request.head):
                    break
        except (TimeoutError, ConnectionError, OSError):
            pass
    return Exchange(_parse(raw, request.head)[0], raw, time.monotonic() - t0)


def _first_response_complete(raw: bytes, head_request: bool) -> bool:
    statuses, complete = _parse(raw, head_request)
    return any(status >= 200 for status in statuses[:complete])


def _parse(raw: bytes, head_request: bool = False) -> tuple[list[int], int]:
    """Status codes of the responses that begin in ``raw``, and how many of them
    are complete (Content-Length framed, chunked, or without a body: 1xx, 204,
    304, and the first final one when ``head``)."""
    out: list[int] = []
    complete = 0
    while raw:
        match = _STATUS.match(raw)
        if match is None:
            break
        status = int(match.group(1))
        out.append(status)
        head, sep, rest = raw.partition(b"\r\n\r\n")
        if not sep:
            break
        if status < 200 or status in (204, 304) or head_request:
            complete += 1
            raw = rest
            if status >= 200:
                head_request = False
            continue
        length = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head)
        if length is not None:
            if len(rest) < int(length.group(1)):
                break
            complete += 1
            raw = rest[int(length.group(1)) :]
            continue
        if re.search(rb"(?im)^transfer-encoding:\s*chunked", head):
            end = rest.find(b"\r\n0\r\n\r\n")
            if end < 0 and not rest.startswith(b"0\r\n\r\n"):
                break
            complete += 1
            raw = rest[end + 7 :] if end >= 0 else rest[5:]
            continue
        break
    return out, complete


def healthy(host: str, port: int) -> bool:
    """``GET /healthz`` answers 200."""
    with contextlib.suppress(OSError):
        got = exchange(host, port, RawRequest(b"GET /healthz HTTP/1.1\r\nHost: k\r\n\r\n", "keep"))
        return got.statuses[:1] == [200]
    return False
