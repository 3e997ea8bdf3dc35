"""What Kiln's ASGI apps share: the ASGI type aliases, the disconnect-watch
extension, the JSON error body, the lifespan acknowledgement and the request-body
reader.

The server (:mod:`kiln.http.server`, :mod:`kiln.http.cycle`) needs only the
type aliases and the error body; the apps (:mod:`kiln.api.invoke`,
:mod:`kiln.api.control`) use the rest. ``read_body`` raises the callers' own
:class:`~kiln.calls.errors.BodyTooLarge` (413).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Protocol

from kiln.calls.errors import BodyTooLarge

__all__ = [
    "DISCONNECT_WATCH",
    "ASGIApp",
    "ClientGone",
    "DisconnectWatch",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "error_body",
    "lifespan",
    "read_body",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: The scope's ``extensions`` key under which Kiln's server offers a
#: :class:`DisconnectWatch` for the request.
DISCONNECT_WATCH = "kiln.disconnect_watch"


class DisconnectWatch(Protocol):
    """Tells an app that its client left, by a callback: the cheap alternative to a
    task of the app's own waiting in ``receive()`` for ``http.disconnect``."""

    def watch(self, on_gone: Callable[[], None]) -> None:
        """Call ``on_gone`` once if the client leaves before :meth:`unwatch` (at once
        if it already has). Call after the request body is read."""
        ...

    def unwatch(self) -> None:
        """Stop watching; ``on_gone`` is not called after this."""
        ...


def error_body(code: str, message: str) -> bytes:
    """The one error body of every Kiln API: ``{"error": {"code": ..., "message": ...}}``."""
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


class ClientGone(Exception):
    """The caller disconnected (or its request could not be read to the end) before
    it was answered: nobody is left to answer (a 499 in logs and metrics)."""


def declared_length(scope: Scope) -> int | None:
    """The request's ``Content-Length`` (the server has already checked its syntax)."""
    for key, value in scope["headers"]:
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def read_body(scope: Scope, receive: Receive, limit: int, *, setting: str = "") -> bytes:
    """The whole request body, at most ``limit`` bytes.

    Raises ``BodyTooLarge`` (before reading, when ``Content-Length`` already
    says so) and :class:`ClientGone` when ``receive()`` says ``http.disconnect``.
    ``setting`` names the configuration key of the limit, for the message."""
    where = f" ({setting})" if setting else ""
    declared = declared_length(scope)
    if declared is not None and declared > limit:
        raise BodyTooLarge(f"body of {declared} bytes is over the limit of {limit} bytes{where}")
    chunks: list[bytes] = []
    total = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk: bytes = message.get("body", b"")
        total += len(chunk)
        if total > limit:
            raise BodyTooLarge(f"body is over the limit of {limit} bytes{where}")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
