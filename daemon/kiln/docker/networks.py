"""Networks: ``docker.networks`` and :class:`DockerNetwork`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from kiln.docker.params import filters_param

if TYPE_CHECKING:
    from kiln.docker.api import Docker


class DockerNetworks:
    def __init__(self, docker: Docker) -> None:
        self.docker = docker

    async def list(self, *, filters: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        data = await self.docker._query_json(
            "networks", params={"filters": filters_param(filters)}, operation="list networks"
        )
        return list(data)

    async def create(self, config: Mapping[str, Any]) -> DockerNetwork:
        data = await self.docker._query_json(
            "networks/create", "POST", data=dict(config), operation="create network"
        )
        return DockerNetwork(self.docker, data["Id"])

    async def get(self, net_specs: str) -> DockerNetwork:
        data = await self.docker._query_json(f"networks/{net_specs}", operation="inspect network")
        return DockerNetwork(self.docker, data["Id"])

    async def prune(self, *, filters: Mapping[str, Any] | None = None) -> dict[str, Any]:
        data = await self.docker._query_json(
            "networks/prune",
            "POST",
            params={"filters": filters_param(filters)},
            operation="prune networks",
        )
        return dict(data)


class DockerNetwork:
    def __init__(self, docker: Docker, id: str) -> None:
        self.docker = docker
        self.id = id

    def __repr__(self) -> str:
        return f"DockerNetwork(id={self.id!r})"

    async def show(self) -> dict[str, Any]:
        return dict(
            await self.docker._query_json(f"networks/{self.id}", operation="inspect network")
        )

    async def delete(self) -> bool:
        response = await self.docker._query(
            f"networks/{self.id}", "DELETE", operation="remove network"
        )
        return response.status_code == 204

    async def connect(self, config: Mapping[str, Any]) -> None:
        await self.docker._query(
            f"networks/{self.id}/connect", "POST", data=dict(config), operation="connect network"
        )

    async def disconnect(self, config: Mapping[str, Any]) -> None:
        await self.docker._query(
            f"networks/{self.id}/disconnect",
            "POST",
            data=dict(config),
            operation="disconnect network",
        )


__all__ = ["DockerNetwork", "DockerNetworks"]
