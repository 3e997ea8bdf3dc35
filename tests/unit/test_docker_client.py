"""The Docker client: typed errors, Docker's messages, unreachable sockets, and a
pool that survives calls cancelled at random under contention (httpcore #1093)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import h11
import httpx
import pytest
import trio
import trio.testing

from kiln.docker import (
    DockerAPIError,
    DockerClient,
    DockerConflict,
    DockerError,
    DockerNotFound,
    DockerTimeout,
    DockerUnreachable,
)
from tests.fakedocker import FakeDocker


def mock_client(handler: httpx.MockTransport) -> DockerClient:
    return DockerClient("/fake.sock", transport=handler)


async def test_error_body_message_is_carried() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            500, json={"message": "driver failed programming external connectivity"}
        )

    async with mock_client(httpx.MockTransport(handler)) as docker:
        with pytest.raises(DockerAPIError) as info:
            await docker.start("abc")
    assert info.value.status == 500
    assert info.value.message == "driver failed programming external connectivity"
    assert "start container" in str(info.value)


@pytest.mark.parametrize(("status", "cls"), [(404, DockerNotFound), (409, DockerConflict)])
async def test_status_maps_to_type(status: int, cls: type[DockerAPIError]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json={"message": "nope"})

    async with mock_client(httpx.MockTransport(handler)) as docker:
        with pytest.raises(cls):
            await docker.inspect("abc")


async def test_non_json_error_body() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502, text="Bad Gateway\n")

    async with mock_client(httpx.MockTransport(handler)) as docker:
        with pytest.raises(DockerAPIError, match="Bad Gateway"):
            await docker.ping()


async def test_kill_and_remove_of_gone_container_are_quiet() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"message": "No such container: abc"})

    async with mock_client(httpx.MockTransport(handler)) as docker:
        await docker.kill("abc")
        assert await docker.remove("abc") is False


async def test_old_engine_refused_with_clear_message() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"Version": "19.03.1", "ApiVersion": "1.40"})

    async with mock_client(httpx.MockTransport(handler)) as docker:
        with pytest.raises(DockerError, match=r"API 1\.40.*needs API 1\.41"):
            await docker.check_version()


async def test_missing_socket_is_unreachable(tmp_path: Path) -> None:
    async with DockerClient(str(tmp_path / "no-docker.sock")) as docker:
        with pytest.raises(DockerUnreachable, match="cannot reach Docker"):
            await docker.ping()
        with pytest.raises(DockerUnreachable, match="cannot reach Docker"):
            await docker.wait("abc")


async def test_socket_that_refuses_is_unreachable(tmp_path: Path) -> None:
    path = tmp_path / "dead.sock"
    sock = trio.socket.socket(trio.socket.AF_UNIX)
    await sock.bind(str(path))
    sock.close()  # the file stays, nobody listens: ECONNREFUSED
    async with DockerClient(str(path)) as docker:
        with pytest.raises(DockerUnreachable):
            await docker.version()


async def test_request_paths_are_versioned_and_labels_filtered() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=[])

    async with mock_client(httpx.MockTransport(handler)) as docker:
        await docker.list_containers({"kiln.daemon": "d1", "kiln.function": None})
    assert seen[0].url.path == "/v1.41/containers/json"
    assert json.loads(seen[0].url.params["filters"]) == {
        "label": ["kiln.daemon=d1", "kiln.function"]
    }


async def test_stalled_docker_times_out_via_httpx_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with FakeDocker() as fake:
        fake.stall["create"] = 60
        async with DockerClient("/fake", timeout=10, **fake.client_kwargs()) as docker:
            t0 = trio.current_time()
            with pytest.raises(DockerTimeout, match="did not answer within 10 s"):
                await docker.create_container({"Image": "busybox", "Cmd": ["cat"]})
            assert trio.current_time() - t0 == pytest.approx(10)


async def test_attach_round_trip_through_fake() -> None:
    async with FakeDocker() as fake, DockerClient("/fake", **fake.client_kwargs()) as docker:
        cid = await docker.create_container({"Image": "busybox", "Cmd": ["cat"]})
        async with docker.attach(cid) as stream:
            await docker.start(cid)
            await stream.send_all(b"hello")
            await stream.send_eof()
            out = b""
            while (frames := await stream.receive()) is not None:
                out += b"".join(f.data for f in frames)
        assert out == b"hello"
        assert (await docker.wait(cid)).status_code == 0
        assert await docker.remove(cid) is True


# ---- cancellation under pool contention ------------------------------------


async def _serve_slow_docker(listener: trio.SocketListener) -> None:
    async def handle(stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    conn.receive_data(data)
                    continue
                if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                    return
                if isinstance(event, h11.EndOfMessage):
                    await trio.sleep(random.uniform(0, 0.01))
                    body = b"OK"
                    await stream.send_all(
                        conn.send(h11.Response(status_code=200, headers=[("Content-Length", "2")]))
                        + conn.send(h11.Data(data=body))
                        + conn.send(h11.EndOfMessage())
                    )
                    conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            pass

    await trio.serve_listeners(handle, [listener])


async def test_pool_survives_random_outer_cancellation_under_contention(tmp_path: Path) -> None:
    path = str(tmp_path / "docker.sock")
    sock = trio.socket.socket(trio.socket.AF_UNIX)
    await sock.bind(path)
    sock.listen(128)
    rng = random.Random(1093)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_serve_slow_docker, trio.SocketListener(sock))
        # A small pool, many more callers than connections: contention.
        async with DockerClient(path, timeout=5, pool_size=4) as docker:

            async def caller(delay: float) -> None:
                with trio.move_on_after(delay):  # an *outer* scope cancels mid-request
                    await docker.ping()

            for _round in range(5):
                async with trio.open_nursery() as callers:
                    for _ in range(200):
                        callers.start_soon(caller, rng.uniform(0, 0.02))
            # The client still works: every one of these must succeed, none PoolTimeout.
            with trio.fail_after(10):
                async with trio.open_nursery() as checks:
                    for _ in range(50):
                        checks.start_soon(docker.ping)
        nursery.cancel_scope.cancel()
