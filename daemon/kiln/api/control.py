"""The control API: HTTP + JSON on a Unix socket (``curl --unix-socket`` works).

    GET    /status                     version, uptime, memory, queue, containers, Docker, draining
    GET    /functions                  every function
    GET    /functions/{name}           spec + live containers
    PUT    /functions/{name}           deploy/update from a JSON spec (validated like the config)
    DELETE /functions/{name}           remove
    POST   /functions/{name}/scale     {"min_warm": N, "max_containers": M}
    POST   /functions/{name}/invoke    run a call (body in, body out) — what `kiln invoke` uses
    GET    /functions/{name}/logs      its log lines (?since=&call=&tail=&follow=1; NDJSON or text)
    GET    /tokens                     invoke API tokens (no secrets)
    POST   /tokens                     {"name": N, "functions": [..] | null} → the token, shown once
    DELETE /tokens/{id or name}        revoke
    GET    /containers                 every hot container
    POST   /reload                     re-read the config file
    POST   /drain                      stop taking calls, finish those in flight, exit

The socket is created mode 0660 with group ``[daemon] control_group`` (when that
group exists). A stale socket of a dead daemon is replaced; a live one is
refused ("another kiln is running").
"""

from __future__ import annotations

import dataclasses
import json
import logging
import socket
from typing import TYPE_CHECKING, Any

from kiln.api.auth import TokenError, Tokens
from kiln.api.invoke import new_call_id, run_call
from kiln.api.operations import BadRequest, Operations
from kiln.calls.errors import CallError, NotFound
from kiln.functions.spec import parse_function
from kiln.functions.validate import ConfigError, depth_problem
from kiln.http.asgi import ClientGone, Receive, Scope, Send, error_body, lifespan, read_body
from kiln.http.listeners import SocketInUse, bind_unix
from kiln.logs.http import serve_logs
from kiln.logs.service import Logs

if TYPE_CHECKING:
    from kiln.asyncq.http import CallsRoutes

log = logging.getLogger("kiln.control")

MAX_SPEC = 1024 * 1024


class AnotherKilnRunning(Exception):
    pass


def open_control_socket(path: str, group: str) -> socket.socket:
    """Bind the control socket, mode 0660, group ``group``: a stale socket is
    replaced, a live one refused (the one rule of :func:`kiln.http.listeners.bind_unix`)."""
    try:
        return bind_unix(path, backlog=128, mode=0o660, group=group)
    except SocketInUse as e:
        if e.live:
            raise AnotherKilnRunning(f"another kiln is running on {path}") from e
        raise AnotherKilnRunning(str(e)) from e


def _json(data: Any) -> bytes:
    return json.dumps(data, indent=2, default=str).encode() + b"\n"


