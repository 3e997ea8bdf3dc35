"""Deploying a function whose image is not on the host: deployed, with a warning
(Kiln never pulls), rather than failing only at the first call."""

from __future__ import annotations

import json

import trio.testing

from tests.asgi import request
from tests.harness import stack

SPEC = json.dumps({"image": "not-pulled:1", "cmd": ["cat"]}).encode()


async def test_missing_image_is_deployed_with_a_warning(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with stack({}) as s:
        s.fake.fail["image"] = (404, "No such image: not-pulled:1")
        reply = await request(s.control, "PUT", "/functions/late", SPEC)
        assert reply.status == 201
        (warning,) = reply.json()["warnings"]
        assert "'not-pulled:1' is not on this host: Kiln never pulls" in warning


async def test_image_on_the_host_gives_no_warning(autojump_clock: trio.testing.MockClock) -> None:
    async with stack({}) as s:
        reply = await request(s.control, "PUT", "/functions/ok", SPEC)
        assert reply.status == 201
        assert reply.json()["warnings"] == []


async def test_docker_trouble_gives_no_warning(autojump_clock: trio.testing.MockClock) -> None:
    async with stack({}) as s:
        s.fake.fail["image"] = (500, "driver failed")
        reply = await request(s.control, "PUT", "/functions/ok", SPEC)
        assert reply.status == 201
        assert reply.json()["warnings"] == []
