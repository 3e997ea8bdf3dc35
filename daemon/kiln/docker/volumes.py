"""Volumes: ``docker.volumes`` and :class:`DockerVolume`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from kiln.docker.params import filters_param

if TYPE_CHECKING:
    from kiln.docker.api import Docker


class DockerVolumes:
    def __init__(self, docker: Docker) -> None:
        self.docker = docker

    async def list(self, *, filters: Mapping[str, Any] | None = None) -> dict[str, Any]:
        data = await self.docker._query_json(
            "volumes", params={"filters": filters_param(filters)}, operation="list volumes"
        )
        return dict(data)

    async def get(self, id: str) -> DockerVolume:
        data = await self.docker._query_json(f"volumes/{id}", operation="inspect volume")
        return DockerVolume(self.docker, data["Name"])

    async def create(self, config: Mapping[str, Any]) -> DockerVolume:
        data = await self.docker._query_json(
            "volumes/create", "POST", data=dict(config), operation="create volume"
        )
        return DockerVolume(self.docker, data["Name"])

    async def prune(self, *, filters: Mapping[str, Any] | None = None) -> dict[str, Any]:
        data = await self.docker._query_json(
            "volumes/prune",
            "POST",
            params={"filters": filters_param(filters)},
            operation="prune volumes",
        )
        return dict(data)


class DockerVolume:
    def __init__(self, docker: Docker, name: str) -> None:
        self.docker = docker
        self.name = name

    def __repr__(self) -> str:
        return f"DockerVolume(name={self.name!r})"

    async def show(self) -> dict[str, Any]:
        return dict(
            await self.docker._query_json(f"volumes/{self.name}", operation="inspect volume")
        )

    async def delete(self, force: bool = False) -> None:
        await self.docker._query(
            f"volumes/{self.name}", "DELETE", params={"force": force}, operation="remove volume"
        )


__all__ = ["DockerVolume", "DockerVolumes"]
