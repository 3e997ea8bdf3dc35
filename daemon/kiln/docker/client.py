"""The Docker Engine client: httpx over the Unix socket for short calls, one
socket of its own for each long call (``wait``, ``attach``, ``logs``).

Rules it keeps:

* Short calls are bounded by httpx's own timeouts (``timeout`` seconds), not by
  outer cancel scopes: cancelling pooled httpx requests from an outer Trio
  scope under contention can jam the pool (httpcore issue 1093).
* Mutations (create, start, kill, remove) run shielded: a caller that goes away
  never leaves a half-made container. They still end — httpx's timeout bounds them.
* Long polls never hold a pool connection: they open their own socket (see
  :mod:`kiln.docker.rawhttp`) and closing it is all cancellation needs.
* Every path is pinned to API version 1.41, the oldest engine Kiln accepts.
"""

from __future__ import annotations

import contextlib
import json
import urllib.parse
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
import trio

from kiln.docker.errors import (
    DockerAPIError,
    DockerConflict,
    DockerNotConnected,
    DockerNotFound,
    DockerProtocolError,
    DockerTimeout,
    DockerUnreachable,
)
from kiln.docker.frames import STDERR, STDOUT, Frame, FrameDecoder
from kiln.docker.rawhttp import Connector, RawExchange, open_exchange

API_VERSION = "1.41"
MIN_API = (1, 41)


class Limiter(Protocol):
    """What the client asks before it talks to Docker (see :mod:`kiln.ratelimit`)."""

    def call(self) -> AbstractAsyncContextManager[None]: ...

    def create(self) -> AbstractAsyncContextManager[None]: ...


class _NoLimit:
    def call(self) -> AbstractAsyncContextManager[None]:
        return nullcontext()

    def create(self) -> AbstractAsyncContextManager[None]:
        return nullcontext()


@dataclass(frozen=True)
class WaitResult:
    status_code: int
    error: str | None = None


def _api_version_tuple(text: str) -> tuple[int, int]:
    try:
        major, minor = text.split(".")[:2]
        return int(major), int(minor)
    except ValueError as e:
        raise DockerProtocolError(f"Docker reports an unreadable API version {text!r}") from e


def _error_message(response_body: bytes) -> str:
    try:
        data = json.loads(response_body)
        if isinstance(data, dict) and isinstance(data.get("message"), str):
            return str(data["message"])
    except ValueError:
        pass
    return response_body.decode("utf-8", "replace").strip() or "(no message)"


def raise_for_status(status: int, body: bytes, operation: str) -> None:
    if status < 400:
        return
    message = _error_message(body)
    cls = {404: DockerNotFound, 409: DockerConflict}.get(status, DockerAPIError)
    raise cls(status, message, operation=operation)


class AttachStream:
    """The hijacked attach connection: write stdin, read demultiplexed frames.

    ``send_eof()`` half-closes the socket, which (with ``StdinOnce``) closes the
    container's stdin. ``receive()`` returns ``None`` at end of stream.
    """

    def __init__(self, exchange: RawExchange) -> None:
        self._exchange = exchange
        self._decoder = FrameDecoder()
        self._pending: list[Frame] = (
            self._decoder.feed(exchange.trailing) if exchange.trailing else []
        )
        self._eof = False

    async def send_all(self, data: bytes) -> None:
        try:
            await self._exchange.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            raise DockerUnreachable(f"attach stream closed while writing stdin: {e}") from e

    async def send_eof(self) -> None:
        try:
            await self._exchange.stream.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            raise DockerUnreachable(f"attach stream closed while closing stdin: {e}") from e

    async def receive(self) -> list[Frame] | None:
        """The next frames (at least one), or None once the stream has ended."""
        if self._pending:
            out, self._pending = self._pending, []
            return out
        while not self._eof:
            try:
                data = bytes(await self._exchange.stream.receive_some(65536))
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
                raise DockerUnreachable(f"attach stream broke: {e}") from e
            if not data:
                self._eof = True
                self._decoder.eof()
                return None
            frames = self._decoder.feed(data)
            if frames:
                return frames
        return None


