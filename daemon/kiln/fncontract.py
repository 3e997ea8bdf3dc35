"""The Fn project's ``http-stream`` call contract, as pure functions (no I/O but one ``lstat``).

This module says *what* is exchanged with a hot container; :mod:`kiln.hot.readiness`
and :mod:`kiln.hot.httpstream` do the waiting and the socket I/O.

The contract (what an unchanged Fn function image expects):

* Kiln bind-mounts a fresh host dir at ``/tmp/iofs`` and sets
  ``FN_LISTENER=unix:/tmp/iofs/lsnr.sock``, ``FN_FORMAT=http-stream``,
  ``FN_MEMORY`` (MB), ``FN_FN_ID``, ``FN_APP_ID``, ``FN_TYPE`` (:func:`container_env`).
* The function is ready when ``lsnr.sock`` appears in that dir: a socket, or a
  *relative* symlink to a socket in the same dir (Fn FDKs bind
  ``phony<random>.sock``, chmod it 0666, then symlink ``lsnr.sock`` to it so the
  name only appears once the socket listens). Anything else is a failed start
  (:func:`check_listener`).
* Each call is ``POST /call`` on that socket (HTTP/1.1 keep-alive, one request
  at a time), shaped as Fn's HTTP trigger shapes it (:func:`call_request_headers`):
  ``Fn-Call-Id``, ``Fn-Deadline``, ``Fn-Intent: httprequest``,
  ``Fn-Http-Method`` and ``Fn-Http-Request-Url`` (the caller's method, and the
  path after ``/invoke/NAME`` plus the query string, :class:`HttpRequest`), the
  caller's end-to-end headers as ``Fn-Http-H-<Name>``, and ``Content-Type``
  also as itself (FDKs read the body's type from it).
* The answer (:func:`interpret_response`): 200 → the call's result, with the
  caller-facing status in ``Fn-Http-Status`` and caller headers as
  ``Fn-Http-H-<name>``; 502 → the function failed, the container is kept;
  504 → the function timed out; anything else → the container broke the
  contract and is killed.
"""

from __future__ import annotations

import enum
import errno
import os
import stat
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

#: Where the per-container dir is mounted inside the container, and the socket name in it.
IOFS_MOUNT = "/tmp/iofs"
LISTENER_NAME = "lsnr.sock"
FN_FORMAT = "http-stream"
FN_APP_ID = "kiln"

_MiB = 1024 * 1024

# ---- the container's environment -------------------------------------------


