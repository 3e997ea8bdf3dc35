"""Containers: ``docker.containers``, the collection (list, create, run, get, prune)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from kiln.docker.container import DockerContainer
from kiln.docker.errors import DockerProtocolError
from kiln.docker.exceptions import DockerContainerError, DockerError
from kiln.docker.execs import Exec
from kiln.docker.params import filters_param

if TYPE_CHECKING:
    from kiln.docker.api import Docker


class DockerContainers:
    def __init__(self, docker: Docker) -> None:
        self.docker = docker

    async def list(self, **kwargs: Any) -> list[DockerContainer]:
        if isinstance(kwargs.get("filters"), Mapping):
            kwargs["filters"] = filters_param(kwargs["filters"])
        data = await self.docker._query_json(
            "containers/json", params=kwargs, operation="list containers"
        )
        return [DockerContainer(self.docker, **c) for c in data or []]

    async def create_or_replace(self, name: str, config: Mapping[str, Any]) -> DockerContainer:
        container: DockerContainer | None = None
        try:
            container = await self.get(name)
        except DockerError as e:
            if e.status != 404:
                raise
        if container is not None:
            if _same_config(container._container.get("Config", {}), config):
                return container
            await container.delete(force=True)
        return await self.create(config, name=name)

    async def create(
        self, config: Mapping[str, Any] | None = None, *, name: str | None = None
    ) -> DockerContainer:
        async with self.docker.limiter.create():
            data = await self.docker._query_json(
                "containers/create",
                "POST",
                params={"name": name},
                data=dict(config or {}),
                operation="create container",
            )
        cid = data.get("Id") if isinstance(data, dict) else None
        if not isinstance(cid, str):
            raise DockerProtocolError("create container: Docker's answer has no Id")
        return DockerContainer(self.docker, id=cid)

    async def run(
        self,
        config: Mapping[str, Any],
        *,
        auth: Mapping[str, Any] | str | None = None,
        name: str | None = None,
    ) -> DockerContainer:
        """Create and start; pull the image first if Docker does not have it."""
        try:
            container = await self.create(config, name=name)
        except DockerError as e:
            if e.status != 404 or "Image" not in config:
                raise
            await self.docker.images.pull(str(config["Image"]), auth=auth)
            container = await self.create(config, name=name)
        try:
            await container.start()
        except DockerError as e:
            raise DockerContainerError(e.status, e.message, container._id) from e
        return container

    async def get(self, container: str, **kwargs: Any) -> DockerContainer:
        data = await self.docker._query_json(
            f"containers/{container}/json", params=kwargs, operation="inspect container"
        )
        return DockerContainer(self.docker, **data)

    def container(self, container_id: str, **kwargs: Any) -> DockerContainer:
        return DockerContainer(self.docker, id=container_id, **kwargs)

    def exec(self, exec_id: str) -> Exec:
        return Exec(self.docker, exec_id, None)

    async def prune(self, *, filters: Mapping[str, Any] | None = None) -> dict[str, Any]:
        data = await self.docker._query_json(
            "containers/prune",
            "POST",
            params={"filters": filters_param(filters)},
            operation="prune containers",
        )
        return dict(data)


def _same_config(current: Any, wanted: Any) -> bool:
    """Whether the running config has everything asked for (Docker adds defaults, and the
    image's labels and environment, to what was asked)."""
    if isinstance(wanted, Mapping):
        return isinstance(current, Mapping) and all(
            _same_config(current.get(k), v) for k, v in wanted.items() if k != "HostConfig"
        )
    return bool(current == wanted)


__all__ = ["DockerContainer", "DockerContainers"]
