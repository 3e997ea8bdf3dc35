"""Operator actions (deploy, remove, scale, rollover, reload) on the fake engine:
the registry, the supervisors and the store stay in step."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from kiln.api.operations import BadRequest
from kiln.calls.errors import NotFound
from kiln.functions.spec import FunctionSpec
from kiln.units import GiB, MiB
from tests.asgi import request
from tests.harness import Stack, functions, stack

STDIO = FunctionSpec(name="echo", image="busybox", cmd=("cat",), memory=64 * MiB)
HOT = FunctionSpec(
    name="hot", image="fnimage", cmd=("hot_echo",), format="http-stream", memory=64 * MiB
)


def pool_total(s: Stack, name: str) -> int:
    pool = s.registry.supervisor(name)
    return pool.statistics().total if pool is not None else 0


async def test_deploy_adds_persists_and_serves(autojump_clock: trio.testing.MockClock) -> None:
    async with stack({}) as s:
        await s.operations.deploy(STDIO)
        assert s.registry.spec("echo") == STDIO
        assert s.operations.store.names() == {"echo"}
        assert (await request(s.app, "POST", "/invoke/echo", b"hi")).body == b"hi"


async def test_deploy_refuses_what_can_never_fit(autojump_clock: trio.testing.MockClock) -> None:
    async with stack({}, capacity=1 * GiB) as s:
        too_big = FunctionSpec(name="big", image="busybox", memory=2 * GiB)
        with pytest.raises(BadRequest) as e:
            await s.operations.deploy(too_big)
        assert e.value.code == "bad_spec"
        assert "big" not in s.registry
        assert s.operations.store.names() == set()


async def test_deploy_hot_starts_a_supervisor_that_prewarms(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with stack({}) as s:
        await s.operations.deploy(FunctionSpec(**{**HOT.__dict__, "min_warm": 2}))
        assert pool_total(s, "hot") == 2
        assert (await request(s.app, "POST", "/invoke/hot", b"x")).status == 200


async def test_redeploying_the_same_spec_changes_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with stack({}) as s:
        await s.operations.deploy(HOT)
        pool = s.registry.supervisor("hot")
        await s.operations.deploy(HOT)
        assert s.registry.supervisor("hot") is pool


async def test_rollover_gives_new_calls_new_containers_and_retires_the_old(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with stack({}) as s:
        await s.operations.deploy(HOT)
        assert (await request(s.app, "POST", "/invoke/hot", b"x")).status == 200
        old = s.registry.supervisor("hot")
        assert old is not None
        (old_container,) = s.fake.containers
        new_spec = FunctionSpec(**{**HOT.__dict__, "timeout": 7.0})
        await s.operations.deploy(new_spec)
        assert s.registry.spec("hot") == new_spec
        new = s.registry.supervisor("hot")
        assert new is not None
        assert new is not old
        await old.wait_empty()  # the idle old container retires at once
        assert old_container not in s.fake.containers
        assert (await request(s.app, "POST", "/invoke/hot", b"y")).body == b"y"
        assert new.statistics().calls_total == 1


async def test_rollover_from_hot_to_stdio(autojump_clock: trio.testing.MockClock) -> None:
    async with stack({}) as s:
        await s.operations.deploy(FunctionSpec(**{**HOT.__dict__, "name": "echo"}))
        assert (await request(s.app, "POST", "/invoke/echo", b"x")).status == 200
        old = s.registry.supervisor("echo")
        assert old is not None
        await s.operations.deploy(STDIO)
        assert s.registry.supervisor("echo") is None
        await old.wait_empty()
        assert s.fake.containers == {}
        assert (await request(s.app, "POST", "/invoke/echo", b"z")).body == b"z"


async def test_remove_forgets_unpersists_and_retires(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with stack({}) as s:
        await s.operations.deploy(FunctionSpec(**{**HOT.__dict__, "min_warm": 1}))
        assert (await request(s.app, "POST", "/invoke/hot", b"x")).status == 200
        supervisor = s.registry.supervisor("hot")
        assert supervisor is not None
        await s.operations.remove("hot")
        assert "hot" not in s.registry
        assert s.operations.store.names() == set()
        await supervisor.wait_empty()
        assert s.fake.containers == {}
        assert (await request(s.app, "POST", "/invoke/hot", b"x")).status == 404
        with pytest.raises(NotFound):
            await s.operations.remove("hot")


async def test_scale_changes_the_running_supervisor(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with stack({}) as s:
        await s.operations.deploy(HOT)
        assert pool_total(s, "hot") == 0
        spec = await s.operations.scale("hot", min_warm=3, max_containers=None)
        assert (spec.min_warm, spec.max_containers) == (3, HOT.max_containers)
        assert s.registry.spec("hot") == spec
        assert pool_total(s, "hot") == 3
        # persisted, since the function was deployed (not from the config file)
        assert s.operations.store.load()["hot"].min_warm == 3


async def test_scale_refuses_impossible_values(autojump_clock: trio.testing.MockClock) -> None:
    async with stack({}) as s:
        await s.operations.deploy(HOT)
        for min_warm, max_containers in ((-1, None), (None, 0), (4, 3)):
            with pytest.raises(BadRequest) as e:
                await s.operations.scale("hot", min_warm=min_warm, max_containers=max_containers)
            assert e.value.code == "bad_spec"
        assert s.registry.spec("hot") == HOT
        with pytest.raises(NotFound):
            await s.operations.scale("nope", min_warm=1, max_containers=None)


def write_config(path: Path, body: str) -> None:
    path.write_text(body, encoding="utf-8")


async def test_reload_adds_changes_and_removes(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    config = tmp_path / "kiln.toml"
    fns = functions(
        keep={"image": "busybox", "cmd": ["cat"]},
        change={"image": "busybox", "cmd": ["cat"]},
        drop={"image": "busybox", "cmd": ["cat"]},
    )
    async with stack(fns, config_source=str(config)) as s:
        write_config(
            config,
            """
            [daemon]
            id = "changed-needs-a-restart"
            [functions.keep]
            image = "busybox"
            cmd = ["cat"]
            [functions.change]
            image = "busybox"
            cmd = ["cat"]
            timeout = 3
            [functions.add]
            image = "busybox"
            cmd = ["cat"]
            """,
        )
        result = await s.operations.reload()
        assert (result.added, result.changed, result.removed) == (["add"], ["change"], ["drop"])
        assert result.ignored_sections == ["daemon"]
        assert set(s.registry.specs()) == {"keep", "change", "add"}
        assert s.registry.spec("change").timeout == 3


async def test_reload_keeps_deployed_functions(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    config = tmp_path / "kiln.toml"
    write_config(config, "")
    async with stack({}, config_source=str(config)) as s:
        await s.operations.deploy(STDIO)
        result = await s.operations.reload()
        assert (result.added, result.changed, result.removed) == ([], [], [])
        assert "echo" in s.registry


async def test_a_bad_config_changes_nothing(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    config = tmp_path / "kiln.toml"
    fns = functions(keep={"image": "busybox", "cmd": ["cat"]})
    async with stack(fns, config_source=str(config), capacity=1 * GiB) as s:
        for text in (
            "[functions.keep]\nimage = 3\n",
            "not toml [",
            '[functions.huge]\nimage = "x"\nmemory = "2GiB"\n',
        ):
            write_config(config, text)
            with pytest.raises(BadRequest) as e:
                await s.operations.reload()
            assert e.value.code == "bad_config"
            assert set(s.registry.specs()) == {"keep"}
