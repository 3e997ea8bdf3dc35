"""``Docker``: the aiodocker-compatible client, and the one request path every call takes.

Written on anyio (through httpcore, whose connection pools speak to the engine; httpx's
extra layers cost more per call than a Docker call is worth), so the same code runs
under asyncio and Trio.

* Short calls go through the client's own keep-alive pool (:mod:`kiln.docker.pool`):
  a caller waits for a slot cancellably; once it has one, the exchange runs shielded, so
  every mutation (create, start, stop, kill, restart, delete) finishes and no connection
  is left mid-answer. httpcore's per-read/write timeouts bound it: a caller's
  ``timeout=`` surfaces as :class:`~kiln.docker.errors.DockerTimeout`, which is a
  builtin ``TimeoutError``.
* Long calls (``wait``, attach, exec streams, followed logs, stats, pull/push/build
  progress) each take a connection of their own from an unpooled httpcore pool, so they
  never hold a short call's connection and cancelling one closes only its socket.
* ``limiter`` is the hook a host program (Kiln's rate limiter) uses to pace short calls
  and container creates; ``observer`` hears every short call's operation, outcome and
  duration.
"""

from __future__ import annotations

import json
import os
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from typing import Any, Protocol
from urllib.parse import quote, urlencode

import anyio
import httpcore

from kiln.docker.containers import DockerContainers
from kiln.docker.errors import (
    DockerNotConnected,
    DockerProtocolError,
    DockerTimeout,
    DockerUnreachable,
    api_error,
)
from kiln.docker.events import DockerEvents
from kiln.docker.h11conn import Connector, H11Exchange, connect_endpoint
from kiln.docker.host import Endpoint, context_dir_name, resolve
from kiln.docker.images import DockerImages
from kiln.docker.networks import DockerNetworks
from kiln.docker.params import Params, error_message, httpize
from kiln.docker.pool import CONNECT_TIMEOUT, Reply, ShortPool, Transport
from kiln.docker.system import DockerSystem
from kiln.docker.volumes import DockerVolumes

DEFAULT_TIMEOUT = 30.0
UPGRADE_HEADERS = [(b"Connection", b"Upgrade"), (b"Upgrade", b"tcp")]
_JSON = (b"Content-Type", b"application/json")
# A long call waits as long as it must; only making its connection is bounded.
_LONG_TIMEOUTS = {
    "timeout": {"connect": CONNECT_TIMEOUT, "read": None, "write": None, "pool": None}
}


class Limiter(Protocol):
    """What the client asks before it talks to Docker (see :mod:`kiln.admission`)."""

    def call(self) -> AbstractAsyncContextManager[None]: ...

    def create(self) -> AbstractAsyncContextManager[None]: ...


class _NoLimit:
    def call(self) -> AbstractAsyncContextManager[None]:
        return nullcontext()

    def create(self) -> AbstractAsyncContextManager[None]:
        return nullcontext()


Observer = Callable[[str, str, float], None]


