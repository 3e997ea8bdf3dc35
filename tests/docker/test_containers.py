"""Containers against the real engine: lifecycle, wait, logs, stats, attach, archives,
commit, ports — under asyncio and Trio."""

from __future__ import annotations

import anyio
import pytest

from kiln.docker import Docker, DockerContainer, DockerContainerError, DockerError
from tests.docker.conftest import BUSYBOX, FILTERS, LABEL, RUN
from tests.docker.helpers import config, create, name, tar_of

pytestmark = [pytest.mark.anyio, pytest.mark.docker]


async def test_lifecycle_create_start_show_stop_delete() -> None:
    async with Docker() as docker:
        container = await create(docker, "sleep", "30")
        assert isinstance(container, DockerContainer)
        assert container.id == container._id
        await container.start()
        info = await container.show()
        assert info["State"]["Running"] is True
        assert info["Config"]["Labels"][LABEL] == RUN
        await container.pause()
        assert (await container.show())["State"]["Paused"] is True
        await container.unpause()
        await container.stop(t=1, timeout=10.0)
        info = await container.show()
        assert info["State"]["Running"] is False
        await container.delete()
        with pytest.raises(DockerError) as e:
            await docker.containers.get(container.id)
        assert e.value.status == 404


async def test_run_get_list_kill_rename_restart() -> None:
    async with Docker() as docker:
        container = await docker.containers.run(config=config("sleep", "30"), name=name())
        got = await docker.containers.get(container.id)
        assert got.id == container.id
        listed = await docker.containers.list(filters={"label": f"{LABEL}={RUN}"})
        assert container.id in {c.id for c in listed}
        await container.rename(name("renamed-"))
        await container.restart(timeout=20)
        await container.kill(signal="KILL")
        result = await container.wait()
        assert result["StatusCode"] == 137
        await container.delete(force=True, timeout=5.0)


async def test_run_start_failure_is_a_container_error_left_in_place() -> None:
    async with Docker() as docker:
        with pytest.raises(DockerContainerError) as e:
            await docker.containers.run(config=config("/no/such/program"), name=name())
        assert e.value.status in (400, 500)
        kept = await docker.containers.get(e.value.container_id)
        await kept.delete(force=True)


async def test_wait_returns_exit_code_and_times_out() -> None:
    async with Docker() as docker:
        container = await create(docker, "sleep", "30")
        await container.start()
        t0 = anyio.current_time()
        with pytest.raises(TimeoutError):
            await container.wait(timeout=0.5)
        assert anyio.current_time() - t0 < 5
        await container.kill()
        assert (await container.wait(timeout=5))["StatusCode"] == 137
        await container.delete(force=True)


async def test_stop_with_short_http_timeout_raises_timeout_error() -> None:
    async with Docker() as docker:
        container = await create(docker, "sleep", "30")
        await container.start()
        with pytest.raises(TimeoutError):
            await container.stop(t=3, timeout=0.5)
        await container.delete(force=True)


async def test_log_lists_frames_and_follows() -> None:
    async with Docker() as docker:
        container = await create(docker, "sh", "-c", "echo 1; sleep 0.2; echo 2")
        await container.start()
        followed = [line async for line in container.log(stdout=True, stderr=True, follow=True)]
        assert followed == ["1\n", "2\n"]
        await container.wait()
        assert await container.log(stdout=True) == ["1\n", "2\n"]
        assert await container.log(stdout=True, stderr=True, follow=False) == ["1\n", "2\n"]
        with pytest.raises(TypeError):
            await container.log()
        await container.delete(force=True)
        with pytest.raises(DockerError):
            await container.log(stdout=True)


async def test_log_follow_of_a_tty_container_is_raw_text() -> None:
    async with Docker() as docker:
        container = await create(docker, "sh", "-c", "echo hello; echo world", Tty=True)
        await container.start()
        text = "".join([piece async for piece in container.log(stdout=True, follow=True)])
        assert text == "hello\r\nworld\r\n"
        await container.delete(force=True)


async def test_stats_once_and_streamed_also_for_an_exited_container() -> None:
    async with Docker() as docker:
        container = await create(docker, "sleep", "30")
        await container.start()
        stats = await container.stats(stream=False)
        assert "cpu_stats" in stats[0]
        count = 0
        async for sample in container.stats():
            assert "cpu_stats" in sample
            count += 1
            if count == 2:
                break
        await container.kill()
        await container.wait()
        async for sample in container.stats():
            assert "cpu_stats" in sample
            break
        await container.delete(force=True)


async def test_attach_reads_demultiplexed_output() -> None:
    async with Docker() as docker:
        container = await create(docker, "sh", "-c", "echo out; echo err >&2")
        async with container.attach(stdout=True, stderr=True) as stream:
            await container.start()
            got: dict[int, bytes] = {1: b"", 2: b""}
            while (msg := await stream.read_out()) is not None:
                fileno, data = msg
                got[fileno] += data
        assert got == {1: b"out\n", 2: b"err\n"}
        await container.delete(force=True)


async def test_attach_stdin_write_in_and_eof() -> None:
    async with Docker() as docker:
        container = await create(docker, "cat", OpenStdin=True, StdinOnce=True)
        async with container.attach(stdin=True, stdout=True, stderr=True) as stream:
            await container.start()
            await stream.write_in(b"ping\n")
            await stream.write_eof()
            out = b""
            while (msg := await stream.read_out()) is not None:
                out += msg.data
        assert out == b"ping\n"
        assert (await container.wait())["StatusCode"] == 0
        await container.delete(force=True)


