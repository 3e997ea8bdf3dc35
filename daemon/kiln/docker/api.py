"""``Docker``: the aiodocker-compatible client, and the one request path every call takes.

Written on anyio (through httpx/httpcore), so the same code runs under asyncio and Trio.

* Short calls share one connection pool and are bounded by httpx's own timeouts, not by
  outer cancel scopes. They wait for a free connection on a semaphore of the client's own
  (cancellable), never in httpcore's pool: a request cancelled while queued in that pool
  can leave it jammed for good (seen under asyncio). A caller's ``timeout=`` becomes httpx's timeout and surfaces as
  :class:`~kiln.docker.errors.DockerTimeout`, which is a builtin ``TimeoutError``.
* Mutations of containers (create, start, stop, kill, restart, delete) run shielded: a
  caller that goes away never leaves Docker half-way. They still end — the timeout
  bounds them.
* Long calls (``wait``, attach, exec streams, followed logs, stats, pull/push/build
  progress) each take a connection of their own from a second, unpooled client, so they
  never hold a short call's connection and cancelling one closes only its socket.
* ``limiter`` is the hook a host program (Kiln's rate limiter) uses to pace short calls
  and container creates; ``observer`` hears every short call's operation, outcome and
  duration.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from typing import Any, Protocol

import anyio
import httpx

from kiln.docker.containers import DockerContainers
from kiln.docker.errors import (
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
from kiln.docker.system import DockerSystem
from kiln.docker.volumes import DockerVolumes

DEFAULT_TIMEOUT = 30.0
UPGRADE_HEADERS = {"Connection": "Upgrade", "Upgrade": "tcp"}


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
    end it with ``await docker.close()`` (or use ``async with``)."""

    def __init__(
        self,
        url: str | None = None,
        connector: httpx.AsyncBaseTransport | None = None,
        session: httpx.AsyncClient | None = None,
        ssl_context: ssl.SSLContext | None = None,
        api_version: str = "auto",
        *,
        context: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        pool_size: int = 32,
        limiter: Limiter | None = None,
        observer: Observer | None = None,
        connect: Connector | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self._endpoint: Endpoint = resolve(
            url, context, os.environ if env is None else env, ssl_context=ssl_context
        )
        self.docker_host: str = self._endpoint.docker_host
        self.api_version = api_version
        self.timeout = timeout
        self._pool_size = pool_size
        self._slots: anyio.Semaphore | None = None  # made at first use: it needs a running loop
        self.limiter: Limiter = limiter or _NoLimit()
        self.observer = observer
        verify: ssl.SSLContext | bool = self._endpoint.ssl_context or (
            self._endpoint.base_url.startswith("https")
        )
        short_transport = connector or httpx.AsyncHTTPTransport(
            uds=self._endpoint.uds,
            verify=verify,
            retries=0,
            limits=httpx.Limits(max_connections=pool_size, max_keepalive_connections=pool_size),
        )
        long_transport = connector or httpx.AsyncHTTPTransport(
            uds=self._endpoint.uds,
            verify=verify,
            retries=0,
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=0),
        )
        self.session = session or httpx.AsyncClient(
            transport=short_transport,
            base_url=self._endpoint.base_url,
            timeout=self._httpx_timeout(timeout),
        )
        self._long = httpx.AsyncClient(
            transport=long_transport,
            base_url=self._endpoint.base_url,
            timeout=httpx.Timeout(None, connect=5.0),
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

    @staticmethod
    def _httpx_timeout(timeout: float | None) -> httpx.Timeout:
        if timeout is None:
            return httpx.Timeout(None, connect=5.0)
        return httpx.Timeout(timeout, connect=min(timeout, 5.0))

    async def __aenter__(self) -> Docker:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        with anyio.CancelScope(shield=True):
            await self.events.stop()
            await self.session.aclose()
            await self._long.aclose()

    async def version(self) -> dict[str, Any]:
        data = await self._query_json("version", operation="version")
        return dict(data)

    async def _ping(self) -> str:
        response = await self._query("_ping", operation="ping")
        return response.text

    # ---- the request path ------------------------------------------------

    async def _api_prefix(self) -> str:
        if self.api_version == "auto":
            data = await self._query_json("version", versioned=False, operation="version")
            version = data.get("ApiVersion") if isinstance(data, dict) else None
            if not isinstance(version, str):
                raise DockerProtocolError("Docker's /version has no ApiVersion")
            self.api_version = "v" + version
        return "/" + self.api_version

    async def _url(self, path: str, versioned: bool) -> str:
        listener = self.events.task
        if listener is not None and listener.exchange is None and not listener.busy:
            await self.events._open_pending()
        path = path.lstrip("/")
        return f"{await self._api_prefix()}/{path}" if versioned else "/" + path

    def _convert(self, e: httpx.HTTPError, operation: str) -> Exception:
        if isinstance(e, httpx.TimeoutException):
            return DockerTimeout(f"{operation}: Docker did not answer in time ({type(e).__name__})")
        if isinstance(e, (httpx.ConnectError, httpx.NetworkError, httpx.RemoteProtocolError)):
            return DockerUnreachable(
                f"{operation}: cannot reach Docker at {self.docker_host}: {e or type(e).__name__}"
            )
        return DockerProtocolError(f"{operation}: {type(e).__name__}: {e}")

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
    ) -> httpx.Response:
        """One short call on the pooled client; Docker's error statuses raise."""
        op = operation or f"{method} {path}"
        url = await self._url(path, versioned)
        kwargs: dict[str, Any] = {"params": httpize(params), "headers": headers}
        if data is not None:
            kwargs["json"] = data
        elif content is not None:
            kwargs["content"] = content
        if timeout is not ...:
            kwargs["timeout"] = self._httpx_timeout(timeout)  # type: ignore[arg-type]
        t0 = anyio.current_time()
        outcome = "error"
        if self._slots is None:
            self._slots = anyio.Semaphore(self._pool_size)
        try:
            async with self.limiter.call(), self._slots:
                # Once sent, a short call finishes (its timeout bounds it): a request
                # cancelled inside httpcore's pool can leave a connection marked busy
                # for good, and mutations must not be left half-way.
                with anyio.CancelScope(shield=True):
                    response = await self.session.request(method, url, **kwargs)
            outcome = str(response.status_code)
        except httpx.HTTPError as e:
            if isinstance(e, httpx.TimeoutException):
                outcome = "timeout"
            raise self._convert(e, op) from e
        finally:
            if self.observer is not None:
                self.observer(op, outcome, anyio.current_time() - t0)
        if response.status_code >= 400 and response.status_code not in ok:
            raise api_error(response.status_code, error_message(response.content), op)
        return response

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
    ) -> AsyncIterator[httpx.Response]:
        """A long call on a connection of its own; yields the response, body unread.

        ``upgrade=True`` asks Docker to hijack the connection (attach, exec start): the
        raw stream is ``response.extensions["network_stream"]``.
        """
        op = operation or f"{method} {path}"
        url = await self._url(path, True)
        all_headers = dict(headers or {})
        if upgrade:
            all_headers.update(UPGRADE_HEADERS)
        kwargs: dict[str, Any] = {"params": httpize(params), "headers": all_headers}
        if data is not None:
            kwargs["json"] = data
        elif content is not None:
            kwargs["content"] = content
        request = self._long.build_request(method, url, **kwargs)
        try:
            response = await self._long.send(request, stream=True)
        except httpx.HTTPError as e:
            raise self._convert(e, op) from e
        try:
            if response.status_code >= 400:
                try:
                    body = await response.aread()
                except httpx.HTTPError as e:
                    raise self._convert(e, op) from e
                raise api_error(response.status_code, error_message(body), op)
            yield response
        finally:
            with anyio.CancelScope(shield=True):
                await response.aclose()

    async def _stream_chunks(
        self, response: httpx.Response, operation: str
    ) -> AsyncIterator[bytes]:
        try:
            async for chunk in response.aiter_raw():
                yield chunk
        except httpx.HTTPError as e:
            raise self._convert(e, operation) from e

    async def _open_exchange(
        self, method: str, path: str, params: Params | None = None
    ) -> H11Exchange:
        """A hand-driven exchange on its own connection (the events listener's), whose
        reads can be cancelled without losing anything."""
        url = await self._url(path, True)
        query = httpx.QueryParams(httpize(params) or {})
        target = f"{url}?{query}" if query else url
        try:
            stream = await self._connect()
        except OSError as e:
            raise DockerUnreachable(
                f"cannot reach Docker at {self.docker_host}: {e.strerror or e}"
            ) from e
        exchange = H11Exchange(stream, host=self._endpoint.base_url.split("://", 1)[1])
        try:
            head = await exchange.send_request(method, target)
            if head.status >= 400:
                body = await exchange.read_body()
                raise api_error(head.status, error_message(body), f"{method} {path}")
        except BaseException:
            await exchange.aclose()
            raise
        return exchange


__all__ = ["DEFAULT_TIMEOUT", "Docker", "Limiter", "Observer"]
