"""Images: ``docker.images`` (inspect, list, pull/push/build with progress, export, load)."""

from __future__ import annotations

import base64
import builtins
import json
import warnings
from collections.abc import AsyncIterable, AsyncIterator, Coroutine, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import IO, TYPE_CHECKING, Any, Literal, overload

import httpcore

from kiln.docker.jsonstream import JsonStreamDecoder
from kiln.docker.params import filters_param

if TYPE_CHECKING:
    from kiln.docker.api import Docker

READ_CHUNK = 65536
Progress = dict[str, Any]


def auth_header(auth: Mapping[str, Any] | str | bytes | None) -> dict[str, str]:
    """``X-Registry-Auth``: base64 of the auth JSON; anonymous calls send a placeholder
    (a daemon refuses a push with no header at all)."""
    if auth is None:
        return {"X-Registry-Auth": "placeholder"}
    if isinstance(auth, Mapping):
        auth = json.dumps(dict(auth)).encode()
    if isinstance(auth, str):
        auth = auth.encode()
    return {"X-Registry-Auth": base64.urlsafe_b64encode(auth).decode()}


def _has_tag(ref: str) -> bool:
    return "@" in ref or ":" in ref.rsplit("/", 1)[-1]


class ImageExport:
    """The body of ``GET /images/{name}/get``, read as aiohttp's StreamReader reads."""

    def __init__(self, docker: Docker, response: httpcore.Response) -> None:
        self._docker = docker
        self._response = response

    def __bool__(self) -> bool:
        return True

    async def iter_chunks(self) -> AsyncIterator[tuple[bytes, bool]]:
        async for chunk in self._docker._stream_chunks(self._response, "export image"):
            yield chunk, False

    async def iter_any(self) -> AsyncIterator[bytes]:
        async for chunk in self._docker._stream_chunks(self._response, "export image"):
            yield chunk

    async def read(self) -> bytes:
        return await self._response.aread()