async def test_attach_tty_write_in_gives_raw_output() -> None:
    async with Docker() as docker:
        container = await create(
            docker, "sh", Tty=True, OpenStdin=True, AttachStdin=True, AttachStdout=True
        )
        await container.start()
        async with container.attach(stdin=True, stdout=True, stderr=True) as stream:
            await stream.write_in(b"echo hi-$((40+2))\n")
            seen = b""
            with anyio.fail_after(10):
                while b"hi-42" not in seen:
                    msg = await stream.read_out()
                    assert msg is not None
                    assert msg.stream == 1
                    seen += msg.data
        await container.delete(force=True)


async def test_leaving_attach_after_exit_neither_raises_nor_hangs() -> None:
    async with Docker() as docker:
        container = await create(docker, "true")
        with anyio.fail_after(10):
            async with container.attach(stdout=True, stderr=True) as stream:
                await container.start()
                await container.wait()
            assert await stream.read_out() is None  # closed: the end
        await container.delete(force=True)


async def test_put_and_get_archive() -> None:
    async with Docker() as docker:
        container = await create(docker, "true")
        assert await container.put_archive("tmp", tar_of({"foo.txt": b"hello kiln\n"}))
        tar = await container.get_archive("tmp/foo.txt")
        assert [m.name for m in tar.getmembers()] == ["foo.txt"]
        member = tar.extractfile("foo.txt")
        assert member is not None
        assert member.read() == b"hello kiln\n"
        await container.delete(force=True)


async def test_commit_makes_an_image_with_changes() -> None:
    async with Docker() as docker:
        container = await create(docker, "true")
        repo = name("commit-")
        result = await container.commit(
            repository=repo, tag="t1", changes=["EXPOSE 8000", 'CMD ["py"]']
        )
        image = await docker.images.inspect(result["Id"])
        assert "8000/tcp" in image["Config"]["ExposedPorts"]
        assert image["Config"]["Cmd"] == ["py"]
        assert image["Parent"] == (await container.show())["Image"]
        await container.delete(force=True)
        await docker.images.delete(f"{repo}:t1")


async def test_port_reports_published_ports() -> None:
    async with Docker() as docker:
        container = await create(
            docker,
            "sleep",
            "30",
            ExposedPorts={"5678/tcp": {}},
            HostConfig={"PublishAllPorts": True},
        )
        await container.start()
        ports = await container.port(5678)
        assert ports
        assert ports[0]["HostPort"]
        assert await container.port(9999) is None
        await container.delete(force=True)


async def test_exec_attached_detached_tty_and_by_id() -> None:
    async with Docker() as docker:
        container = await create(docker, "sleep", "30")
        await container.start()
        execution = await container.exec(["echo", "Hello"], stdout=True, stderr=True)
        async with execution.start(detach=False) as stream:
            msg = await stream.read_out()
            assert await stream.read_out() is None  # the end: the command has exited
        assert msg is not None
        assert msg.stream == 1
        assert msg.data == b"Hello\n"
        assert (await execution.inspect())["ExitCode"] == 0

        sleeper = await container.exec(["sleep", "5"], tty=True, stdout=True)
        assert await sleeper.start(detach=True) == b""
        info = await sleeper.inspect()
        assert info["ExitCode"] is None
        assert info["ProcessConfig"]["tty"] is True
        await sleeper.resize(w=120, h=10)

        restored = docker.containers.exec(sleeper.id)
        assert restored._tty is None
        tty_exec = await container.exec(["echo", "x"], tty=True)
        restored = docker.containers.exec(tty_exec.id)
        async with restored.start() as stream:
            while await stream.read_out() is not None:
                pass
        assert restored._tty is True
        await container.delete(force=True)


async def test_prune_with_a_label_filter_and_create_or_replace() -> None:
    async with Docker() as docker:
        cname = name("replace-")
        first = await docker.containers.create_or_replace(cname, config("true"))
        same = await docker.containers.create_or_replace(cname, config("true"))
        assert same.id == first.id
        other = await docker.containers.create_or_replace(cname, config("echo", "x"))
        assert other.id != first.id
        result = await docker.containers.prune(filters={"label": f"{LABEL}={RUN}"})
        assert other.id in (result["ContainersDeleted"] or [])
        assert isinstance(result["SpaceReclaimed"], int)


async def test_container_is_a_mapping_of_its_data() -> None:
    async with Docker() as docker:
        container = await create(docker, "true")
        info = await container.show()
        assert container["Config"]["Image"] == BUSYBOX
        assert info["Id"] == container.id
        assert FILTERS  # the session removes what this run made
        await container.delete()


async def test_websocket_attach_echoes_stdin() -> None:
    async with Docker() as docker:
        container = await create(docker, "cat", OpenStdin=True, AttachStdin=True, AttachStdout=True)
        await container.start()
        ws = await container.websocket(stdin=True, stdout=True, stream=True)
        await ws.send_str("hello websocket\n")
        got = b""
        with anyio.fail_after(10):
            while b"hello websocket\n" not in got:
                got += await ws.receive_bytes()
        await ws.close()
        await container.delete(force=True)


async def test_log_messages_and_read_batch_keep_streams_apart() -> None:
    async with Docker() as docker:
        container = await create(docker, "sh", "-c", "echo out; echo err >&2")
        async with container.attach(stdout=True, stderr=True, tty=False) as stream:
            await container.start()
            seen: list[tuple[int, bytes]] = []
            while (batch := await stream.read_batch()) is not None:
                seen += [(m.stream, m.data) for m in batch]
        assert sorted(seen) == [(1, b"out\n"), (2, b"err\n")]
        await container.wait()
        logged = sorted([(m.stream, m.data) async for m in container.log_messages()])
        assert logged == [(1, b"out\n"), (2, b"err\n")]
        await container.delete(force=True)
