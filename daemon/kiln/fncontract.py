"""The Fn project's ``http-stream`` FDK contract, as pure functions (no I/O).

* The container gets ``FN_LISTENER=unix:/tmp/iofs/lsnr.sock``,
  ``FN_FORMAT=http-stream``, ``FN_MEMORY`` (MB), ``FN_FN_ID``, ``FN_APP_ID``,
  ``FN_TYPE=sync`` plus the function's own env.
* It is ready when ``lsnr.sock`` appears in the bind-mounted dir: a socket, or a
  *relative* symlink to a socket in the same dir (FDKs bind ``phony….sock``,
  chmod it 0666, then symlink). Anything else is a failed start.
* A call is ``POST /call`` with ``Fn-Call-Id``, ``Fn-Deadline`` (RFC 3339) and the
  caller's headers minus hop-by-hop ones. The answer: 200 → passed through, with
  ``Fn-Http-Status`` as the caller's status and ``Fn-Http-H-X`` as caller header
  ``X``; 502 → function error (container kept); 504 → function timeout; any
  other status → the container is broken and must be killed.
"""

from __future__ import annotations

import enum
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

LISTENER_DIR = "/tmp/iofs"
LISTENER_NAME = "lsnr.sock"

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"content-length",
    }
)


def container_env(function: str, memory_bytes: int, extra: Mapping[str, str]) -> dict[str, str]:
    """The env an Fn FDK expects (the function's own env may add to it, not override it)."""
    return {
        **extra,
        "FN_LISTENER": f"unix:{LISTENER_DIR}/{LISTENER_NAME}",
        "FN_FORMAT": "http-stream",
        "FN_MEMORY": str(memory_bytes // (1024 * 1024)),
        "FN_FN_ID": function,
        "FN_APP_ID": "kiln",
        "FN_TYPE": "sync",
    }


def format_deadline(unix_seconds: float) -> str:
    """RFC 3339 in UTC with milliseconds: ``2026-11-23T10:00:00.123Z``."""
    dt = datetime.fromtimestamp(unix_seconds, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def call_request_headers(
    call_id: str, deadline_unix: float, caller_headers: Iterable[tuple[bytes, bytes]]
) -> list[tuple[bytes, bytes]]:
    """Headers of ``POST /call``: the caller's (minus hop-by-hop and Fn-*), plus Fn's own."""
    out = [
        (k, v)
        for k, v in caller_headers
        if k.lower() not in HOP_BY_HOP and not k.lower().startswith(b"fn-")
    ]
    out.append((b"fn-call-id", call_id.encode()))
    out.append((b"fn-deadline", format_deadline(deadline_unix).encode()))
    return out


class Verdict(enum.Enum):
    OK = "ok"
    FUNCTION_ERROR = "function_error"  # 502: the function failed; the container is fine
    TIMEOUT = "timeout"  # 504: the function says it ran out of time
    BROKEN = "broken"  # anything else: kill the container


@dataclass(frozen=True)
class Outcome:
    verdict: Verdict
    status: int
    headers: tuple[tuple[bytes, bytes], ...]


_PASS_THROUGH = (b"content-type",)
_H_PREFIX = b"fn-http-h-"


def interpret_response(status: int, headers: Iterable[tuple[bytes, bytes]]) -> Outcome:
    """What a container's answer to ``POST /call`` means for the caller and the container."""
    if status == 502:
        return Outcome(Verdict.FUNCTION_ERROR, 502, ())
    if status == 504:
        return Outcome(Verdict.TIMEOUT, 504, ())
    if status != 200:
        return Outcome(Verdict.BROKEN, 502, ())
    caller_status = 200
    out: list[tuple[bytes, bytes]] = []
    for k, v in headers:
        key = k.lower()
        if key == b"fn-http-status":
            try:
                caller_status = int(v)
            except ValueError:
                return Outcome(Verdict.BROKEN, 502, ())
            if not 100 <= caller_status <= 599:
                return Outcome(Verdict.BROKEN, 502, ())
        elif key.startswith(_H_PREFIX):
            name = key[len(_H_PREFIX) :]
            if name and name not in HOP_BY_HOP:
                out.append((name, v))
        elif key in _PASS_THROUGH:
            out.append((key, v))
    return Outcome(Verdict.OK, caller_status, tuple(out))


class ListenerKind(enum.Enum):
    NOT_YET = "not_yet"
    READY = "ready"
    INVALID = "invalid"


@dataclass(frozen=True)
class ListenerState:
    kind: ListenerKind
    socket: Path | None = None
    reason: str = ""


def check_listener(directory: Path) -> ListenerState:
    """Inspect ``directory/lsnr.sock`` (lstat/readlink only; never follows out of the dir)."""
    path = directory / LISTENER_NAME
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return ListenerState(ListenerKind.NOT_YET)
    if stat.S_ISSOCK(st.st_mode):
        return ListenerState(ListenerKind.READY, path)
    if not stat.S_ISLNK(st.st_mode):
        return ListenerState(ListenerKind.INVALID, reason=f"{LISTENER_NAME} is not a socket")
    target = os.readlink(path)
    if os.path.isabs(target):
        return ListenerState(
            ListenerKind.INVALID, reason=f"{LISTENER_NAME} is an absolute symlink ({target})"
        )
    if "/" in target or target in (".", ".."):
        return ListenerState(
            ListenerKind.INVALID,
            reason=f"{LISTENER_NAME} links outside its directory ({target})",
        )
    real = directory / target
    try:
        tst = os.lstat(real)
    except FileNotFoundError:
        return ListenerState(
            ListenerKind.INVALID, reason=f"{LISTENER_NAME} links to {target}, which does not exist"
        )
    if not stat.S_ISSOCK(tst.st_mode):
        return ListenerState(
            ListenerKind.INVALID, reason=f"{LISTENER_NAME} links to {target}, which is not a socket"
        )
    return ListenerState(ListenerKind.READY, real)