class DockerImages:
    def __init__(self, docker: Docker) -> None:
        self.docker = docker

    async def list(self, **params: Any) -> builtins.list[dict[str, Any]]:
        if isinstance(params.get("filters"), Mapping):
            params["filters"] = filters_param(params["filters"])
        return list(
            await self.docker._query_json("images/json", params=params, operation="list images")
        )

    async def inspect(self, name: str) -> dict[str, Any]:
        return dict(await self.docker._query_json(f"images/{name}/json", operation="inspect image"))

    async def get(self, name: str) -> dict[str, Any]:
        warnings.warn("images.get() is images.inspect()", DeprecationWarning, stacklevel=2)
        return await self.inspect(name)

    async def history(self, name: str) -> builtins.list[dict[str, Any]]:
        return list(
            await self.docker._query_json(f"images/{name}/history", operation="image history")
        )

    async def tag(self, name: str, repo: str, *, tag: str | None = None) -> bool:
        await self.docker._query(
            f"images/{name}/tag",
            "POST",
            params={"repo": repo, "tag": tag or "latest"},
            operation="tag image",
        )
        return True

    async def delete(
        self, name: str, *, force: bool = False, noprune: bool = False
    ) -> builtins.list[Any]:
        data = await self.docker._query_json(
            f"images/{name}",
            "DELETE",
            params={"force": force, "noprune": noprune},
            operation="remove image",
        )
        return list(data or [])

    async def prune(self, *, filters: Mapping[str, Any] | None = None) -> dict[str, Any]:
        data = await self.docker._query_json(
            "images/prune",
            "POST",
            params={"filters": filters_param(filters)},
            operation="prune images",
        )
        return dict(data)

    async def prune_builds(
        self,
        *,
        reserved_space: int | None = None,
        max_used_space: int | None = None,
        min_free_space: int | None = None,
        all_builds: bool | None = None,
        filters: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        data = await self.docker._query_json(
            "build/prune",
            "POST",
            params={
                "reserved-space": reserved_space,
                "keep-storage": reserved_space,
                "max-used-space": max_used_space,
                "min-free-space": min_free_space,
                "all": all_builds,
                "filters": filters_param(filters),
            },
            operation="prune builds",
        )
        return dict(data)

    # ---- progress streams ------------------------------------------------------------

    async def _progress(
        self,
        path: str,
        *,
        params: Mapping[str, Any],
        headers: Mapping[str, str] | None = None,
        content: Any = None,
        operation: str,
    ) -> AsyncIterator[Progress]:
        async with self.docker._stream(
            path, "POST", params=params, headers=headers, content=content, operation=operation
        ) as response:
            decoder = JsonStreamDecoder()
            async for chunk in self.docker._stream_chunks(response, operation):
                for item in decoder.feed(chunk):
                    yield item
            decoder.eof()

    @staticmethod
    async def _collect(items: AsyncIterator[Progress]) -> builtins.list[Progress]:
        return [item async for item in items]

    def _either(
        self, items: AsyncIterator[Progress], stream: bool
    ) -> AsyncIterator[Progress] | Coroutine[Any, Any, builtins.list[Progress]]:
        return items if stream else self._collect(items)

    @overload
    def pull(
        self,
        from_image: str,
        *,
        auth: Mapping[str, Any] | str | None = ...,
        tag: str | None = ...,
        repo: str | None = ...,
        platform: str | None = ...,
        stream: Literal[False] = ...,
    ) -> Coroutine[Any, Any, builtins.list[Progress]]: ...

    @overload
    def pull(
        self,
        from_image: str,
        *,
        auth: Mapping[str, Any] | str | None = ...,
        tag: str | None = ...,
        repo: str | None = ...,
        platform: str | None = ...,
        stream: Literal[True],
    ) -> AsyncIterator[Progress]: ...

    def pull(
        self,
        from_image: str,
        *,
        auth: Mapping[str, Any] | str | None = None,
        tag: str | None = None,
        repo: str | None = None,
        platform: str | None = None,
        stream: bool = False,
    ) -> AsyncIterator[Progress] | Coroutine[Any, Any, builtins.list[Progress]]:
        """Pull an image: its progress as a list (await), or as it comes (``stream=True``)."""
        if tag is None and not _has_tag(from_image):
            tag = "latest"
        params = {"fromImage": from_image, "tag": tag, "repo": repo, "platform": platform}
        headers = auth_header(auth) if auth is not None else None
        items = self._progress(
            "images/create", params=params, headers=headers, operation="pull image"
        )
        return self._either(items, stream)

    @overload
    def push(
        self,
        name: str,
        *,
        auth: Mapping[str, Any] | str | None = ...,
        tag: str | None = ...,
        stream: Literal[False] = ...,
    ) -> Coroutine[Any, Any, builtins.list[Progress]]: ...

    @overload
    def push(
        self,
        name: str,
        *,
        auth: Mapping[str, Any] | str | None = ...,
        tag: str | None = ...,
        stream: Literal[True],
    ) -> AsyncIterator[Progress]: ...

    def push(
        self,
        name: str,
        *,
        auth: Mapping[str, Any] | str | None = None,
        tag: str | None = None,
        stream: bool = False,
    ) -> AsyncIterator[Progress] | Coroutine[Any, Any, builtins.list[Progress]]:
        items = self._progress(
            f"images/{name}/push",
            params={"tag": tag},
            headers=auth_header(auth),
            operation="push image",
        )
        return self._either(items, stream)

    def build(
        self,
        *,
        remote: str | None = None,
        fileobj: IO[bytes] | None = None,
        path_dockerfile: str | None = None,
        tag: str | None = None,
        quiet: bool = False,
        nocache: bool = False,
        buildargs: Mapping[str, str] | None = None,
        pull: bool = False,
        rm: bool = True,
        forcerm: bool = False,
        labels: Mapping[str, str] | None = None,
        platform: str | None = None,
        stream: bool = False,
        encoding: str | None = None,
    ) -> Any:
        """Build from a tar context (``fileobj``, optionally compressed: ``encoding``):
        the progress as a list (await), or as it comes (``stream=True``)."""
        if remote is not None:
            raise ValueError("building from a remote context is not supported; pass fileobj")
        if fileobj is None:
            raise ValueError("build needs fileobj, a tar archive of the build context")
        headers = {"Content-Type": "application/x-tar"}
        if encoding:
            headers["Content-Encoding"] = encoding
        params = {
            "t": tag,
            "q": quiet,
            "nocache": nocache,
            "pull": pull,
            "rm": rm,
            "forcerm": forcerm,
            "dockerfile": path_dockerfile,
            "buildargs": dict(buildargs) if buildargs else None,
            "labels": dict(labels) if labels else None,
            "platform": platform,
        }
        items = self._progress(
            "build",
            params=params,
            headers=headers,
            content=_chunks(fileobj),
            operation="build image",
        )
        return self._either(items, stream)

    def export_image(self, name: str) -> AbstractAsyncContextManager[ImageExport]:
        """``async with docker.images.export_image(name) as reader``: the image as a tar."""

        @asynccontextmanager
        async def cm() -> AsyncIterator[ImageExport]:
            async with self.docker._stream(f"images/{name}/get", operation="export image") as r:
                yield ImageExport(self.docker, r)

        return cm()

    async def import_image(
        self, data: AsyncIterable[bytes] | bytes, stream: bool = False
    ) -> builtins.list[Progress]:
        """Load images from a tar (``docker load``), sent as it is produced."""
        items = self._progress(
            "images/load",
            params={"quiet": False},
            headers={"Content-Type": "application/x-tar"},
            content=data,
            operation="load images",
        )
        return await self._collect(items)


async def _chunks(fileobj: IO[bytes]) -> AsyncIterator[bytes]:
    while chunk := fileobj.read(READ_CHUNK):
        yield chunk


__all__ = ["DockerImages", "ImageExport", "auth_header"]
