"""The invoke API: a plain ASGI app, served by :mod:`kiln.httpserver`.

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

import json
import logging
import math
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from functools import partial
from typing import Any

from kiln.calls.errors import BodyTooLarge, CallError
from kiln.calls.lifecycle import CallerGone, Calls
from kiln.fncontract import INVOKE_METHODS, HttpRequest, split_invoke_target
from kiln.metrics import CONTENT_TYPE, Metrics

log = logging.getLogger("kiln.api")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

INVOKE_PREFIX = "/invoke/"
INVOKE_PREFIX_RAW = INVOKE_PREFIX.encode()


def new_call_id() -> str:
    return secrets.token_hex(8)


def error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode() + b"\n"


async def lifespan(receive: Receive, send: Send) -> None:
    """ASGI lifespan: Kiln's apps have nothing to set up, so just acknowledge."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def invoke_target(scope: Scope) -> tuple[str, HttpRequest]:
    """``/invoke/NAME[/sub/path][?query]`` → the function's name and the request it sees."""
    raw: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
    if not raw.startswith(INVOKE_PREFIX_RAW):  # the prefix itself was percent-encoded
        raw = scope["path"].encode("utf-8")
    name, url = split_invoke_target(raw[len(INVOKE_PREFIX_RAW) :], scope.get("query_string", b""))
    return name, HttpRequest(scope["method"], url)


async def wait_for_disconnect(receive: Receive) -> None:
    """Return once the caller has disconnected (call after the body is read)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def read_call_body(scope: Scope, receive: Receive, max_body: int) -> bytes:
    """A call's request body, at most ``max_body`` bytes (413 otherwise; refused
    from ``Content-Length`` before reading). Raises :class:`CallerGone` if the
    caller disconnects first."""
    for key, value in scope["headers"]:
        if key == b"content-length":
            try:
                declared = int(value)
            except ValueError:
                raise CallError("bad Content-Length", status=400, code="bad_request") from None
            if declared > max_body:
                raise BodyTooLarge(
                    f"body of {declared} bytes is over the limit of {max_body} bytes "
                    "([daemon] max_body)"
                )
    chunks: list[bytes] = []
    total = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise CallerGone
        chunk: bytes = message.get("body", b"")
        total += len(chunk)
        if total > max_body:
            raise BodyTooLarge(f"body is over the limit of {max_body} bytes ([daemon] max_body)")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


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
        caller_gone=partial(wait_for_disconnect, receive),
        http=http,
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
            await run_call(self.calls, scope, receive, send, call_id, name, self.max_body, http)
        else:
            await send_error(
                send, call_id, CallError(f"no route {path}", status=404, code="not_found")
            )
