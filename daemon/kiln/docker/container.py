"""One container: :class:`DockerContainer` — its state, lifecycle, stdio, exec and files.
Its output read back through the API (logs, stats) is :mod:`kiln.docker.output`'s."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import AsyncIterator, Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, overload

import anyio

from kiln.docker import output
from kiln.docker.errors import DockerProtocolError, DockerTimeout
from kiln.docker.execs import Exec
from kiln.docker.stream import Message, Stream, StreamSetup
from kiln.docker.websocket import DockerWebSocket, open_websocket

if TYPE_CHECKING:
    from kiln.docker.api import Docker


class DockerContainer:
    """One container, by id. ``show()`` fetches (and caches) its inspect data."""

    def __init__(self, docker: Docker, **kwargs: Any) -> None:
        self.docker = docker
        self._container: dict[str, Any] = dict(kwargs)
        cid = kwargs.get("id", kwargs.get("Id", kwargs.get("ID")))
        if not isinstance(cid, str):
            raise ValueError("a DockerContainer needs an id")
        self._id: str = cid

    @property
    def id(self) -> str:
        return self._id

    def __getitem__(self, key: str) -> Any:
        return self._container[key]

    def __hasattr__(self, key: str) -> bool:
        return key in self._container

    def __repr__(self) -> str:
        return f"DockerContainer(id={self._id!r})"

    def _path(self, suffix: str = "") -> str:
        return f"containers/{self._id}{suffix}"

    # ---- state ---------------------------------------------------------------

    async def show(self, **kwargs: Any) -> dict[str, Any]:
        data = await self.docker._query_json(
            self._path("/json"), params=kwargs, operation="inspect container"
        )
        self._container = dict(data)
        return self._container

    async def start(self, **kwargs: Any) -> None:
        await self.docker._query(
            self._path("/start"),
            "POST",
            params=kwargs or None,
            operation="start container",
            ok=(304,),
        )

    def _grace_timeout(self, t: int | None, timeout: float | None) -> float | object | None:
        """The HTTP timeout of a call Docker may spend ``t`` (default 10) seconds on."""
        if timeout is not None:
            return timeout
        if self.docker.timeout is None:
            return None
        return self.docker.timeout + (10 if t is None else t)

    async def stop(
        self, *, t: int | None = None, signal: str | None = None, timeout: float | None = None
    ) -> None:
        await self.docker._query(
            self._path("/stop"),
            "POST",
            params={"t": t, "signal": signal},
            timeout=self._grace_timeout(t, timeout),
            operation="stop container",
            ok=(304,),
        )

    async def restart(self, timeout: float | None = None, *, t: int | None = None) -> None:
        await self.docker._query(
            self._path("/restart"),
            "POST",
            params={"t": t},
            timeout=self._grace_timeout(t, timeout),
            operation="restart container",
        )

    async def kill(self, *, timeout: float | object | None = ..., **kwargs: Any) -> None:
        await self.docker._query(
            self._path("/kill"),
            "POST",
            params=kwargs,
            timeout=timeout,
            operation="kill container",
        )

    async def pause(self) -> None:
        await self.docker._query(self._path("/pause"), "POST", operation="pause container")

    async def unpause(self) -> None:
        await self.docker._query(self._path("/unpause"), "POST", operation="unpause container")

    async def rename(self, newname: str) -> None:
        await self.docker._query(
            self._path("/rename"), "POST", params={"name": newname}, operation="rename container"
        )

    async def resize(self, *, h: int, w: int) -> None:
        await self.docker._query(
            self._path("/resize"), "POST", params={"h": h, "w": w}, operation="resize container"
        )

    async def delete(
        self,
        *,
        force: bool = False,
        v: bool = False,
        link: bool = False,
        timeout: float | object | None = ...,
    ) -> None:
        await self.docker._query(
            self._path(),
            "DELETE",
            params={"force": force, "v": v, "link": link},
            timeout=timeout,
            operation="remove container",
        )

    async def wait(self, *, timeout: float | None = None, **kwargs: Any) -> dict[str, Any]:
        """Block until the container stops (on a connection of its own); Docker's answer,
        ``{"StatusCode": ..., "Error": ...}``. ``timeout`` raises ``TimeoutError``."""
        try:
            with anyio.fail_after(timeout):
                async with self.docker._stream(
                    self._path("/wait"), "POST", params=kwargs, operation="wait container"
                ) as response:
                    body = await self.docker._read_body(response, "wait container")
        except TimeoutError as e:
            if isinstance(e, DockerTimeout):
                raise
            raise DockerTimeout(f"wait container: not stopped within {timeout} s") from e
        try:
            data = json.loads(body)
        except ValueError as e:
            raise DockerProtocolError(f"wait container: unreadable answer {body[:200]!r}") from e
        if not isinstance(data, dict):
            raise DockerProtocolError(f"wait container: unreadable answer {body[:200]!r}")
        return data

    # ---- output ----------------------------------------------------------------

    @overload
    def log(
        self,
        *,
        stdout: bool = ...,
        stderr: bool = ...,
        follow: Literal[False] = ...,
        **kwargs: Any,
    ) -> Coroutine[Any, Any, list[str]]: ...

    @overload
    def log(
        self, *, stdout: bool = ..., stderr: bool = ..., follow: Literal[True], **kwargs: Any
    ) -> AsyncIterator[str]: ...

    def log(
        self, *, stdout: bool = False, stderr: bool = False, follow: bool = False, **kwargs: Any
    ) -> Coroutine[Any, Any, list[str]] | AsyncIterator[str]:
        """The container's output, one str per piece Docker sent: a list (await it), or,
        with ``follow=True``, an async iterator that ends when the container exits."""
        if not stdout and not stderr:
            raise TypeError("Need one of stdout or stderr")
        params = {"stdout": stdout, "stderr": stderr, "follow": follow, **kwargs}
        if follow:
            return output.log_stream(self, params)
        return output.log_list(self, params)

    async def _is_tty(self) -> bool:
        config = self._container.get("Config")
        if not isinstance(config, Mapping) or "Tty" not in config:
            config = (await self.show()).get("Config") or {}
        return bool(config.get("Tty"))

    def log_messages(
        self, *, follow: bool = False, tail: int | str = "all"
    ) -> AsyncIterator[Message]:
        """Kiln's addition: a non-TTY container's output as :class:`Message` s (stream
        and bytes), up to now or, with ``follow``, until it exits (own connection)."""
        return output.log_messages(self, follow=follow, tail=tail)

    @overload
    def stats(self, *, stream: Literal[True] = ...) -> AsyncIterator[dict[str, Any]]: ...

    @overload
    def stats(self, *, stream: Literal[False]) -> Coroutine[Any, Any, list[dict[str, Any]]]: ...

    def stats(
        self, *, stream: bool = True
    ) -> AsyncIterator[dict[str, Any]] | Coroutine[Any, Any, list[dict[str, Any]]]:
        """Resource usage: an async iterator of samples, or (``stream=False``) a list of one."""
        if stream:
            return output.stats_stream(self)
        return output.stats_once(self)

    async def websocket(self, **params: Any) -> DockerWebSocket:
        """The container's stdio over a websocket (``stdin``, ``stdout``, ``stderr``,
        ``stream``, ``logs`` as query parameters)."""
        return await open_websocket(self.docker, self._path("/attach/ws"), params)

    def attach(
        self,
        *,
        stdout: bool = False,
        stderr: bool = False,
        stdin: bool = False,
        detach_keys: str | None = None,
        logs: bool = False,
        tty: bool | None = None,
    ) -> Stream:
        """The container's stdio, hijacked (attach before start to miss nothing).
        ``tty`` (Kiln's addition) saves the inspect that otherwise tells whether the
        output is framed."""

        async def setup() -> StreamSetup:
            is_tty = tty if tty is not None else await self._is_tty()
            params = {
                "stdin": stdin,
                "stdout": stdout,
                "stderr": stderr,
                "logs": logs,
                "stream": True,
                "detachKeys": detach_keys,
            }
            return StreamSetup(self._path("/attach"), params, is_tty, operation="attach container")

        return Stream(self.docker, setup)

    async def exec(
        self,
        cmd: str | Sequence[str],
        stdout: bool = True,
        stderr: bool = True,
        stdin: bool = False,
        tty: bool = False,
        privileged: bool = False,
        user: str = "",
        environment: Mapping[str, str] | Sequence[str] | None = None,
        workdir: str | None = None,
        detach_keys: str | None = None,
    ) -> Exec:
        if isinstance(environment, Mapping):
            environment = [f"{k}={v}" for k, v in environment.items()]
        body: dict[str, Any] = {
            "Cmd": [cmd] if isinstance(cmd, str) else list(cmd),
            "AttachStdin": stdin,
            "AttachStdout": stdout,
            "AttachStderr": stderr,
            "Tty": tty,
            "Privileged": privileged,
            "User": user,
        }
        if environment is not None:
            body["Env"] = list(environment)
        if workdir is not None:
            body["WorkingDir"] = workdir
        if detach_keys is not None:
            body["DetachKeys"] = detach_keys
        data = await self.docker._query_json(
            self._path("/exec"), "POST", data=body, operation="create exec"
        )
        return Exec(self.docker, data["Id"], tty)

    # ---- files, images, ports -----------------------------------------------------

    async def put_archive(self, path: str, data: bytes) -> bool:
        response = await self.docker._query(
            self._path("/archive"),
            "PUT",
            params={"path": path},
            content=data,
            headers={"Content-Type": "application/x-tar"},
            operation="put archive",
        )
        return response.status_code == 200

    async def get_archive(self, path: str) -> tarfile.TarFile:
        response = await self.docker._query(
            self._path("/archive"), params={"path": path}, operation="get archive"
        )
        return tarfile.open(fileobj=io.BytesIO(response.content))

    async def commit(
        self,
        *,
        repository: str | None = None,
        tag: str | None = None,
        message: str | None = None,
        author: str | None = None,
        changes: str | Sequence[str] | None = None,
        config: Mapping[str, Any] | None = None,
        pause: bool = True,
    ) -> dict[str, Any]:
        if changes is not None and not isinstance(changes, str):
            changes = "\n".join(changes)
        data = await self.docker._query_json(
            "commit",
            "POST",
            params={
                "container": self._id,
                "repo": repository,
                "tag": tag,
                "comment": message,
                "author": author,
                "changes": changes,
                "pause": pause,
            },
            data=dict(config) if config is not None else {},
            operation="commit container",
        )
        return dict(data)

    async def port(self, private_port: int | str) -> list[dict[str, str]] | None:
        if "NetworkSettings" not in self._container:
            await self.show()
        ports = (self._container.get("NetworkSettings") or {}).get("Ports") or {}
        found = ports.get(f"{private_port}/tcp")
        if found is None:
            found = ports.get(f"{private_port}/udp")
        return found


__all__ = ["DockerContainer"]
