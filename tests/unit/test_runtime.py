"""The container runtime on the fake engine and the mock clock: removal by name,
shielded and bounded cleanup with the janitor as fallback, and the one mapping
from Docker's failures to what a caller is told."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from kiln.calls.errors import CallError, FunctionFailed, Unavailable
from kiln.config import parse
from kiln.containers.janitor import Janitor
from kiln.containers.runtime import (
    CLEANUP_TIMEOUT,
    Box,
    ContainerRuntime,
    call_error,
    docker_failures,
)
from kiln.containers.spec import Identity, container_config
from kiln.docker import (
    Docker,
    DockerAPIError,
    DockerNotFound,
    DockerProtocolError,
    DockerTimeout,
    DockerUnreachable,
)
from kiln.functions.spec import FunctionSpec
from tests.fakedocker import FakeDocker

SPEC: FunctionSpec = parse(
    {"functions": {"echo": {"image": "busybox", "cmd": ["cat"], "memory": "64MiB"}}}
).functions["echo"]
IDENTITY = Identity("test")
CONFIG = container_config(SPEC, IDENTITY, stdio=True)


@asynccontextmanager
async def engine() -> AsyncIterator[tuple[FakeDocker, ContainerRuntime, Janitor]]:
    async with (
        FakeDocker() as fake,
        Docker(timeout=30, **fake.client_kwargs()) as docker,
    ):
        janitor = Janitor(docker)
        async with trio.open_nursery() as nursery:
            await nursery.start(janitor.run)
            yield fake, ContainerRuntime(docker, janitor=janitor), janitor
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (DockerUnreachable("connection refused"), 503, "docker_unavailable"),
        (DockerTimeout("read timed out"), 503, "docker_unavailable"),
        (DockerNotFound(404, "No such image: busybox"), 502, "image_not_found"),
        (DockerNotFound(404, "No such container: x"), 502, "docker_error"),
        (DockerAPIError(500, "Thin Pool has 0 free data blocks"), 502, "docker_error"),
        (DockerProtocolError("no Id"), 502, "docker_error"),
    ],
)
def test_call_error_maps_each_docker_failure(error: Exception, status: int, code: str) -> None:
    assert isinstance(
        error, (DockerUnreachable, DockerTimeout, DockerAPIError, DockerProtocolError)
    )
    mapped = call_error(error, SPEC)
    assert (mapped.status, mapped.code) == (status, code)
    if status == 503:
        assert isinstance(mapped, Unavailable)
        assert mapped.retry_after == 5
    else:
        assert isinstance(mapped, FunctionFailed)


def test_docker_failures_maps_and_chains() -> None:
    with pytest.raises(CallError) as caught, docker_failures(SPEC):
        raise DockerUnreachable("gone")
    assert caught.value.status == 503
    assert isinstance(caught.value.__cause__, DockerUnreachable)


async def test_claim_without_create_asks_docker_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with engine() as (fake, runtime, _):
        async with runtime.claim(SPEC, "kiln-test-unused"):
            pass
        assert fake.calls == []


async def test_claim_removes_what_it_created_on_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def failing_call(runtime: ContainerRuntime, fake: FakeDocker) -> None:
        async with runtime.claim(SPEC, "kiln-test-a") as box:
            await runtime.create(box, CONFIG)
            await runtime.start(box)
            assert len(fake.containers) == 1
            raise RuntimeError("the call failed")

    async with engine() as (fake, runtime, _):
        with pytest.raises(RuntimeError):
            await failing_call(runtime, fake)
        assert fake.containers == {}


async def test_create_cancelled_in_flight_is_removed_by_name(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The caller leaves while Docker is still creating: Docker makes the container
    anyway (the create was sent), and leaving the claim removes it by its name."""
    async with engine() as (fake, runtime, _):
        fake.stall["create"] = 5
        with trio.move_on_after(2):
            async with runtime.claim(SPEC, "kiln-test-b") as box:
                await runtime.create(box, CONFIG)
        assert box.id is not None  # the shielded create finished
        assert fake.containers == {}
        assert ("remove", box.id) in fake.calls


async def test_removal_docker_refuses_goes_to_the_janitor(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with engine() as (fake, runtime, janitor):
        fake.fail["remove"] = (500, "driver failed")
        async with runtime.claim(SPEC, "kiln-test-c") as box:
            await runtime.create(box, CONFIG)
        assert janitor.pending == 1
        del fake.fail["remove"]
        await janitor.wait_empty()
        assert fake.containers == {}


async def test_removal_is_bounded_when_docker_stalls(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with engine() as (fake, runtime, janitor):
        async with runtime.claim(SPEC, "kiln-test-d") as box:
            await runtime.create(box, CONFIG)
            fake.stall["remove"] = 3600
            t0 = trio.current_time()
        assert trio.current_time() - t0 <= CLEANUP_TIMEOUT
        assert janitor.pending == 1


async def test_kill_never_raises(autojump_clock: trio.testing.MockClock) -> None:
    async with engine() as (fake, runtime, _):
        async with runtime.claim(SPEC, "kiln-test-e") as box:
            await runtime.create(box, CONFIG)
            await runtime.start(box)
            fake.fail["kill"] = (500, "cannot kill")
            await runtime.kill(box)  # logged, not raised
            del fake.fail["kill"]
            await runtime.kill(box)
            assert await runtime.wait(box) == 137
        assert fake.containers == {}


async def test_a_stream_error_inside_attach_reaches_the_caller_mapped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def read(runtime: ContainerRuntime, box: Box) -> None:
        async with runtime.attach(box):
            raise DockerUnreachable("the attach stream broke")

    async with engine() as (fake, runtime, _):
        async with runtime.claim(SPEC, "kiln-test-f") as box:
            await runtime.create(box, CONFIG)
            with pytest.raises(Unavailable) as caught:
                await read(runtime, box)
            assert caught.value.code == "docker_unavailable"
        assert fake.containers == {}
