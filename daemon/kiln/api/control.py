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

A path that matches no route is 404 ``not_found``; a route asked with a method it
does not take is 405 ``method_not_allowed``, with ``Allow`` naming the ones it does
(:data:`ROUTES`).

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
from kiln.api.invoke import new_call_id, not_allowed, respond, run_call, send_error
from kiln.api.operations import BadRequest, Operations
from kiln.calls.errors import CallError, NotFound
from kiln.functions.spec import parse_function
from kiln.functions.validate import ConfigError, depth_problem
from kiln.http.asgi import ClientGone, Receive, Scope, Send, lifespan, read_body
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


Shape = tuple[str, ...]

#: Every route (a path shape: ``*`` is a function's or token's name) and its methods.
ROUTES: dict[Shape, tuple[str, ...]] = {
    ("status",): ("GET",),
    ("functions",): ("GET",),
    ("containers",): ("GET",),
    ("reload",): ("POST",),
    ("drain",): ("POST",),
    ("tokens",): ("GET", "POST"),
    ("tokens", "*"): ("DELETE",),
    ("functions", "*"): ("GET", "PUT", "DELETE"),
    ("functions", "*", "scale"): ("POST",),
    ("functions", "*", "invoke"): ("POST",),
    ("functions", "*", "logs"): ("GET",),
}


def route_shape(parts: list[str]) -> Shape | None:
    """The route a path's segments match (the name segment becomes ``*``), or None."""
    shape = tuple(parts)
    if len(parts) >= 2 and parts[0] in ("functions", "tokens"):
        shape = (parts[0], "*", *parts[2:])
    return shape if shape in ROUTES else None


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
        method: str = scope["method"]
        parts = [p for p in scope["path"].split("/") if p]
        if parts[:1] == ["calls"] and self.calls_routes is not None:
            await self.calls_routes.route(scope, receive, send)
            return
        shape = route_shape(parts)
        if shape is None:
            await send_error(send, call_id, NotFound(f"no route {scope['path']}", code="not_found"))
            return
        if method not in ROUTES[shape]:
            await not_allowed(send, call_id, *ROUTES[shape])
            return
        if shape == ("functions", "*", "invoke"):
            # The same call path as the invoke API: metrics, log line,
            # Kiln-Timing, cancellation when the caller leaves.
            max_body = self.c.config.daemon.max_body
            await run_call(self.c.calls, scope, receive, send, call_id, parts[1], max_body)
            return
        if shape == ("functions", "*", "logs"):
            await self._logs(scope, receive, send, call_id, parts[1])
            return
        try:
            status, body = await self._route(scope, receive, method, shape, parts)
        except CallError as e:
            await send_error(send, call_id, e)
            return
        except ClientGone:
            log.info("control request %s %s: the client went away", method, scope["path"])
            return
        except Exception as e:
            log.exception("control request failed")
            await send_error(send, call_id, CallError(f"{type(e).__name__}: {e}"))
            return
        await respond(send, status, call_id, body, json_ct=True)

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
            await send_error(send, call_id, e)

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

    async def _route(
        self, scope: Scope, receive: Receive, method: str, shape: Shape, parts: list[str]
    ) -> tuple[int, bytes]:
        """Answer a route of :data:`ROUTES` with one of its methods: (status, JSON body)."""
        c = self.c
        name = parts[1] if len(parts) > 1 else ""
        match shape, method:
            case ("status",), _:
                return 200, _json(await c.status())
            case ("functions",), _:
                return 200, _json(c.functions())
            case ("containers",), _:
                return 200, _json(c.containers())
            case ("reload",), _:
                return 200, _json(dataclasses.asdict(await c.reload()))
            case ("drain",), _:
                c.drain()
                return 202, _json({"draining": True})
            case ("tokens",) | ("tokens", "*"), _:
                return await self._tokens(scope, method, parts, receive)
            case ("functions", "*"), "GET":
                return 200, _json(c.function_info(name))
            case ("functions", "*"), "PUT":
                return await self._deploy(scope, receive, name)
            case ("functions", "*"), "DELETE":
                await c.remove(name)
                return 200, _json({"removed": name})
            case ("functions", "*", "scale"), _:
                return await self._scale(scope, receive, name)
        raise AssertionError(f"ROUTES has {shape} {method} but _route does not")

    async def _deploy(self, scope: Scope, receive: Receive, name: str) -> tuple[int, bytes]:
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
        return (200 if existed else 201), _json(info)

    async def _scale(self, scope: Scope, receive: Receive, name: str) -> tuple[int, bytes]:
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
        return 200, _json(spec.to_json())

    async def _tokens(
        self, scope: Scope, method: str, parts: list[str], receive: Receive
    ) -> tuple[int, bytes]:
        if self.tokens is None:
            raise CallError(
                'tokens need [daemon] auth = "token" in the config', status=409, code="auth_off"
            )
        if parts == ["tokens"] and method == "GET":
            return 200, _json([e.public() for e in self.tokens.list()])
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
            return 201, _json({"token": token, **entry.public()})
        if len(parts) == 2 and method == "DELETE":
            try:
                entry = self.tokens.remove(parts[1])
            except KeyError:
                raise NotFound(
                    f"no token with id or name {parts[1]!r}", code="unknown_token"
                ) from None
            return 200, _json({"revoked": entry.public()})
        raise AssertionError(f"ROUTES has tokens {method} but _tokens does not")
