"""kiln.hot.container: what a hot container is created with, on the fake stack."""

from __future__ import annotations

import trio
import trio.testing

from kiln.config import LogsConfig, parse
from tests.asgi import request
from tests.harness import Stack, functions, stack

FNS = functions(
    echo={"image": "fnimage", "cmd": ["hot_echo"], "format": "http-stream", "memory": "64MiB"}
)


def env_of_the_container(s: Stack) -> dict[str, str]:
    (container,) = s.fake.containers.values()
    pairs = (item.split("=", 1) for item in container.config["Env"])
    return {name: value for name, value in pairs}


async def test_hot_containers_are_asked_for_fn_log_frames_by_default(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with stack(FNS) as s:
        assert (await request(s.app, "POST", "/invoke/echo", b"x")).status == 200
        env = env_of_the_container(s)
    assert env["FN_LOGFRAME_NAME"] == "kiln_call_id"
    assert env["FN_LOGFRAME_HDR"] == "Fn-Call-Id"
    assert env["FN_FORMAT"] == "http-stream"


async def test_call_frames_off_leaves_the_log_frame_variables_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with stack(FNS, logs=LogsConfig(call_frames=False)) as s:
        assert (await request(s.app, "POST", "/invoke/echo", b"x")).status == 200
        env = env_of_the_container(s)
    assert "FN_LOGFRAME_NAME" not in env
    assert "FN_LOGFRAME_HDR" not in env
    assert env["FN_FORMAT"] == "http-stream"


def test_call_frames_is_a_boolean_in_the_config() -> None:
    assert parse({}).logs.call_frames is True
    assert parse({"logs": {"call_frames": False}}).logs.call_frames is False
