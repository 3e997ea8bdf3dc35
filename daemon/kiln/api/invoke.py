"""The invoke API: a plain ASGI app, served by :mod:`kiln.http`.

``/invoke/{name}`` and ``/invoke/{name}/{sub/path}`` run a call, with any of
:data:`~kiln.fncontract.INVOKE_METHODS` (the function sees the method, sub-path
and query string); ``GET /healthz`` says the daemon is up.
Every response carries ``Kiln-Call-Id``; every error body is
``{"error": {"code": ..., "message": ...}}``. A call runs through
:meth:`kiln.calls.lifecycle.Calls.call`; this module only translates HTTP to it
and its result back (:func:`run_call`, which the control API's invoke shares).
If the caller disconnects while its call runs, the call is cancelled (and its
container removed).
"""

from __future__ import annotations

import logging
import math
import secrets
from functools import partial
from typing import TYPE_CHECKING

from kiln.asyncq.headers import is_async
from kiln.calls.errors import CallError
from kiln.calls.lifecycle import CallerGone, Calls
from kiln.fncontract import INVOKE_METHODS, HttpRequest, split_invoke_target
from kiln.http.asgi import (
    DISCONNECT_WATCH,
    ClientGone,
    Receive,
    Scope,
    Send,
    error_body,
    lifespan,
    read_body,
)
from kiln.metrics import CONTENT_TYPE, Metrics

if TYPE_CHECKING:
    from kiln.asyncq.http import CallsRoutes

log = logging.getLogger("kiln.api")

INVOKE_PREFIX = "/invoke/"
INVOKE_PREFIX_RAW = INVOKE_PREFIX.encode()


def new_call_id() -> str:
    return secrets.token_hex(8)


def invoke_target(scope: Scope) -> tuple[str, HttpRequest]:
    """``/invoke/NAME[/sub/path][?query]`` → the function's name and the request it sees."""
    raw: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
    if not raw.startswith(INVOKE_PREFIX_RAW):  # the prefix itself was percent-encoded
        raw = scope["path"].encode("utf-8")
    name, url = split_invoke_target(raw[len(INVOKE_PREFIX_RAW) :], scope.get("query_string", b""))
    return name, HttpRequest(scope["method"], url)


async def read_call_body(scope: Scope, receive: Receive, max_body: int) -> bytes:
    """A call's request body, at most ``max_body`` bytes (413 otherwise; refused
    from ``Content-Length`` before reading). Raises :class:`CallerGone` if the
    caller disconnects first."""
    try:
        return await read_body(scope, receive, max_body, setting="[daemon] max_body")
    except ClientGone:
        raise CallerGone from None


def client_of(scope: Scope) -> str:
    """Who called, for the call's log line: the peer address, and the
    ``X-Forwarded-For`` a proxy in front added (``203.0.113.9,127.0.0.1``)."""
    peer = scope.get("client")
    text = str(peer[0]) if peer else "local"
    for key, value in scope.get("headers", ()):
        if key == b"x-forwarded-for":
            forwarded = "".join(
                c for c in value.decode("latin-1")[:200] if c.isalnum() or c in ".:,[]"
            )
            return f"{forwarded},{text}" if forwarded else text
    return text


async def run_call(
    calls: Calls,
    scope: Scope,
    receive: Receive,
    send: Send,
    call_id: str,
    name: str,
    max_body: int,
    http: HttpRequest | None = None,
) -> None:
    """Run a call for an HTTP caller and answer it: the one translation from
    :class:`CallResult` to HTTP (both APIs' invoke routes use it)."""
    result = await calls.call(
        name,
        partial(read_call_body, scope, receive, max_body),
        call_id=call_id,
        headers=scope["headers"],
        disconnect=scope.get("extensions", {}).get(DISCONNECT_WATCH),
        http=http,
        client=client_of(scope),
    )
    if result.caller_gone:
        return  # nobody to answer; the call's log line says 499
    timing = (b"kiln-timing", result.timings.header())
    if result.error is not None:
        await send_error(send, call_id, result.error, [timing])
        return
    headers = [*result.headers, timing]
    if result.timings.cold:
        headers.append((b"kiln-cold", b"1"))
    await respond(send, result.status, call_id, result.body, extra=headers)


async def send_error(
    send: Send, call_id: str, error: CallError, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    """Answer with ``error`` as a JSON error body (and ``Retry-After`` if it has one)."""
    headers = list(extra or [])
    if error.retry_after is not None:
        headers.insert(0, (b"retry-after", str(max(1, math.ceil(error.retry_after))).encode()))
    await respond(
        send,
        error.status,
        call_id,
        error_body(error.code, error.message),
        json_ct=True,
        extra=headers,
    )


async def respond(
    send: Send,
    status: int,
    call_id: str,
    body: bytes,
    *,
    json_ct: bool = False,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [
        (b"kiln-call-id", call_id.encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    if json_ct:
        headers.append((b"content-type", b"application/json"))
    if extra:
        headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def not_allowed(send: Send, call_id: str, *allow: str) -> None:
    """405, with ``Allow`` listing the methods the route takes."""
    await send_error(
        send,
        call_id,
        CallError(f"use {', '.join(allow)}", status=405, code="method_not_allowed"),
        [(b"allow", ", ".join(allow).encode())],
    )


class InvokeApp:
    def __init__(self, calls: Calls, *, max_body: int, metrics: Metrics | None = None) -> None:
        self.calls = calls
        self.max_body = max_body
        self.metrics = metrics
        #: Async calls (``Kiln-Invoke-Type: async``) and ``/calls``, when enabled.
        self.calls_routes: CallsRoutes | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        call_id = new_call_id()
        path: str = scope["path"]
        method: str = scope["method"]
        if path == "/metrics" and self.metrics is not None and method == "GET":
            body = self.metrics.render()
            await respond(
                send, 200, call_id, body, extra=[(b"content-type", CONTENT_TYPE.encode())]
            )
        elif path == "/healthz":
            await respond(send, 200, call_id, b'{"status":"ok"}\n', json_ct=True)
        elif path == "/metrics" and self.metrics is not None:
            await not_allowed(send, call_id, "GET")
        elif path.startswith(INVOKE_PREFIX):
            if method not in INVOKE_METHODS:
                await not_allowed(send, call_id, *INVOKE_METHODS)
                return
            name, http = invoke_target(scope)
            if self.calls_routes is not None and is_async(scope["headers"]):
                await self.calls_routes.accept(scope, receive, send, name, http)
                return
            await run_call(self.calls, scope, receive, send, call_id, name, self.max_body, http)
        elif self.calls_routes is not None and await self.calls_routes.route(scope, receive, send):
            return
        else:
            await send_error(
                send, call_id, CallError(f"no route {path}", status=404, code="not_found")
            )