class DockerClient:
    """An async Docker Engine client. Use as ``async with DockerClient(...) as docker``.

    ``transport`` and ``connect`` are the seams for tests: an httpx transport for
    short calls and a function opening a fresh stream for long ones.
    """

    def __init__(
        self,
        socket_path: str = "/var/run/docker.sock",
        *,
        timeout: float = 30.0,
        pool_size: int = 32,
        limiter: Limiter | None = None,
        observer: Callable[[str, str, float], None] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        connect: Connector | None = None,
    ) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self.limiter: Limiter = limiter or _NoLimit()
        self.observer = observer
        self._transport = transport or httpx.AsyncHTTPTransport(uds=socket_path, retries=0)
        self._http = httpx.AsyncClient(
            transport=self._transport,
            base_url=f"http://docker/v{API_VERSION}",
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            limits=httpx.Limits(max_connections=pool_size, max_keepalive_connections=pool_size),
        )
        self._connect: Connector = connect or self._open_socket

    async def _open_socket(self) -> trio.abc.HalfCloseableStream:
        return await trio.open_unix_socket(self.socket_path)

    async def __aenter__(self) -> DockerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await self._http.aclose()

    # ---- plumbing -------------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        *,
        operation: str,
        params: Mapping[str, str] | None = None,
        json_body: Any = None,
        ok_statuses: tuple[int, ...] = (),
        shield: bool = False,
    ) -> httpx.Response:
        """One short call. ``shield=True`` for mutations: once sent, a mutation
        finishes (bounded by httpx's timeout), so a departing caller never leaves
        Docker half-way."""
        t0 = trio.current_time()
        status = "error"
        try:
            async with self.limiter.call():
                with trio.CancelScope(shield=shield):
                    response = await self._http.request(method, path, params=params, json=json_body)
            status = str(response.status_code)
        except httpx.TimeoutException as e:
            status = "timeout"
            raise DockerTimeout(
                f"{operation}: Docker did not answer within {self.timeout:g} s"
            ) from e
        except httpx.ConnectError as e:
            raise DockerNotConnected(
                f"{operation}: cannot reach Docker at {self.socket_path}: {e or type(e).__name__}"
            ) from e
        except (
            httpx.RemoteProtocolError,
            httpx.ReadError,
            httpx.WriteError,
        ) as e:
            raise DockerUnreachable(
                f"{operation}: cannot reach Docker at {self.socket_path}: {e or type(e).__name__}"
            ) from e
        except httpx.HTTPError as e:
            raise DockerProtocolError(f"{operation}: {type(e).__name__}: {e}") from e
        finally:
            if self.observer is not None:
                self.observer(operation, status, trio.current_time() - t0)
        if response.status_code not in ok_statuses:
            raise_for_status(response.status_code, response.content, operation)
        return response

    @staticmethod
    def _json(response: httpx.Response, operation: str) -> Any:
        try:
            return response.json()
        except ValueError as e:
            raise DockerProtocolError(f"{operation}: Docker answered with bad JSON") from e

    @asynccontextmanager
    async def _long(
        self, method: str, path: str, *, operation: str, upgrade: bool = False
    ) -> AsyncIterator[RawExchange]:
        exchange = await open_exchange(self._connect, self.socket_path)
        async with exchange:
            headers = [("Connection", "Upgrade"), ("Upgrade", "tcp")] if upgrade else []
            response = await exchange.send_request(method, f"/v{API_VERSION}{path}", headers)
            if response.status >= 400:
                raise_for_status(response.status, await exchange.read_body(), operation)
            yield exchange

    # ---- the engine -----------------------------------------------------

    async def ping(self) -> None:
        await self._request("GET", "/_ping", operation="ping")

    async def version(self) -> dict[str, Any]:
        data = self._json(await self._request("GET", "/version", operation="version"), "version")
        if not isinstance(data, dict):
            raise DockerProtocolError("version: Docker answered with a non-object")
        return data

    async def check_version(self) -> str:
        """Refuse engines older than API 1.41. Returns the engine's version string."""
        data = await self.version()
        api = str(data.get("ApiVersion", "0.0"))
        if _api_version_tuple(api) < MIN_API:
            raise DockerProtocolError(
                f"Docker Engine {data.get('Version', '?')} speaks API {api}; "
                f"Kiln needs API {API_VERSION} or newer (Docker 20.10+): upgrade Docker"
            )
        return str(data.get("Version", "?"))

    async def image_inspect(self, image: str) -> dict[str, Any]:
        name = urllib.parse.quote(image, safe="")
        data = self._json(
            await self._request("GET", f"/images/{name}/json", operation=f"inspect image {image}"),
            "inspect image",
        )
        return dict(data)

    # ---- containers -----------------------------------------------------

    async def create_container(self, config: Mapping[str, Any], *, name: str | None = None) -> str:
        """Create a container (rate-limited as a create). Returns its id. Shielded once sent."""
        params = {"name": name} if name else None
        async with self.limiter.create():
            response = await self._request(
                "POST",
                "/containers/create",
                operation="create container",
                params=params,
                json_body=dict(config),
                shield=True,
            )
        data = self._json(response, "create container")
        cid = data.get("Id") if isinstance(data, dict) else None
        if not isinstance(cid, str):
            raise DockerProtocolError("create container: Docker's answer has no Id")
        return cid

    async def start(self, cid: str) -> None:
        await self._request(
            "POST",
            f"/containers/{cid}/start",
            operation="start container",
            ok_statuses=(304,),
            shield=True,
        )

    async def kill(self, cid: str, signal: str = "KILL") -> None:
        """Kill a container. A container that is already stopped or gone is not an error."""
        with contextlib.suppress(DockerNotFound, DockerConflict):
            await self._request(
                "POST",
                f"/containers/{cid}/kill",
                operation="kill container",
                params={"signal": signal},
                shield=True,
            )

    async def remove(self, cid: str, *, force: bool = True) -> bool:
        """Remove a container (and its anonymous volumes). False if it was already gone."""
        try:
            await self._request(
                "DELETE",
                f"/containers/{cid}",
                operation="remove container",
                params={"force": "1" if force else "0", "v": "1"},
                shield=True,
            )
        except DockerNotFound:
            return False
        except DockerConflict as e:
            if "already in progress" in e.message:
                return True
            raise
        return True

    async def inspect(self, cid: str) -> dict[str, Any]:
        response = await self._request(
            "GET", f"/containers/{cid}/json", operation="inspect container"
        )
        return dict(self._json(response, "inspect container"))

    async def list_containers(
        self, labels: Mapping[str, str | None] | None = None, *, all: bool = True
    ) -> list[dict[str, Any]]:
        """Containers carrying every given label (value None: the label with any value)."""
        params = {"all": "1" if all else "0"}
        if labels:
            params["filters"] = json.dumps(
                {"label": [k if v is None else f"{k}={v}" for k, v in labels.items()]}
            )
        response = await self._request(
            "GET", "/containers/json", operation="list containers", params=params
        )
        data = self._json(response, "list containers")
        return list(data) if isinstance(data, list) else []

    async def logs(self, cid: str, *, tail: int = 50) -> tuple[bytes, bytes]:
        """The last ``tail`` lines of stdout and stderr (non-TTY containers)."""
        response = await self._request(
            "GET",
            f"/containers/{cid}/logs",
            operation="container logs",
            params={"stdout": "1", "stderr": "1", "tail": str(tail)},
        )
        decoder = FrameDecoder()
        out, err = bytearray(), bytearray()
        for frame in decoder.feed(response.content):
            (out if frame.stream == STDOUT else err).extend(frame.data)
        return bytes(out), bytes(err)

    async def follow_logs(self, cid: str, on_frame: Callable[[Frame], None]) -> None:
        """Hand each stdout/stderr frame to ``on_frame`` until the container exits.

        Runs on a connection of its own; cancel it to stop following.
        """
        path = f"/containers/{cid}/logs?follow=1&stdout=1&stderr=1"
        async with self._long("GET", path, operation="follow logs") as exchange:
            decoder = FrameDecoder()
            async for chunk in exchange.body_chunks():
                for frame in decoder.feed(chunk):
                    on_frame(frame)

    async def wait(self, cid: str, condition: str = "not-running") -> WaitResult:
        """Block until the container stops; its exit code. On its own connection.

        Cancellation closes that connection; nothing else is affected.
        """
        async with self._long(
            "POST", f"/containers/{cid}/wait?condition={condition}", operation="wait container"
        ) as exchange:
            body = await exchange.read_body()
        try:
            data = json.loads(body)
            code = int(data["StatusCode"])
        except (ValueError, KeyError, TypeError) as e:
            raise DockerProtocolError(f"wait container: unreadable answer {body[:200]!r}") from e
        err = data.get("Error")
        message = err.get("Message") if isinstance(err, dict) else None
        return WaitResult(code, message or None)

    @asynccontextmanager
    async def attach(self, cid: str) -> AsyncIterator[AttachStream]:
        """Hijack the container's stdio (attach before start, so no output is lost).

        The connection is closed when the block exits, on every path.
        """
        path = f"/containers/{cid}/attach?stream=1&stdin=1&stdout=1&stderr=1"
        async with self._long("POST", path, operation="attach container", upgrade=True) as exchange:
            response = exchange.response
            assert response is not None
            if response.status not in (101, 200):
                raise DockerProtocolError(f"attach container: unexpected status {response.status}")
            yield AttachStream(exchange)


__all__ = [
    "STDERR",
    "STDOUT",
    "AttachStream",
    "DockerClient",
    "Limiter",
    "WaitResult",
]
