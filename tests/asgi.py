"""A minimal ASGI driver for tests: call the app with full control of receive()."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import trio

from kiln.http.asgi import ASGIApp


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
    scope = {
        "type": "http",
        "method": method,
        "path": raw_path,
        "raw_path": raw_path.encode(),
        "query_string": query.encode(),
        "headers": [(b"content-length", str(len(body)).encode()), *(headers or [])],
    }
    await app(scope, receive, send)  # type: ignore[arg-type]
    return reply