class Docker:
    """A Docker Engine client, aiodocker's API on anyio. Make it anywhere (no I/O);
    end it with ``await docker.close()`` (or use ``async with``).

    ``network_backend`` (httpcore's) opens the connections of both pools — the seam
    for a fake engine; ``connector`` (a :class:`Transport`) carries both short and long
    calls, ``session`` only the short ones; ``connect`` opens the events listener's
    connections.
    """

    def __init__(
        self,
        url: str | None = None,
        connector: Transport | None = None,
        session: Transport | None = None,
        ssl_context: ssl.SSLContext | None = None,
        api_version: str = "auto",
        *,
        context: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        pool_size: int = 32,
        limiter: Limiter | None = None,
        observer: Observer | None = None,
        connect: Connector | None = None,
        network_backend: httpcore.AsyncNetworkBackend | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self._endpoint: Endpoint = resolve(
            url, context, os.environ if env is None else env, ssl_context=ssl_context
        )
        self.docker_host: str = self._endpoint.docker_host
        #: Where the engine is, in full (``docker_host`` says only "unix://localhost").
        self.url = f"unix://{self._endpoint.uds}" if self._endpoint.uds else self._endpoint.base_url
        #: The engine's unix socket, if that is how it is reached.
        self.socket_path: str | None = self._endpoint.uds
        self.api_version = api_version
        self.timeout = timeout
        self.limiter: Limiter = limiter or _NoLimit()
        self.observer = observer
        self._base = self._endpoint.base_url.encode()
        self._host = self._base.split(b"://", 1)[1]
        https = self._endpoint.base_url.startswith("https")
        sslctx = self._endpoint.ssl_context
        if https and sslctx is None:
            sslctx = ssl.create_default_context()
        self._pool = ShortPool(
            self._endpoint.base_url,
            size=pool_size,
            uds=self._endpoint.uds,
            ssl_context=sslctx,
            network_backend=network_backend,
            transport=session or connector,
        )
        self._long: Transport = connector or httpcore.AsyncConnectionPool(
            ssl_context=sslctx,
            max_connections=None,
            max_keepalive_connections=0,
            uds=self._endpoint.uds,
            network_backend=network_backend,
        )
        self._connect: Connector = connect or (lambda: connect_endpoint(self._endpoint))
        self.containers = DockerContainers(self)
        self.images = DockerImages(self)
        self.volumes = DockerVolumes(self)
        self.networks = DockerNetworks(self)
        self.events = DockerEvents(self)
        self.system = DockerSystem(self)
        self.pull = self.images.pull

    @staticmethod
    def _get_context_dir_name(name: str) -> str:
        return context_dir_name(name)

    async def __aenter__(self) -> Docker:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        with anyio.CancelScope(shield=True):
            await self.events.stop()
            await self._pool.aclose()
            if self._long is not self._pool.transport:
                await self._long.aclose()

    async def version(self) -> dict[str, Any]:
        data = await self._query_json("version", operation="version")
        return dict(data)

    async def _ping(self, timeout: float | object | None = ...) -> str:
        response = await self._query("_ping", operation="ping", timeout=timeout)
        return response.text

    async def ping(self, timeout: float | object | None = ...) -> str:
        """``GET /_ping`` (Kiln's addition; aiodocker has only ``_ping``)."""
        return await self._ping(timeout)

    # ---- the request path ------------------------------------------------

    async def _api_prefix(self) -> str:
        if self.api_version == "auto":
            data = await self._query_json("version", versioned=False, operation="version")
            version = data.get("ApiVersion") if isinstance(data, dict) else None
            if not isinstance(version, str):
                raise DockerProtocolError("Docker's /version has no ApiVersion")
            self.api_version = "v" + version
        return "/" + self.api_version

    async def _target(self, path: str, versioned: bool, params: Params | None = None) -> str:
        listener = self.events.task
        if listener is not None and listener.exchange is None and not listener.busy:
            await self.events._open_pending()
        path = quote(path.lstrip("/"), safe="/:@")
        if not versioned:
            target = "/" + path
        elif self.api_version == "auto":
            target = f"{await self._api_prefix()}/{path}"
        else:
            target = f"/{self.api_version}/{path}"
        if params:
            query = httpize(params)
            if query:
                target += "?" + urlencode(query)
        return target

    def _convert(self, e: Exception, operation: str) -> Exception:
        if isinstance(e, httpcore.TimeoutException):
            return DockerTimeout(f"{operation}: Docker did not answer in time ({type(e).__name__})")
        if isinstance(e, (httpcore.ConnectError, ConnectionRefusedError, FileNotFoundError)):
            return DockerNotConnected(
                f"{operation}: cannot reach Docker at {self.docker_host}: {e or type(e).__name__}"
            )
        if isinstance(e, (httpcore.NetworkError, httpcore.RemoteProtocolError, OSError)):
            return DockerUnreachable(
                f"{operation}: cannot reach Docker at {self.docker_host}: {e or type(e).__name__}"
            )
        return DockerProtocolError(f"{operation}: {type(e).__name__}: {e}")

    def _long_request(
        self, method: str, url: bytes, data: Any, content: Any, headers: Any, upgrade: bool
    ) -> httpcore.Request:
        fields, body = _payload(method, data, content, headers)
        fields.insert(0, (b"Host", self._host))
        if upgrade:
            fields += UPGRADE_HEADERS
        return httpcore.Request(
            method.encode(), url, headers=fields, content=body, extensions=_LONG_TIMEOUTS
        )

    async def _query(
        self,
        path: str,
        method: str = "GET",
        *,
        params: Params | None = None,
        data: Any = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | object | None = ...,
        versioned: bool = True,
        operation: str | None = None,
        ok: tuple[int, ...] = (),
        sink: Callable[[memoryview], None] | None = None,
    ) -> Reply:
        """One short call on the pooled connections; Docker's error statuses raise. With
        ``sink``, a successful answer's body goes to it piece by piece as it is read."""
        op = operation or f"{method} {path}"
        target = await self._target(path, versioned, params)
        seconds = self.timeout if timeout is ... else timeout
        assert seconds is None or isinstance(seconds, (int, float))
        fields, body = _payload(method, data, content, headers)
        assert isinstance(body, bytes)
        observer = self.observer
        t0 = anyio.current_time() if observer is not None else 0.0
        outcome = "error"
        try:
            async with self.limiter.call():
                answer = await self._pool.exchange(
                    method, target, fields, body, timeout=seconds, sink=sink
                )
            outcome = str(answer.status_code)
        except (httpcore.TimeoutException, httpcore.NetworkError) as e:
            if isinstance(e, httpcore.TimeoutException):
                outcome = "timeout"
            raise self._convert(e, op) from e
        except (httpcore.ProtocolError, httpcore.UnsupportedProtocol, OSError) as e:
            raise self._convert(e, op) from e
        finally:
            if observer is not None:
                observer(op, outcome, anyio.current_time() - t0)
        if answer.status_code >= 400 and answer.status_code not in ok:
            raise api_error(answer.status_code, error_message(answer.content), op)
        return answer

    async def _query_json(self, path: str, method: str = "GET", **kwargs: Any) -> Any:
        response = await self._query(path, method, **kwargs)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError as e:
            raise DockerProtocolError(f"{method} {path}: Docker answered with bad JSON") from e

    @asynccontextmanager
    async def _stream(
        self,
        path: str,
        method: str = "GET",
        *,
        params: Params | None = None,
        data: Any = None,
        content: Any = None,
        headers: Mapping[str, str] | None = None,
        operation: str | None = None,
        upgrade: bool = False,
    ) -> AsyncIterator[httpcore.Response]:
        """A long call on a connection of its own; yields the response, body unread.

        ``upgrade=True`` asks Docker to hijack the connection (attach, exec start): the
        raw stream is ``response.extensions["network_stream"]``.
        """
        op = operation or f"{method} {path}"
        url = self._base + (await self._target(path, True, params)).encode()
        request = self._long_request(method, url, data, content, headers, upgrade)
        try:
            response = await self._long.handle_async_request(request)
        except (
            httpcore.TimeoutException,
            httpcore.NetworkError,
            httpcore.ProtocolError,
            OSError,
        ) as e:
            raise self._convert(e, op) from e
        try:
            if response.status >= 400:
                try:
                    body = await response.aread()
                except (
                    httpcore.TimeoutException,
                    httpcore.NetworkError,
                    httpcore.ProtocolError,
                ) as e:
                    raise self._convert(e, op) from e
                raise api_error(response.status, error_message(body), op)
            yield response
        finally:
            with anyio.CancelScope(shield=True):
                await response.aclose()

    async def _read_body(self, response: httpcore.Response, operation: str) -> bytes:
        """A long call's whole answer; a connection that breaks mid-answer is Docker gone."""
        try:
            return await response.aread()
        except (httpcore.TimeoutException, httpcore.NetworkError, httpcore.ProtocolError) as e:
            raise self._convert(e, operation) from e

    async def _stream_chunks(
        self, response: httpcore.Response, operation: str
    ) -> AsyncIterator[bytes]:
        try:
            async for chunk in response.aiter_stream():
                yield chunk
        except (httpcore.TimeoutException, httpcore.NetworkError, httpcore.ProtocolError) as e:
            raise self._convert(e, operation) from e

    async def _open_exchange(
        self, method: str, path: str, params: Params | None = None
    ) -> H11Exchange:
        """A hand-driven exchange on its own connection (the events listener's), whose
        reads can be cancelled without losing anything."""
        target = await self._target(path, True, params)
        try:
            stream = await self._connect()
        except OSError as e:
            raise DockerNotConnected(
                f"cannot reach Docker at {self.docker_host}: {e.strerror or e}"
            ) from e
        exchange = H11Exchange(stream, host=self._host.decode())
        try:
            head = await exchange.send_request(method, target)
            if head.status >= 400:
                body = await exchange.read_body()
                raise api_error(head.status, error_message(body), f"{method} {path}")
        except BaseException:
            await exchange.aclose()
            raise
        return exchange


def _payload(
    method: str, data: Any, content: Any, headers: Mapping[str, str] | None
) -> tuple[list[tuple[bytes, bytes]], bytes | AsyncIterable[bytes]]:
    """A request's own header fields and body: ``data`` as JSON, or ``content`` as it is
    (bytes, or an async iterable sent chunked)."""
    fields = [(k.encode(), v.encode()) for k, v in headers.items()] if headers else []
    body = b""
    if data is not None:
        body = json.dumps(data).encode()
        fields.append(_JSON)
    elif isinstance(content, (bytes, bytearray, memoryview)):
        body = bytes(content)
    elif content is not None:
        fields.append((b"Transfer-Encoding", b"chunked"))
        return fields, content
    if body or method in ("POST", "PUT"):
        fields.append((b"Content-Length", b"%d" % len(body)))
    return fields, body


__all__ = ["DEFAULT_TIMEOUT", "Docker", "Limiter", "Observer", "Reply", "Transport"]
