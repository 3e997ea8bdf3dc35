"""What the server builds itself: the ASGI scope of a request, and its own
complete error responses (written without h11, whose state may be ERROR by then)
with the :class:`Refusal` that says why it answers a request itself."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any
from urllib.parse import unquote_to_bytes

import h11

from kiln.http.asgi import Scope, error_body

REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}


class Refusal:
    """Why the server answers a request itself: status, code, message; and
    whether to linger (the client may still be sending) before closing."""

    __slots__ = ("code", "linger", "message", "status")

    def __init__(self, status: int, code: str, message: str, *, linger: bool = True) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.linger = linger


def error_response(
    status: int, code: str, message: str, *, headers: tuple[tuple[bytes, bytes], ...] = ()
) -> bytes:
    """A complete ``Connection: close`` error response, built without h11 (whose
    state may be ERROR by then)."""
    body = error_body(code, message)
    reason = REASONS.get(status, b"")
    extra = b"".join(b"%s: %s\r\n" % (name, value) for name, value in headers)
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
        b"%sconnection: close\r\n\r\n" % (status, reason, len(body), extra)
    ) + body


def make_scope(
    request: h11.Request, headers: list[tuple[bytes, bytes]], client: Any, server: Any
) -> Scope:
    raw_path, _, query = request.target.partition(b"?")
    if b"%" in raw_path:
        path = unquote_to_bytes(raw_path).decode("utf-8", "replace")
    else:
        path = raw_path.decode("utf-8", "replace")
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": request.http_version.decode("ascii"),
        "method": request.method.decode("ascii"),
        "scheme": "http",
        "path": path,
        "raw_path": raw_path,
        "query_string": query,
        "root_path": "",
        "headers": headers,
        "client": client,
        "server": server,
    }