class ControlApp:
    def __init__(
        self, operations: Operations, *, logs: Logs | None = None, tokens: Tokens | None = None
    ) -> None:
        self.c = operations
        self.logs = logs
        self.tokens = tokens
        #: ``/calls`` (async calls), when enabled.
        self.calls_routes: CallsRoutes | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        call_id = new_call_id()
        parts = [p for p in scope["path"].split("/") if p]
        if len(parts) == 3 and parts[0::2] == ["functions", "invoke"] and scope["method"] == "POST":
            # The same call path as the invoke API: metrics, log line,
            # Kiln-Timing, cancellation when the caller leaves.
            max_body = self.c.config.daemon.max_body
            await run_call(self.c.calls, scope, receive, send, call_id, parts[1], max_body)
            return
        if parts[:1] == ["calls"] and self.calls_routes is not None:
            await self.calls_routes.route(scope, receive, send)
            return
        if len(parts) == 3 and parts[0::2] == ["functions", "logs"] and scope["method"] == "GET":
            await self._logs(scope, receive, send, call_id, parts[1])
            return
        try:
            status, body, ctype = await self._route(scope, receive)
        except CallError as e:
            status, body, ctype = e.status, error_body(e.code, e.message), b"application/json"
        except ClientGone:
            log.info("control request %s %s: the client went away", scope["method"], scope["path"])
            return
        except Exception as e:
            log.exception("control request failed")
            status, body, ctype = (
                500,
                error_body("internal", f"{type(e).__name__}: {e}"),
                b"application/json",
            )
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", ctype),
                    (b"content-length", str(len(body)).encode()),
                    (b"kiln-call-id", call_id.encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _logs(
        self, scope: Scope, receive: Receive, send: Send, call_id: str, name: str
    ) -> None:
        try:
            if self.logs is None:
                raise NotFound("function logs are not kept by this daemon", code="not_found")
            self.c.spec(name)
            await serve_logs(
                self.logs,
                name,
                scope,
                receive,
                send,
                extra_headers=[(b"kiln-call-id", call_id.encode())],
            )
        except CallError as e:
            body = error_body(e.code, e.message)
            await send(
                {
                    "type": "http.response.start",
                    "status": e.status,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"kiln-call-id", call_id.encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})

    async def _json_body(self, scope: Scope, receive: Receive) -> Any:
        raw = await read_body(scope, receive, MAX_SPEC)
        try:
            value = json.loads(raw or b"{}")
        except RecursionError as e:
            raise BadRequest(f"body is not JSON we read: {e}") from e
        except ValueError as e:  # also bad UTF-8 and integers of too many digits
            raise BadRequest(f"body is not JSON: {e}") from e
        nested = depth_problem(value)
        if nested is not None:
            raise BadRequest(f"body is not JSON we read: {nested}")
        return value

    async def _route(self, scope: Scope, receive: Receive) -> tuple[int, bytes, bytes]:
        method: str = scope["method"]
        parts = [p for p in scope["path"].split("/") if p]
        j = b"application/json"
        if parts == ["status"] and method == "GET":
            return 200, _json(await self.c.status()), j
        if parts == ["functions"] and method == "GET":
            return 200, _json(self.c.functions()), j
        if parts == ["containers"] and method == "GET":
            return 200, _json(self.c.containers()), j
        if parts == ["reload"] and method == "POST":
            return 200, _json(dataclasses.asdict(await self.c.reload())), j
        if parts and parts[0] == "tokens":
            return await self._tokens(scope, method, parts, receive)
        if parts == ["drain"] and method == "POST":
            self.c.drain()
            return 202, _json({"draining": True}), j
        if len(parts) >= 2 and parts[0] == "functions":
            name = parts[1]
            if len(parts) == 2:
                if method == "GET":
                    return 200, _json(self.c.function_info(name)), j
                if method == "PUT":
                    raw = await self._json_body(scope, receive)
                    if isinstance(raw, dict):
                        raw.pop("name", None)
                    try:
                        spec = parse_function(name, raw, f"functions.{name}")
                    except ConfigError as e:
                        raise BadRequest(str(e), code="bad_spec") from e
                    existed = name in self.c.registry
                    await self.c.deploy(spec)
                    warning = await self.c.image_warning(spec)
                    info = {**self.c.function_info(name), "warnings": [warning] if warning else []}
                    return (200 if existed else 201), _json(info), j
                if method == "DELETE":
                    await self.c.remove(name)
                    return 200, _json({"removed": name}), j
            if len(parts) == 3 and parts[2] == "scale" and method == "POST":
                raw = await self._json_body(scope, receive)
                if not isinstance(raw, dict):
                    raise BadRequest("scale takes a JSON object", code="bad_spec")
                unknown = set(raw) - {"min_warm", "max_containers"}
                if unknown:
                    raise BadRequest(
                        f"scale: unknown key {sorted(unknown)[0]!r} (known: min_warm, max_containers)",
                        code="bad_spec",
                    )
                for key in ("min_warm", "max_containers"):
                    if key in raw and (not isinstance(raw[key], int) or isinstance(raw[key], bool)):
                        raise BadRequest(f"scale: {key} must be an integer", code="bad_spec")
                spec = await self.c.scale(
                    name, min_warm=raw.get("min_warm"), max_containers=raw.get("max_containers")
                )
                return 200, _json(spec.to_json()), j
        raise NotFound(f"no route {method} {scope['path']}", code="not_found")

    async def _tokens(
        self, scope: Scope, method: str, parts: list[str], receive: Receive
    ) -> tuple[int, bytes, bytes]:
        j = b"application/json"
        if self.tokens is None:
            raise CallError(
                'tokens need [daemon] auth = "token" in the config', status=409, code="auth_off"
            )
        if parts == ["tokens"] and method == "GET":
            return 200, _json([e.public() for e in self.tokens.list()]), j
        if parts == ["tokens"] and method == "POST":
            raw = await self._json_body(scope, receive)
            if not isinstance(raw, dict) or set(raw) - {"name", "functions"}:
                raise BadRequest('give {"name": "...", "functions": ["f", ...] or null}')
            name, fns = raw.get("name"), raw.get("functions")
            if name is not None and not isinstance(name, str):
                raise BadRequest("name must be a string")
            if fns is not None and (
                not isinstance(fns, list) or not all(isinstance(f, str) for f in fns)
            ):
                raise BadRequest("functions must be a list of function names, or null for all")
            try:
                token, entry = self.tokens.create(name, fns)
            except TokenError as e:
                raise BadRequest(str(e)) from e
            return 201, _json({"token": token, **entry.public()}), j
        if len(parts) == 2 and method == "DELETE":
            try:
                entry = self.tokens.remove(parts[1])
            except KeyError:
                raise NotFound(
                    f"no token with id or name {parts[1]!r}", code="unknown_token"
                ) from None
            return 200, _json({"revoked": entry.public()}), j
        raise NotFound(f"no route {method} /{'/'.join(parts)}", code="not_found")
