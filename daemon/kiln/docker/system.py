"""``docker.system``: the engine's own facts."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kiln.docker.api import Docker


class DockerSystem:
    def __init__(self, docker: Docker) -> None:
        self.docker = docker

    async def info(self) -> dict[str, Any]:
        return dict(await self.docker._query_json("info", operation="system info"))

    async def df(self) -> dict[str, Any]:
        return dict(await self.docker._query_json("system/df", operation="system df"))


__all__ = ["DockerSystem"]
