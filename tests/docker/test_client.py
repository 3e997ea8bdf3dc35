"""The client itself: host resolution honoured for real, version, info, errors, timeouts."""

from __future__ import annotations

import httpx
import pytest

from kiln.docker import Docker, DockerError
from kiln.docker.errors import DockerConflict, DockerNotFound, DockerUnreachable
from tests.docker.conftest import DOCKER_SOCK
from tests.docker.helpers import config, name

pytestmark = [pytest.mark.anyio, pytest.mark.docker]


async def test_version_info_ping_and_api_version() -> None:
    docker = Docker()
    assert docker.docker_host == "unix://localhost"
    version = await docker.version()
    assert "ApiVersion" in version
    assert docker.api_version == "v" + version["ApiVersion"]
    info = await docker.system.info()
    assert "ID" in info
    assert "ServerVersion" in info
    assert await docker._ping() == "OK"
    await docker.close()


async def test_close_without_any_request() -> None:
    docker = Docker()
    await docker.close()


async def test_docker_host_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{DOCKER_SOCK}")
    async with Docker() as docker:
        assert (await docker.version())["ApiVersion"]
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    async with Docker() as docker:
        with pytest.raises(DockerError) as e:
            await docker.version()
        assert isinstance(e.value, DockerUnreachable)
        assert e.value.status == 900


async def test_error_statuses_carry_dockers_message() -> None:
    async with Docker(api_version="v1.41") as docker:
        with pytest.raises(DockerError) as e:
            await docker.containers.get("kiln-no-such-container")
        assert e.value.status == 404
        assert isinstance(e.value, DockerNotFound)
        assert "kiln-no-such-container" in e.value.message
        assert "kiln-no-such-container" in str(e.value)

        taken = name("taken-")
        container = await docker.containers.create(config("true"), name=taken)
        with pytest.raises(DockerError) as e:
            await docker.containers.create(config("true"), name=taken)
        assert e.value.status == 409
        assert isinstance(e.value, DockerConflict)

        with pytest.raises(DockerError) as e:
            await docker.containers.create({"Image": "kiln-test/busybox:latest", "Cmd": 5})
        assert e.value.status in (400, 500)
        await container.delete()


def test_reexports_match_aiodocker_modules() -> None:
    from kiln.docker.containers import DockerContainer
    from kiln.docker.docker import Docker as D2
    from kiln.docker.docker import DockerContextEndpoint
    from kiln.docker.exceptions import (
        DockerContainerError,
        DockerContextInvalidError,
        DockerContextTLSError,
    )
    from kiln.docker.execs import Exec, Stream
    from kiln.docker.networks import DockerNetwork
    from kiln.docker.volumes import DockerVolume

    assert D2 is Docker
    assert issubclass(DockerContainerError, DockerError)
    assert issubclass(DockerContextInvalidError, DockerError)
    assert issubclass(DockerContextTLSError, DockerError)
    for cls in (DockerContainer, DockerContextEndpoint, Exec, Stream, DockerNetwork, DockerVolume):
        assert isinstance(cls, type)
    assert httpx  # the transport seam
