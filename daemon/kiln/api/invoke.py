"""The invoke API: a plain ASGI app, served by :mod:`kiln.httpserver`.

``/invoke/{name}`` and ``/invoke/{name}/{sub/path}`` run a call, with any of
:data:`~kiln.fncontract.INVOKE_METHODS` (the function sees the method, sub-path
and query string); ``GET /healthz`` says the daemon is up.
Every response carries ``Kiln-Call-Id``; every error body is
``{"error": {"code": ..., "message": ...}}``. If the caller disconnects while its
call runs, the call is cancelled (and its container removed).
"""

from __future__ import annotations

import json
import logging
import math
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import trio

from kiln.calls.errors import BodyTooLarge, CallError
from kiln.calls.lifecycle import Invoker, Timings
from kiln.fncontract import INVOKE_METHODS, HttpRequest, split_invoke_target
from kiln.metrics import CONTENT_TYPE, Metrics
from kiln.trioutil import open_nursery

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


class ClientGone(Exception):
    """The caller disconnected before its call was answered."""


class InvokeApp:
    def __init__(self, invoker: Invoker, *, max_body: int, metrics: Metrics | None = None) -> None:
        self.invoker = invoker
        self.max_body = max_body
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        call_id = new_call_id()
        path: str = scope["path"]
        method: str = scope["method"]
        try:
            if path == "/metrics" and self.metrics is not None and method == "GET":
                body = self.metrics.render()
                await send(
                    {
                        "type": "http.response.start",
                        "status": 200,
                        "headers": [
                            (b"content-type", CONTENT_TYPE.encode()),
                            (b"content-length", str(len(body)).encode()),
                            (b"kiln-call-id", call_id.encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
            elif path == "/healthz":
                await self._respond(send, 200, call_id, b'{"status":"ok"}\n', json_ct=True)
            elif path == "/metrics" and self.metrics is not None:
                await self._not_allowed(send, call_id, "GET")
            elif path.startswith(INVOKE_PREFIX):
                if method not in INVOKE_METHODS:
                    await self._not_allowed(send, call_id, *INVOKE_METHODS)
                    return
                name, http = invoke_target(scope)
                await self._invoke(scope, receive, send, call_id, name, http)
            else:
                await self._error(
                    send, call_id, CallError(f"no route {path}", status=404, code="not_found")
                )
        except ClientGone:
            log.info("call %s: caller disconnected", call_id)

    async def _not_allowed(self, send: Send, call_id: str, *allow: str) -> None:
        await self._respond(
            send,
            405,
            call_id,
            error_body("method_not_allowed", f"use {', '.join(allow)}"),
            json_ct=True,
            extra=[(b"allow", ", ".join(allow).encode())],
        )

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        await lifespan(receive, send)

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        for key, value in scope["headers"]:
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    raise CallError("bad Content-Length", status=400, code="bad_request") from None
                if declared > self.max_body:
                    raise BodyTooLarge(
                        f"body of {declared} bytes is over the limit of {self.max_body} bytes "
                        "([daemon] max_body)"
                    )
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk: bytes = message.get("body", b"")
            total += len(chunk)
            if total > self.max_body:
                raise BodyTooLarge(
                    f"body is over the limit of {self.max_body} bytes ([daemon] max_body)"
                )
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _invoke(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        call_id: str,
        name: str,
        http: HttpRequest,
    ) -> None:
        timings = Timings()
        t0 = trio.current_time()
        status = 500
        try:
            self.invoker.lookup(name)
            body = await self._read_body(scope, receive)
            result = None
            gone = False

            async def watch_disconnect(cancel: trio.CancelScope) -> None:
                nonlocal gone
                while (await receive())["type"] != "http.disconnect":
                    pass
                gone = True
                cancel.cancel()

            async with open_nursery() as nursery:
                nursery.start_soon(watch_disconnect, nursery.cancel_scope)
                try:
                    result = await self.invoker.invoke(
                        name, body, call_id, timings, scope["headers"], http=http
                    )
                finally:
                    nursery.cancel_scope.cancel()
            if gone or result is None:
                status = 499  # nginx's 'client closed request', for the log and metrics
                raise ClientGone
            status = result.status
            headers = [*result.headers, (b"kiln-timing", timings.header())]
            if timings.cold:
                headers.append((b"kiln-cold", b"1"))
            await self._respond(send, result.status, call_id, result.body, extra=headers)
        except CallError as e:
            status = e.status
            await self._error(send, call_id, e, timings)
        except Exception as e:
            status = 500
            log.exception("call %s of %s failed unexpectedly", call_id, name)
            await self._error(
                send, call_id, CallError(f"internal error: {type(e).__name__}: {e}"), timings
            )
        finally:
            if self.metrics is not None and name in self.invoker.functions:
                self.metrics.observe_call(
                    name, status, timings.queue, timings.start, timings.run, timings.cold
                )
            log.info(
                "call fn=%s id=%s status=%s total_ms=%.1f queue_ms=%.1f start_ms=%.1f run_ms=%.1f",
                name,
                call_id,
                status,
                (trio.current_time() - t0) * 1000,
                timings.queue * 1000,
                timings.start * 1000,
                timings.run * 1000,
            )

    async def _error(
        self, send: Send, call_id: str, error: CallError, timings: Timings | None = None
    ) -> None:
        extra: list[tuple[bytes, bytes]] = []
        if error.retry_after is not None:
            extra.append((b"retry-after", str(max(1, math.ceil(error.retry_after))).encode()))
        if timings is not None:
            extra.append((b"kiln-timing", timings.header()))
        await self._respond(
            send,
            error.status,
            call_id,
            error_body(error.code, error.message),
            json_ct=True,
            extra=extra,
        )

    @staticmethod
    async def _respond(
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
