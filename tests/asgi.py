"""A minimal ASGI driver for tests: call the app with full control of receive(),
and a client that can leave (:class:`ClientWatch`, the server's disconnect watch)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from kiln.http.asgi import DISCONNECT_WATCH, ASGIApp


class ClientWatch:
    """A :class:`~kiln.http.asgi.DisconnectWatch` whose client leaves on :meth:`leave`."""

    def __init__(self) -> None:
        self.gone = False
        self.on_gone: Callable[[], None] | None = None

    def watch(self, on_gone: Callable[[], None]) -> None:
        if self.gone:
            on_gone()
        else:
            self.on_gone = on_gone

    def unwatch(self) -> None:
        self.on_gone = None

    def leave(self) -> None:
        self.gone = True
        on_gone, self.on_gone = self.on_gone, None
        if on_gone is not None:
            on_gone()


@dataclass
class Reply:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def json(self) -> Any:
        return json.loads(self.body)


async def request(
    app: ASGIApp,
    method: str,
    path: str,
    body: bytes = b"",
    *,
    headers: list[tuple[bytes, bytes]] | None = None,
    disconnect: trio.Event | None = None,
) -> Reply:
    """Send one request. If ``disconnect`` is given, the client "goes away" when it is set."""
    reply = Reply()
    sent_body = False

    async def receive() -> dict[str, Any]:
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": body, "more_body": False}
        if disconnect is None:
            await trio.sleep_forever()
        else:
            await disconnect.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            reply.status = message["status"]
            reply.headers = {k.decode(): v.decode() for k, v in message["headers"]}
        elif message["type"] == "http.response.body":
            reply.body += message.get("body", b"")

    raw_path, _, query = path.partition("?")
    scope: dict[str, Any] = {
        "type": "http",
        "method": method,
        "path": raw_path,
        "raw_path": raw_path.encode(),
        "query_string": query.encode(),
        "headers": [(b"content-length", str(len(body)).encode()), *(headers or [])],
    }
    if disconnect is None:
        await app(scope, receive, send)  # type: ignore[arg-type]
        return reply
    client = ClientWatch()
    scope["extensions"] = {DISCONNECT_WATCH: client}

    async def leave_when_told() -> None:
        await disconnect.wait()
        client.leave()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(leave_when_told)
        await app(scope, receive, send)  # type: ignore[arg-type]
        nursery.cancel_scope.cancel()
    return reply