def container_env(
    function_name: str, memory_bytes: int, extra: Mapping[str, str]
) -> dict[str, str]:
    """The environment of a hot container: the function's own env plus the Fn variables.

    The contract variables win over a function env entry of the same name, so a
    function's config cannot point the FDK at a socket Kiln does not watch.
    ``FN_MEMORY`` is in MB (MiB, rounded down, at least 1), as Fn FDKs expect.
    """
    env = dict(extra)
    env.update(
        {
            "FN_LISTENER": f"unix:{IOFS_MOUNT}/{LISTENER_NAME}",
            "FN_FORMAT": FN_FORMAT,
            "FN_MEMORY": str(max(1, memory_bytes // _MiB)),
            "FN_FN_ID": function_name,
            "FN_APP_ID": FN_APP_ID,
            "FN_TYPE": "sync",
        }
    )
    return env


# ---- the request -----------------------------------------------------------


def format_deadline(unix_seconds: float) -> str:
    """RFC 3339 UTC with milliseconds, e.g. ``2026-11-23T10:00:00.123Z``.

    Sub-millisecond parts are truncated (never rounded up), so the function
    never sees a deadline later than the real one.
    """
    micros = round(unix_seconds * 1_000_000)
    seconds, micro = divmod(micros, 1_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{micro // 1000:03d}Z"


#: Hop-by-hop headers (RFC 9110 §7.6.1) plus those the HTTP client sets itself.
HOP_BY_HOP: frozenset[bytes] = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"content-length",
    }
)

#: Also not forwarded on a call: Kiln has already read the whole body from the caller.
_NOT_FORWARDED: frozenset[bytes] = HOP_BY_HOP | {b"expect"}

_FN_PREFIX = b"fn-"
_FN_HTTP_H = b"fn-http-h-"
_FN_HTTP_STATUS = b"fn-http-status"
_KILN_PREFIX = b"kiln-"
_CONTENT_TYPE = b"content-type"


def _connection_tokens(headers: list[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """Header names a ``Connection:`` header declares hop-by-hop (RFC 9110 §7.6.1)."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return frozenset(tokens)


#: The methods a function can be invoked with (``/invoke/NAME`` answers others with 405).
INVOKE_METHODS: tuple[str, ...] = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """The caller's request as a function sees it: its method and its URL.

    ``url`` is the path after ``/invoke/NAME`` (``/`` when there is none) plus
    ``?query`` when the caller sent one, as the caller spelled them
    (percent-encoding kept): ``/invoke/thumbs/a%20b?w=64`` → ``/a%20b?w=64``.
    """

    method: str = "POST"
    url: str = "/"

    @property
    def path(self) -> str:
        return self.url.partition("?")[0]

    @property
    def query(self) -> str:
        return self.url.partition("?")[2]


#: A call with no HTTP request of its own behind it (the control API's invoke, a benchmark).
PLAIN_POST = HttpRequest()


def split_invoke_target(rest: bytes, query: bytes) -> tuple[str, str]:
    """``rest`` is the raw path after ``/invoke/``: → (function name, :attr:`HttpRequest.url`).

    >>> split_invoke_target(b"thumbs/a/b", b"w=64")
    ('thumbs', '/a/b?w=64')
    """
    name, slash, sub = rest.partition(b"/")
    url = (b"/" + sub if slash else b"/") + (b"?" + query if query else b"")
    return name.decode("latin-1"), url.decode("latin-1")


def call_request_headers(
    call_id: str,
    deadline_unix: float,
    caller_headers: Iterable[tuple[bytes, bytes]],
    http: HttpRequest | None = None,
) -> list[tuple[bytes, bytes]]:
    """The headers of ``POST /call``, as Fn's HTTP trigger sends them.

    ``Fn-Call-Id``, ``Fn-Deadline``, ``Fn-Intent: httprequest``,
    ``Fn-Http-Method``, ``Fn-Http-Request-Url``, then each forwarded caller
    header as ``Fn-Http-H-<Name>`` (and ``Content-Type`` also as itself).

    Not forwarded: hop-by-hop headers (:data:`HOP_BY_HOP` and any named in
    ``Connection:``), ``Host`` and ``Content-Length`` (the client sets those),
    ``Expect`` (the body is already read), and every ``Fn-*`` header — that
    namespace belongs to the runner, so a caller cannot forge ``Fn-Call-Id``,
    ``Fn-Deadline``, the trigger's headers or the response-side ``Fn-Http-*``
    ones. Names keep their spelling; values are passed unchanged (the invoke
    API's HTTP server has already validated them).
    """
    http = http or PLAIN_POST
    out: list[tuple[bytes, bytes]] = [
        (b"Fn-Call-Id", call_id.encode("ascii")),
        (b"Fn-Deadline", format_deadline(deadline_unix).encode("ascii")),
        (b"Fn-Intent", b"httprequest"),
        (b"Fn-Http-Method", http.method.encode("latin-1")),
        (b"Fn-Http-Request-Url", http.url.encode("latin-1")),
    ]
    for name, value in forwarded_headers(caller_headers):
        if name.lower() == _CONTENT_TYPE:
            out.append((name, value))
        out.append((b"Fn-Http-H-" + name, value))
    return out


def forwarded_headers(
    caller_headers: Iterable[tuple[bytes, bytes]],
) -> list[tuple[bytes, bytes]]:
    """The caller's end-to-end headers that reach a function (see :func:`call_request_headers`)."""
    headers = list(caller_headers)
    extra_hop = _connection_tokens(headers)
    return [
        (name, value)
        for name, value in headers
        if not (
            (lower := name.lower()) in _NOT_FORWARDED
            or lower.startswith(_FN_PREFIX)
            or lower in extra_hop
        )
    ]


# ---- the response ----------------------------------------------------------


class Verdict(enum.Enum):
    """What a function's answer means for the call and for its container."""

    #: 200: the call's result (its caller-facing status may still be an error).
    OK = "ok"
    #: 502: the function failed; the container stays in service.
    FUNCTION_ERROR = "function_error"
    #: 504: the function reported that it ran out of time.
    TIMEOUT = "timeout"
    #: 400, 413, 414, 431: the FDK refused a request the caller shaped (too many or
    #: too large headers, a body it cannot take). The caller's error, passed on
    #: with that status; the container stays in service.
    REJECTED = "rejected"
    #: Any other status, or a protocol error: the container must be killed.
    BROKEN = "broken"


#: What an FDK's HTTP server answers to a request it cannot take as shaped.
CALLER_SHAPED = frozenset({400, 413, 414, 431})


@dataclass(frozen=True, slots=True)
class Outcome:
    """A function's answer, translated for the caller.

    ``headers`` are lowercase names (as ASGI wants), without the ``Fn-*``
    internals; for any verdict but OK they are empty.
    """

    verdict: Verdict
    status: int
    headers: tuple[tuple[bytes, bytes], ...] = ()


def _caller_status(raw: bytes | None) -> int:
    """``Fn-Http-Status`` → the caller's status. Like Fn, a missing or unusable one means 200."""
    if raw is None:
        return 200
    raw = raw.strip()
    if not raw.isdigit() or len(raw) != 3:
        return 200
    status = int(raw)
    return status if 200 <= status <= 599 else 200


def interpret_response(status: int, headers: list[tuple[bytes, bytes]]) -> Outcome:
    """Map the function's HTTP answer to a :class:`Verdict`, a caller status and caller headers.

    On 200: ``Fn-Http-Status`` gives the caller's status (missing, not a
    number or outside 200–599: 200, as Fn does); each ``Fn-Http-H-X: v`` becomes
    ``x: v``, except hop-by-hop names, ``Content-Length`` and Kiln's own
    ``Kiln-*`` headers; the response's own ``Content-Type`` is passed unless an
    ``Fn-Http-H-Content-Type`` already gave one. Every other header (``Date``,
    ``Server``, ``Fn-*`` internals, hop-by-hop) is dropped.
    """
    if status == 502:
        return Outcome(Verdict.FUNCTION_ERROR, 502)
    if status == 504:
        return Outcome(Verdict.TIMEOUT, 504)
    if status in CALLER_SHAPED:
        return Outcome(Verdict.REJECTED, status)
    if status != 200:
        return Outcome(Verdict.BROKEN, 502)
    out: list[tuple[bytes, bytes]] = []
    fn_status: bytes | None = None
    content_type: bytes | None = None
    mapped_content_type = False
    for name, value in headers:
        lower = name.lower()
        if lower.startswith(_FN_HTTP_H):
            real = lower[len(_FN_HTTP_H) :]
            if not real or real in HOP_BY_HOP or real.startswith(_KILN_PREFIX):
                continue
            if real == _CONTENT_TYPE:
                mapped_content_type = True
            out.append((real, value))
        elif lower == _FN_HTTP_STATUS:
            if fn_status is None:
                fn_status = value
        elif lower == _CONTENT_TYPE and content_type is None:
            content_type = value
    if content_type is not None and not mapped_content_type:
        out.append((_CONTENT_TYPE, content_type))
    return Outcome(Verdict.OK, _caller_status(fn_status), tuple(out))


# ---- readiness: what lsnr.sock is ----------------------------------------------


@dataclass(frozen=True, slots=True)
class NotYet:
    """``lsnr.sock`` is not there (yet)."""


@dataclass(frozen=True, slots=True)
class Ready:
    """``lsnr.sock`` is usable; ``socket`` is the real socket (the symlink's target, resolved)."""

    socket: Path


@dataclass(frozen=True, slots=True)
class Invalid:
    """``lsnr.sock`` is there but breaks the contract: a failed start."""

    reason: str


ListenerState = NotYet | Ready | Invalid

NOT_YET = NotYet()


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "a regular file"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISLNK(mode):
        return "a symlink"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    return "not a socket"


def check_listener(dir: Path) -> ListenerState:
    """Inspect ``dir/lsnr.sock`` with ``lstat``/``readlink`` (never following links).

    * missing → :data:`NOT_YET`
    * a socket → ``Ready(dir/lsnr.sock)``
    * a symlink whose target is a bare name (``phonyXXXX.sock`` or
      ``./phonyXXXX.sock``) of a socket in ``dir`` → ``Ready(dir/<target>)``
    * anything else → :class:`Invalid`: an absolute symlink, one that leaves
      ``dir`` or goes through a subdirectory, a dangling one, one to a non-socket
      or to another symlink, or a ``lsnr.sock`` that is not a socket.

    A dangling symlink is final, not "not yet": the FDK pattern creates the
    socket *before* the symlink, so when the link appears its target exists.
    """
    link = dir / LISTENER_NAME
    try:
        st = os.lstat(link)
    except FileNotFoundError:
        return NOT_YET
    except OSError as e:
        return Invalid(f"cannot inspect {LISTENER_NAME}: {e.strerror or e}")
    if stat.S_ISSOCK(st.st_mode):
        return Ready(link)
    if not stat.S_ISLNK(st.st_mode):
        return Invalid(f"{LISTENER_NAME} is {_kind(st.st_mode)}, not a socket")
    try:
        target = os.readlink(link)
    except FileNotFoundError:
        return NOT_YET  # replaced between lstat and readlink: look again on the next event
    except OSError as e:
        return Invalid(f"cannot read the {LISTENER_NAME} symlink: {e.strerror or e}")
    if os.path.isabs(target):
        return Invalid(
            f"{LISTENER_NAME} is an absolute symlink (-> {target}); "
            "it must be relative, to a socket in the same directory"
        )
    name = os.path.normpath(target)
    if name in (".", "..", LISTENER_NAME) or os.sep in name:
        return Invalid(f"{LISTENER_NAME} -> {target} does not name a socket in the same directory")
    real = dir / name
    try:
        tst = os.lstat(real)
    except FileNotFoundError:
        return Invalid(f"{LISTENER_NAME} -> {target} is a dangling symlink")
    except OSError as e:
        if e.errno == errno.ENOTDIR:
            return Invalid(f"{LISTENER_NAME} -> {target} is a dangling symlink")
        return Invalid(f"cannot inspect {LISTENER_NAME} -> {target}: {e.strerror or e}")
    if not stat.S_ISSOCK(tst.st_mode):
        return Invalid(f"{LISTENER_NAME} -> {target}, which is {_kind(tst.st_mode)}, not a socket")
    return Ready(real)
