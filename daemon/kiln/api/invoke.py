"""The invoke API: a plain ASGI app, served by :mod:`kiln.http`.

``POST /invoke/{name}`` runs a call; ``GET /healthz`` says the daemon is up.
Every response carries ``Kiln-Call-Id``; every error body is
``{"error": {"code": ..., "message": ...}}``. If the caller disconnects while its
call runs, the call is cancelled (and its container removed).
"""

from __future__ import annotations

import logging
import math
import secrets

import trio

from kiln.calls.errors import CallError
from kiln.calls.lifecycle import Invoker, Timings
from kiln.http.asgi import ClientGone, Receive, Scope, Send, error_body, lifespan, read_body
from kiln.metrics import CONTENT_TYPE, Metrics
from kiln.trioutil import open_nursery

log = logging.getLogger("kiln.api")

INVOKE_PREFIX = "/invoke/"


def new_call_id() -> str:
    return secrets.token_hex(8)


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
            elif path.startswith(INVOKE_PREFIX):
                if method != "POST":
                    await self._error(
                        send,
                        call_id,
                        CallError("use POST to invoke", status=405, code="method_not_allowed"),
                    )
                    return
                await self._invoke(scope, receive, send, call_id, path[len(INVOKE_PREFIX) :])
            else:
                await self._error(
                    send, call_id, CallError(f"no route {path}", status=404, code="not_found")
                )
        except ClientGone:
            log.info("call %s: caller disconnected", call_id)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        await lifespan(receive, send)

    async def _invoke(
        self, scope: Scope, receive: Receive, send: Send, call_id: str, name: str
    ) -> None:
        timings = Timings()
        t0 = trio.current_time()
        status = 500
        try:
            self.invoker.lookup(name)
            body = await read_body(scope, receive, self.max_body, setting="[daemon] max_body")
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
                        name, body, call_id, timings, scope["headers"]
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
