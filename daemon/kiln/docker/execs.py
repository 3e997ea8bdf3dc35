"""Exec instances: a command run inside a running container."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Literal, overload

from kiln.docker.stream import Message, Stream, StreamSetup

if TYPE_CHECKING:
    from kiln.docker.api import Docker


class Exec:
    def __init__(self, docker: Docker, id: str, tty: bool | None) -> None:
        self.docker = docker
        self._id = id
        self._tty = tty

    @property
    def id(self) -> str:
        return self._id

    def __repr__(self) -> str:
        return f"Exec(id={self._id!r})"

    async def inspect(self) -> dict[str, Any]:
        data = await self.docker._query_json(f"exec/{self._id}/json", operation="inspect exec")
        return dict(data)

    async def resize(self, *, h: int | None = None, w: int | None = None) -> None:
        await self.docker._query(
            f"exec/{self._id}/resize", "POST", params={"h": h, "w": w}, operation="resize exec"
        )

    async def _learn_tty(self) -> bool:
        if self._tty is None:
            info = await self.inspect()
            self._tty = bool((info.get("ProcessConfig") or {}).get("tty"))
        return self._tty

    @overload
    def start(self, *, timeout: float | None = ..., detach: Literal[False] = ...) -> Stream: ...

    @overload
    def start(
        self, *, timeout: float | None = ..., detach: Literal[True]
    ) -> Coroutine[Any, Any, bytes]: ...

    def start(
        self, *, timeout: float | None = None, detach: bool = False
    ) -> Stream | Coroutine[Any, Any, bytes]:
        """Run the command: attached, a :class:`Stream` (use ``async with``); detached,
        a coroutine answering ``b""``."""
        if detach:
            return self._start_detached(timeout)

        async def setup() -> StreamSetup:
            tty = await self._learn_tty()
            return StreamSetup(
                f"exec/{self._id}/start",
                {},
                tty,
                body={"Detach": False, "Tty": tty},
                operation="start exec",
            )

        return Stream(self.docker, setup, timeout)

    async def _start_detached(self, timeout: float | None) -> bytes:
        tty = await self._learn_tty()
        response = await self.docker._query(
            f"exec/{self._id}/start",
            "POST",
            data={"Detach": True, "Tty": tty},
            timeout=timeout if timeout is not None else ...,
            operation="start exec",
        )
        return response.content


__all__ = ["Exec", "Message", "Stream"]
