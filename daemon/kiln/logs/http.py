"""``GET /functions/{name}/logs`` on the control API.

Query: ``since`` (``90s``, ``10m``, ``2h``, ``1d`` ago; RFC 3339; or Unix
seconds), ``call=ID``, ``tail=N`` (the last N matching lines), ``follow=1``
(keep the response open and stream new lines as they come). The answer is
newline-delimited JSON when ``Accept`` asks for ``application/x-ndjson`` or
``application/json``, else text, one line each:
``2026-12-02T07:04:05.123Z CALLID stderr: the text``.

A follower that cannot keep up is told how many lines it missed; following
ends when the client goes away or the daemon stops.
"""

from __future__ import annotations

import calendar
import json
import re
import urllib.parse
from dataclasses import dataclass

import trio

from kiln.calls.errors import CallError
from kiln.http.asgi import Receive, Scope, Send
from kiln.logs.lines import LogLine
from kiln.logs.service import Logs
from kiln.logs.store import Query

NDJSON = b"application/x-ndjson"
TEXT = b"text/plain; charset=utf-8"
MAX_TAIL = 1_000_000

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_RFC3339 = re.compile(
    r"^(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(\.\d+)?(?:([Zz])|([+-])(\d\d):(\d\d))$"
)


class BadLogsRequest(CallError):
    status = 400
    code = "bad_request"


def parse_since(text: str, now: float) -> float:
    """``10m`` (ago), an RFC 3339 time, or Unix seconds → Unix seconds."""
    m = _DURATION.match(text)
    if m:
        return now - float(m.group(1)) * _UNITS[m.group(2)]
    m = _RFC3339.match(text)
    if m:
        y, mo, d, h, mi, s = (int(m.group(i)) for i in range(1, 7))
        try:
            t = float(calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0)))
        except (ValueError, OverflowError) as e:
            raise BadLogsRequest(f"since: not a valid time: {text!r}") from e
        if m.group(7):
            t += float(m.group(7))
        if m.group(9):
            offset = int(m.group(10)) * 3600 + int(m.group(11)) * 60
            t -= offset if m.group(9) == "+" else -offset
        return t
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if value == value and abs(value) < 1e11:  # not NaN, a plausible Unix time
        return value
    raise BadLogsRequest(
        f"since: give a duration (90s, 10m, 2h, 1d), an RFC 3339 time or Unix seconds, got {text!r}"
    )


@dataclass(frozen=True)
class LogsRequest:
    query: Query
    follow: bool
    ndjson: bool


def parse_request(query_string: bytes, accept: bytes, now: float) -> LogsRequest:
    try:
        params = urllib.parse.parse_qs(
            query_string.decode("latin-1"), keep_blank_values=True, strict_parsing=False
        )
    except ValueError as e:
        raise BadLogsRequest(f"bad query string: {e}") from e
    known = {"since", "call", "tail", "follow"}
    unknown = sorted(set(params) - known)
    if unknown:
        raise BadLogsRequest(f"unknown parameter {unknown[0]!r} (known: call, follow, since, tail)")

    def one(key: str) -> str | None:
        values = params.get(key)
        return values[-1] if values else None

    since_text = one("since")
    since = parse_since(since_text, now) if since_text else None
    tail: int | None = None
    tail_text = one("tail")
    if tail_text is not None and tail_text not in ("", "all"):
        if not tail_text.isdigit() or int(tail_text) > MAX_TAIL:
            raise BadLogsRequest(f"tail: give a number of lines (0..{MAX_TAIL}), got {tail_text!r}")
        tail = int(tail_text)
    follow_text = (one("follow") or "").lower()
    if follow_text not in ("", "0", "1", "true", "false", "yes", "no"):
        raise BadLogsRequest(f"follow: give 1 or 0, got {follow_text!r}")
    call = one("call") or None
    lowered = accept.lower()
    ndjson = b"application/x-ndjson" in lowered or b"application/json" in lowered
    return LogsRequest(
        Query(since=since, call=call, tail=tail),
        follow=follow_text in ("1", "true", "yes"),
        ndjson=ndjson,
    )


def render(lines: list[LogLine], ndjson: bool) -> bytes:
    if ndjson:
        return b"".join(
            json.dumps(line.to_json(), ensure_ascii=False).encode() + b"\n" for line in lines
        )
    return "".join(line.format_text() + "\n" for line in lines).encode("utf-8", "replace")


def _missed(n: int, ndjson: bool) -> bytes:
    text = f"[kiln: this follower missed {n} line(s): it read too slowly]"
    if ndjson:
        return json.dumps({"stream": "kiln", "text": text, "missed": n}).encode() + b"\n"
    return text.encode() + b"\n"


async def serve_logs(
    logs: Logs,
    name: str,
    scope: Scope,
    receive: Receive,
    send: Send,
    *,
    extra_headers: list[tuple[bytes, bytes]],
) -> None:
    """Answer one logs request (the function is known to exist)."""
    accept = b""
    for key, value in scope.get("headers", []):
        if key == b"accept":
            accept = value
    req = parse_request(scope.get("query_string", b""), accept, logs.wall_clock())
    ctype = NDJSON if req.ndjson else TEXT
    headers = [(b"content-type", ctype), *extra_headers]
    if not req.follow:
        body = render(logs.query(name, req.query), req.ndjson)
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return
    with logs.follow(name, call=req.query.call) as follower:
        backlog = logs.query(name, req.query)
        last = backlog[-1].seq if backlog else 0
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send(
            {"type": "http.response.body", "body": render(backlog, req.ndjson), "more_body": True}
        )
        async with trio.open_nursery() as nursery:

            async def watch_disconnect() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch_disconnect)
            async for line in follower.receive:
                batch = [line]
                while True:  # take whatever else is already there: one write for all
                    try:
                        batch.append(follower.receive.receive_nowait())
                    except trio.WouldBlock:
                        break
                out = b""
                missed = follower.take_dropped()
                if missed:
                    out += _missed(missed, req.ndjson)
                fresh = [
                    x
                    for x in batch
                    if x.seq > last and (req.query.since is None or x.time >= req.query.since)
                ]
                if fresh:
                    last = fresh[-1].seq
                out += render(fresh, req.ndjson)
                if out:
                    await send({"type": "http.response.body", "body": out, "more_body": True})
    # The follow ends when the client leaves (the send fails or the scope is
    # cancelled) or the daemon stops; there is no orderly end to write.
    await send({"type": "http.response.body", "body": b"", "more_body": False})
