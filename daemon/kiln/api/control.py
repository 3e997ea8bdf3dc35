"""The control API: HTTP + JSON on a Unix socket (``curl --unix-socket`` works).

    GET    /status                     version, uptime, memory, queue, containers, Docker, draining
    GET    /functions                  every function
    GET    /functions/{name}           spec + live containers
    PUT    /functions/{name}           deploy/update from a JSON spec (validated like the config)
    DELETE /functions/{name}           remove
    POST   /functions/{name}/scale     {"min_warm": N, "max_containers": M}
    POST   /functions/{name}/invoke    run a call (body in, body out) — what `kiln invoke` uses
    GET    /containers                 every hot container
    POST   /reload                     re-read the config file
    POST   /drain                      stop taking calls, finish those in flight, exit

The socket is created mode 0660 with group ``[daemon] control_group`` (when that
group exists). A stale socket of a dead daemon is replaced; a live one is
refused ("another kiln is running").
"""

from __future__ import annotations

import contextlib
import dataclasses
import grp
import json
import logging
import os
import socket
import stat
from typing import Any

from kiln.api.invoke import Receive, Scope, Send, error_body, lifespan, new_call_id
from kiln.api.operations import BadRequest, Operations
from kiln.calls.errors import CallError, NotFound
from kiln.calls.lifecycle import Timings
from kiln.functions.spec import parse_function
from kiln.functions.validate import ConfigError, depth_problem

log = logging.getLogger("kiln.control")

MAX_SPEC = 1024 * 1024


class AnotherKilnRunning(Exception):
    pass


def open_control_socket(path: str, group: str) -> socket.socket:
    """Bind the control socket: replace a stale one, refuse a live one, mode 0660."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None:
        if not stat.S_ISSOCK(st.st_mode):
            raise AnotherKilnRunning(f"{path} exists and is not a socket; refusing to replace it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # stale: nobody listens
        else:
            raise AnotherKilnRunning(f"another kiln is running on {path}")
        finally:
            probe.close()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o117)
    try:
        sock.bind(path)
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o660)
    try:
        gid = grp.getgrnam(group).gr_gid
        os.chown(path, -1, gid)
    except KeyError:
        log.warning("control group %r does not exist; %s stays owned by our group", group, path)
    except PermissionError as e:
        log.warning("cannot give %s to group %r: %s", path, group, e)
    sock.listen(128)
    return sock


def _json(data: Any) -> bytes:
    return json.dumps(data, indent=2, default=str).encode() + b"\n"


class ControlApp:
    def __init__(self, controller: Operations) -> None:
        self.c = controller

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        call_id = new_call_id()
        try:
            status, body, ctype = await self._route(scope, receive, call_id)
        except CallError as e:
            status, body, ctype = e.status, error_body(e.code, e.message), b"application/json"
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

    async def _body(self, receive: Receive, limit: int = MAX_SPEC) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise BadRequest("client went away")
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > limit:
                raise CallError(f"body over {limit} bytes", status=413, code="body_too_large")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _json_body(self, receive: Receive) -> Any:
        raw = await self._body(receive)
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
        self, scope: Scope, receive: Receive, call_id: str
    ) -> tuple[int, bytes, bytes]:
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
        if parts == ["drain"] and method == "POST":
            self.c.drain()
            return 202, _json({"draining": True}), j
        if len(parts) >= 2 and parts[0] == "functions":
            name = parts[1]
            if len(parts) == 2:
                if method == "GET":
                    return 200, _json(self.c.function_info(name)), j
                if method == "PUT":
                    raw = await self._json_body(receive)
                    if isinstance(raw, dict):
                        raw.pop("name", None)
                    try:
                        spec = parse_function(name, raw, f"functions.{name}")
                    except ConfigError as e:
                        raise BadRequest(str(e), code="bad_spec") from e
                    existed = name in self.c.invoker.functions
                    await self.c.deploy(spec)
                    return (200 if existed else 201), _json(self.c.function_info(name)), j
                if method == "DELETE":
                    await self.c.remove(name)
                    return 200, _json({"removed": name}), j
            if len(parts) == 3 and parts[2] == "scale" and method == "POST":
                raw = await self._json_body(receive)
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
            if len(parts) == 3 and parts[2] == "invoke" and method == "POST":
                body = await self._body(receive, self.c.config.daemon.max_body)
                result = await self.c.invoker.invoke(
                    name, body, call_id, Timings(), scope["headers"]
                )
                ctype = dict(result.headers).get(b"content-type", b"application/octet-stream")
                return result.status, result.body, ctype
        raise NotFound(f"no route {method} {scope['path']}", code="not_found")


@contextlib.contextmanager
def control_socket(path: str, group: str) -> Any:
    sock = open_control_socket(path, group)
    try:
        yield sock
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
