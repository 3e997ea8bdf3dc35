"""Routing of ``/invoke/NAME[/sub/path][?query]``: every method, the request a function sees, 405s."""

from __future__ import annotations

import pytest
import trio.testing

from kiln.fncontract import INVOKE_METHODS
from tests.asgi import request
from tests.harness import functions, stack

FNS = functions(
    echo={"image": "busybox", "cmd": ["cat"]},
    env={"image": "busybox", "cmd": ["printenv"], "env": {"KILN_HTTP_PATH": "/spoofed"}},
)


def kiln_env(body: bytes) -> dict[str, str]:
    lines = body.decode().splitlines()
    return dict(line.split("=", 1) for line in lines if line.startswith("KILN_HTTP_"))


@pytest.mark.parametrize("method", INVOKE_METHODS)
async def test_every_method_invokes(method: str, autojump_clock: trio.testing.MockClock) -> None:
    async with stack(FNS) as s:
        reply = await request(s.app, method, "/invoke/env/a")
        assert reply.status == 200
        assert kiln_env(reply.body)["KILN_HTTP_METHOD"] == method


async def test_stdio_function_sees_method_sub_path_and_query(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with stack(FNS) as s:
        reply = await request(s.app, "PUT", "/invoke/env/users/42/a%20b?full=1&x=%C3%A9")
        assert reply.status == 200
        assert kiln_env(reply.body) == {
            "KILN_HTTP_METHOD": "PUT",
            "KILN_HTTP_PATH": "/users/42/a%20b",
            "KILN_HTTP_QUERY": "full=1&x=%C3%A9",
        }


async def test_no_sub_path_is_the_root(autojump_clock: trio.testing.MockClock) -> None:
    async with stack(FNS) as s:
        reply = await request(s.app, "POST", "/invoke/env")
        assert kiln_env(reply.body) == {
            "KILN_HTTP_METHOD": "POST",
            "KILN_HTTP_PATH": "/",
            "KILN_HTTP_QUERY": "",
        }


async def test_sub_path_keeps_the_body(autojump_clock: trio.testing.MockClock) -> None:
    async with stack(FNS) as s:
        reply = await request(s.app, "PATCH", "/invoke/echo/x/y?z", b"payload")
        assert (reply.status, reply.body) == (200, b"payload")


@pytest.mark.parametrize("method", ["TRACE", "CONNECT", "PROPFIND"])
async def test_other_methods_get_405_with_allow(
    method: str, autojump_clock: trio.testing.MockClock
) -> None:
    async with stack(FNS) as s:
        reply = await request(s.app, method, "/invoke/echo/x")
        assert reply.status == 405
        assert reply.json()["error"]["code"] == "method_not_allowed"
        assert reply.headers["allow"] == ", ".join(INVOKE_METHODS)
        assert s.fake.created_total == 0


async def test_unknown_function_under_a_sub_path_is_404(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with stack(FNS) as s:
        reply = await request(s.app, "GET", "/invoke/nothere/a/b")
        assert reply.status == 404
        assert reply.json()["error"]["code"] == "unknown_function"
