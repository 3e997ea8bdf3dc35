"""Hot calls over the connection Kiln keeps to a container, with the fake engine on the
mock clock: idle connections closed and dialed again, a call that could not reach its
container sent to another, failed calls timed, a crash mid-call explained."""

from __future__ import annotations

import re

import trio
import trio.testing

from tests.asgi import request
from tests.harness import Stack, functions, stack


def hot(cmd: str, **kw: object) -> dict[str, object]:
    return {"image": "fnimage", "cmd": [cmd], "format": "http-stream", "memory": "64MiB", **kw}


FNS = functions(
    echo=hot("hot_echo", idle_timeout=30),
    slow=hot("hot_slow", timeout=2),
    crash=hot("hot_crashes"),
)


def containers(s: Stack, fn: str) -> list[str]:
    return [c.id for c in s.fake.containers.values() if c.labels.get("kiln.function") == fn]


def run_ms(timing: str) -> float:
    match = re.search(r"run=([0-9.]+)", timing)
    assert match is not None, timing
    return float(match.group(1))


async def test_call_after_the_idle_connection_was_closed_dials_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with stack(FNS) as s:
        assert (await request(s.app, "POST", "/invoke/echo", b"1")).status == 200
        await trio.sleep(10)  # past the 1 s connection idle time, within idle_timeout
        reply = await request(s.app, "POST", "/invoke/echo", b"2")
        assert (reply.status, reply.body) == (200, b"2")
        assert "kiln-cold" not in reply.headers
        assert s.fake.created_total == 1


async def test_unreachable_listener_sends_the_call_to_another_container(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with stack(FNS) as s:
        assert (await request(s.app, "POST", "/invoke/echo", b"1")).status == 200
        (first,) = containers(s, "echo")
        await trio.sleep(5)  # the connection is closed for idleness
        s.fake.containers[first].refuse_connect = True
        reply = await request(s.app, "POST", "/invoke/echo", b"2")
        assert (reply.status, reply.body) == (200, b"2")
        assert s.fake.created_total == 2
        assert first not in containers(s, "echo")  # it was replaced


async def test_failed_hot_call_reports_its_real_run_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with stack(FNS) as s:
        reply = await request(s.app, "POST", "/invoke/slow", b"x")
        assert reply.status == 504
        assert 1999 <= run_ms(reply.headers["kiln-timing"]) <= 2100


async def test_crash_mid_call_says_exit_code_and_only_this_calls_output(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with stack(FNS) as s:
        assert (await request(s.app, "POST", "/invoke/crash", b"fine")).status == 200
        reply = await request(s.app, "POST", "/invoke/crash", b"crash")
        assert reply.status == 502
        message = reply.json()["error"]["message"]
        assert message.startswith("function 'crash' exited with code 1 during the call")
        assert "ValueError: boom" in message
        assert "KeyError" not in message  # an earlier call's output
        assert run_ms(reply.headers["kiln-timing"]) >= 500
