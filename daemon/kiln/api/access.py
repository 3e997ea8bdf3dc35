"""Who may use the invoke API: bearer tokens and CORS, in front of the invoke app.

An ASGI wrapper, so the invoke app itself knows nothing of either:

* ``/healthz`` is always open;
* ``/metrics`` needs a token when ``[metrics] require_token`` is set;
* ``/calls/{id}`` (an async call's record and result) needs a valid token with
  ``auth = "token"``;
* ``/invoke/{name}…``: a CORS preflight is answered here (before auth:
  browsers send no credentials with it); with ``auth = "token"`` the call needs
  a token for ``name`` (401 / 403 otherwise); answers to an allowed origin carry
  ``Access-Control-Allow-Origin``, errors included.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from kiln.api import cors
from kiln.api.auth import Tokens, Verdict, bearer
from kiln.http.asgi import ASGIApp, Message, Receive, Scope, Send, error_body

INVOKE_PREFIX = "/invoke/"
_CHALLENGE = b'Bearer realm="kiln"'


async def _answer(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    hs = [*headers, (b"content-length", str(len(body)).encode())]
    if body:
        hs.append((b"content-type", b"application/json"))
    await send({"type": "http.response.start", "status": status, "headers": hs})
    await send({"type": "http.response.body", "body": body})


class AccessGate:
    def __init__(
        self,
        app: ASGIApp,
        *,
        tokens: Tokens | None,
        metrics_need_token: bool = False,
        origins: Callable[[str], Sequence[str]] = lambda name: (),
    ) -> None:
        self.app = app
        self.tokens = tokens
        self.metrics_need_token = metrics_need_token
        self.origins = origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        if path.startswith(INVOKE_PREFIX):
            name = path[len(INVOKE_PREFIX) :].split("/", 1)[0]
            allow = cors.allowed(self.origins(name), cors.header(headers, b"origin"))
            if cors.is_preflight(scope["method"], headers):
                if allow is None:
                    await _answer(
                        send,
                        403,
                        error_body(
                            "cors_forbidden",
                            f"origin not allowed for function {name!r} (cors_origins)",
                        ),
                        [],
                    )
                else:
                    await _answer(
                        send,
                        204,
                        b"",
                        cors.preflight_headers(
                            allow, cors.header(headers, b"access-control-request-headers")
                        ),
                    )
                return
            extra = cors.response_headers(allow) if allow is not None else []
            if self.tokens is not None and not await self._authorized(send, headers, name, extra):
                return
            if extra:
                send = _with_headers(send, extra)
            await self.app(scope, receive, send)
            return
        if (
            path.startswith("/calls/")
            and self.tokens is not None
            and not await self._authorized(send, headers, None, [])
        ):
            return  # an async call's record and result: any valid token
        if (
            path == "/metrics"
            and self.metrics_need_token
            and self.tokens is not None
            and not await self._authorized(send, headers, None, [])
        ):
            return
        await self.app(scope, receive, send)

    async def _authorized(
        self,
        send: Send,
        headers: list[tuple[bytes, bytes]],
        function: str | None,
        extra: list[tuple[bytes, bytes]],
    ) -> bool:
        assert self.tokens is not None
        verdict = self.tokens.check(bearer(cors.header(headers, b"authorization")), function)
        if verdict is Verdict.OK:
            return True
        if verdict is Verdict.FORBIDDEN:
            await _answer(
                send,
                403,
                error_body("forbidden", f"this token may not call function {function!r}"),
                extra,
            )
        elif verdict is Verdict.MISSING:
            await _answer(
                send,
                401,
                error_body("unauthorized", "give a token: Authorization: Bearer kiln_…"),
                [*extra, (b"www-authenticate", _CHALLENGE)],
            )
        else:
            await _answer(
                send,
                401,
                error_body(
                    "unauthorized", "the token is not valid (unknown, revoked or malformed)"
                ),
                [*extra, (b"www-authenticate", _CHALLENGE + b', error="invalid_token"')],
            )
        return False


def _with_headers(send: Send, extra: list[tuple[bytes, bytes]]) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), *extra]}
        await send(message)

    return wrapped
