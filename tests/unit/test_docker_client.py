"""kiln.docker on the fake engine (Trio, MockClock): typed errors carrying Docker's
messages, unreachable sockets, Kiln's removal semantics, the client's own timeouts,
a hijacked attach round trip."""

from __future__ import annotations

from pathlib import Path

import httpcore
import pytest
import trio
import trio.testing

from kiln.containers.removal import remove_container
from kiln.docker import (
    Docker,
    DockerAPIError,
    DockerConflict,
    DockerError,
    DockerNotFound,
    DockerTimeout,
    DockerUnreachable,
)
from kiln.main import check_docker
from tests.fakedocker import FakeDocker

BUSYBOX = {"Image": "busybox", "Cmd": ["cat"]}


async def test_error_body_message_is_carried() -> None:
    async with FakeDocker() as fake, Docker(**fake.client_kwargs()) as docker:
        fake.fail["start"] = (500, "driver failed programming external connectivity")
        container = await docker.containers.create(BUSYBOX)
        with pytest.raises(DockerAPIError) as info:
            await container.start()
    assert info.value.status == 500
    assert info.value.message == "driver failed programming external connectivity"
    assert "start container" in str(info.value)


@pytest.mark.parametrize(("status", "cls"), [(404, DockerNotFound), (409, DockerConflict)])
async def test_status_maps_to_type(status: int, cls: type[DockerAPIError]) -> None:
    async with FakeDocker() as fake, Docker(**fake.client_kwargs()) as docker:
        fake.fail["inspect"] = (status, "nope")
        with pytest.raises(cls) as info:
            await docker.containers.container("abc").show()
    assert isinstance(info.value, DockerError)
    assert info.value.status == status


async def test_removal_of_a_gone_container_is_quiet() -> None:
    async with FakeDocker() as fake, Docker(**fake.client_kwargs()) as docker:
        assert await remove_container(docker, "abc") is False
        container = await docker.containers.create(BUSYBOX)
        assert await remove_container(docker, container.id) is True
        assert fake.containers == {}


async def test_old_engine_is_refused_with_a_clear_message() -> None:
    async with FakeDocker() as fake, Docker(**fake.client_kwargs()) as docker:
        fake.api_version = "1.40"
        with pytest.raises(Exception, match=r"API 1\.40.*needs API 1\.41"):
            await check_docker(docker)


async def test_missing_socket_is_unreachable(tmp_path: Path) -> None:
    async with Docker(f"unix://{tmp_path}/no-docker.sock", api_version="v1.41") as docker:
        with pytest.raises(DockerUnreachable, match="cannot reach Docker"):
            await docker.ping()
        with pytest.raises(DockerUnreachable, match="cannot reach Docker"):
            await docker.containers.container("abc").wait()


async def test_socket_that_refuses_is_unreachable(tmp_path: Path) -> None:
    path = tmp_path / "dead.sock"
    sock = trio.socket.socket(trio.socket.AF_UNIX)
    await sock.bind(str(path))
    sock.close()  # the file stays, nobody listens: ECONNREFUSED
    async with Docker(f"unix://{path}", api_version="v1.41") as docker:
        with pytest.raises(DockerUnreachable):
            await docker.version()


async def test_docker_gone_mid_session_is_unreachable() -> None:
    async with FakeDocker() as fake, Docker(**fake.client_kwargs()) as docker:
        await docker.ping()
        fake.crash()
        with pytest.raises(DockerUnreachable):
            await docker.ping()


async def test_an_idle_connection_the_engine_dropped_is_not_reused() -> None:
    """dockerd restarted between two calls: the pooled connection it closed is seen
    closed before use, and the next call makes a new one instead of failing."""
    async with FakeDocker() as fake, Docker(**fake.client_kwargs()) as docker:
        await docker.ping()
        fake.down()
        await trio.testing.wait_all_tasks_blocked()
        fake.up()
        assert await docker.ping() == "OK"


async def test_a_connector_given_carries_short_and_long_calls() -> None:
    async with FakeDocker() as fake:
        pool = httpcore.AsyncConnectionPool(network_backend=fake.backend)
        async with Docker("unix:///fake/docker.sock", api_version="v1.41", connector=pool) as d:
            assert await d.ping() == "OK"
            container = await d.containers.create(BUSYBOX)
            await container.start()
            await container.kill()
            assert (await container.wait())["StatusCode"] == 137  # a long call
            with pytest.raises(DockerNotFound):
                await d.containers.container("nope").show()
        assert len(fake.containers) == 1


async def test_list_filters_by_label() -> None:
    async with FakeDocker() as fake, Docker(**fake.client_kwargs()) as docker:
        a = await docker.containers.create({**BUSYBOX, "Labels": {"kiln.daemon": "d1"}})
        await docker.containers.create({**BUSYBOX, "Labels": {"kiln.daemon": "d2"}})
        listed = await docker.containers.list(all=True, filters={"label": "kiln.daemon=d1"})
    assert [c.id for c in listed] == [a.id]


async def test_stalled_docker_times_out_at_the_clients_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with FakeDocker() as fake, Docker(timeout=10, **fake.client_kwargs()) as docker:
        fake.stall["create"] = 60
        t0 = trio.current_time()
        with pytest.raises(DockerTimeout) as info:
            await docker.containers.create(BUSYBOX)
        assert isinstance(info.value, TimeoutError)
        assert trio.current_time() - t0 == pytest.approx(10)


async def test_a_cancelled_create_still_finishes(autojump_clock: trio.testing.MockClock) -> None:
    """Mutations run shielded once sent: the caller leaves, the container is made."""
    async with FakeDocker() as fake, Docker(timeout=10, **fake.client_kwargs()) as docker:
        fake.stall["create"] = 5
        with trio.move_on_after(1):
            await docker.containers.create(BUSYBOX)
        assert len(fake.containers) == 1


async def test_a_call_cancelled_before_it_is_sent_sends_nothing() -> None:
    async with FakeDocker() as fake, Docker(**fake.client_kwargs()) as docker:
        with trio.CancelScope() as scope:
            scope.cancel()
            await docker.containers.create(BUSYBOX)
        assert fake.containers == {}
        await docker.containers.create(BUSYBOX)  # the slot it did not use is free
        assert len(fake.containers) == 1


async def test_attach_round_trip_through_fake() -> None:
    async with FakeDocker() as fake, Docker(**fake.client_kwargs()) as docker:
        container = await docker.containers.create(BUSYBOX)
        async with container.attach(stdin=True, stdout=True, stderr=True, tty=False) as stream:
            await container.start()
            await stream.write_in(b"hello")
            await stream.write_eof()
            out = b""
            while (batch := await stream.read_batch()) is not None:
                out += b"".join(m.data for m in batch)
        assert out == b"hello"
        assert (await container.wait())["StatusCode"] == 0
        assert await remove_container(docker, container.id) is True
