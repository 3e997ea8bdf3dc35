"""The orphan sweep removes this daemon's containers from other instances only."""

from __future__ import annotations

import trio
import trio.testing

from kiln.containers.spec import Identity
from kiln.containers.sweep import sweep_orphans
from kiln.docker import Docker
from tests.fakedocker import FakeDocker


def labels(daemon: str, instance: str) -> dict[str, object]:
    return {
        "Image": "busybox",
        "Cmd": ["sleep"],
        "Labels": {"kiln.daemon": daemon, "kiln.instance": instance, "kiln.function": "f"},
    }


async def test_sweep_removes_other_instances_of_this_daemon(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with FakeDocker() as fake, Docker(**fake.client_kwargs()) as docker:
        me = Identity("d1", instance="now")
        old = [(await docker.containers.create(labels("d1", "crashed"))).id for _ in range(3)]
        await docker.containers.container(old[0]).start()
        mine = (await docker.containers.create(labels("d1", "now"))).id
        other = (await docker.containers.create(labels("d2", "x"))).id
        result = await sweep_orphans(docker, me)
        assert (result.found, result.removed, result.failed) == (3, 3, 0)
        assert set(fake.containers) == {mine, other}


async def test_sweep_is_bounded_in_time(autojump_clock: trio.testing.MockClock) -> None:
    """No new removal starts after the sweep's deadline; removals already sent are
    shielded mutations and end within Docker's own timeout (30 s here)."""
    async with (
        FakeDocker() as fake,
        Docker(timeout=30, **fake.client_kwargs()) as docker,
    ):
        for _ in range(20):
            await docker.containers.create(labels("d1", "crashed"))
        fake.stall["remove"] = 300  # Docker hangs on every removal
        t0 = trio.current_time()
        result = await sweep_orphans(docker, Identity("d1"), timeout=45)
        assert result.timed_out
        assert result.found == 20
        assert result.removed == 0
        assert result.failed == 16  # two waves of 8 were sent; the last 4 never were
        assert trio.current_time() - t0 == 60


async def test_sweep_with_docker_down_does_not_raise(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with FakeDocker() as fake, Docker(**fake.client_kwargs()) as docker:
        fake.unreachable = True
        assert (await sweep_orphans(docker, Identity("d1"))).found == 0
