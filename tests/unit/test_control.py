"""The control API's routes on the fake engine and the mock clock."""

from __future__ import annotations

import json
import logging
from functools import partial

import pytest
import trio
import trio.testing

from kiln.calls.lifecycle import CALLER_GONE
from tests.asgi import Reply, request
from tests.harness import Stack, functions, stack

FNS = functions(
    echo={"image": "busybox", "cmd": ["cat"], "timeout": 10},
    slow={"image": "busybox", "cmd": ["sleep"], "timeout": 10},
    limited={"image": "busybox", "cmd": ["cat"], "rate": "5/s"},
    hot={"image": "fnimage", "cmd": ["hot_echo"], "format": "http-stream", "min_warm": 1},
)


async def control(s: Stack, method: str, path: str, body: object = None) -> Reply:
    raw = b"" if body is None else json.dumps(body).encode()
    return await request(s.control, method, path, raw)


async def warm(s: Stack) -> None:
    """Return once hot's prewarmed container is idle (a call waits for it, then frees it)."""
    assert (await request(s.app, "POST", "/invoke/hot", b"")).status == 200
    assert s.fake.created_total == 1


def live(s: Stack, function: str) -> int:
    return sum(1 for c in s.fake.containers.values() if c.labels.get("kiln.function") == function)


def calls_counted(s: Stack, function: str, status: int) -> float:
    value = s.metrics.registry.get_sample_value(
        "kiln_calls_total", {"function": function, "status": str(status)}
    )
    return value or 0.0


# ---- POST /functions/{name}/invoke takes the same call path as the invoke API ----


async def test_control_invoke_reports_timing_and_is_counted_and_logged(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kiln.calls")
    async with stack(FNS) as s:
        reply = await request(s.control, "POST", "/functions/echo/invoke", b"via control")
        assert reply.status == 200
        assert reply.body == b"via control"
        assert reply.headers["kiln-cold"] == "1"
        assert "run=" in reply.headers["kiln-timing"]
        call_id = reply.headers["kiln-call-id"]
        assert calls_counted(s, "echo", 200) == 1
        lines = [r.getMessage() for r in caplog.records if f"id={call_id}" in r.getMessage()]
        assert len(lines) == 1
        assert "fn=echo" in lines[0]
        assert "status=200" in lines[0]


async def test_control_invoke_cancels_the_call_when_the_caller_leaves(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with stack(FNS) as s:
        gone = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                partial(request, s.control, "POST", "/functions/slow/invoke", b"x", disconnect=gone)
            )
            await trio.sleep(1)
            assert live(s, "slow") == 1
            gone.set()
        assert live(s, "slow") == 0
        assert s.calls.inflight == 0
        assert calls_counted(s, "slow", CALLER_GONE) == 1


async def test_control_invoke_errors_are_json_with_timing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with stack(FNS) as s:
        missing = await request(s.control, "POST", "/functions/nope/invoke", b"x")
        assert missing.status == 404
        assert missing.json()["error"]["code"] == "unknown_function"
        for _ in range(5):
            assert (await request(s.control, "POST", "/functions/limited/invoke")).status == 200
        limited = await request(s.control, "POST", "/functions/limited/invoke")
        assert limited.status == 429
        assert limited.headers["retry-after"] == "1"
        assert "kiln-timing" in limited.headers


async def test_control_invoke_refuses_a_body_over_max_body(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with stack({"echo": FNS["echo"]}, max_body=10) as s:
        reply = await request(s.control, "POST", "/functions/echo/invoke", b"x" * 11)
        assert reply.status == 413
        assert reply.json()["error"]["code"] == "body_too_large"
        assert s.fake.created_total == 0


# ---- queries -----------------------------------------------------------------


async def test_status_shows_the_daemon_at_a_glance(autojump_clock: trio.testing.MockClock) -> None:
    async with stack(FNS) as s:
        await warm(s)
        await request(s.control, "POST", "/functions/limited/invoke", b"x")
        reply = await control(s, "GET", "/status")
        assert reply.status == 200
        status = reply.json()
        assert status["functions"] == 4
        assert status["calls_in_flight"] == 0
        assert status["draining"] is False
        assert status["docker"]["reachable"] is True
        assert status["containers"] == {"idle": 1}  # hot's min_warm
        assert status["memory"]["total"] == s.memory.statistics().capacity
        assert status["janitor"] == {"pending": 0, "removed_total": 0, "attempts_total": 0}
        assert status["rate_limits"]["limited"]["allowed"] == 1
        assert set(status["rate_limits"]) == {"limited"}


async def test_functions_list_and_one_function(autojump_clock: trio.testing.MockClock) -> None:
    async with stack(FNS) as s:
        await warm(s)
        listed = (await control(s, "GET", "/functions")).json()
        assert [f["name"] for f in listed] == ["echo", "hot", "limited", "slow"]
        hot = next(f for f in listed if f["name"] == "hot")
        assert (hot["containers"], hot["idle"], hot["busy"]) == (1, 1, 0)
        info = (await control(s, "GET", "/functions/hot")).json()
        assert info["source"] == "config"
        assert info["spec"]["format"] == "http-stream"
        assert len(info["containers"]) == 1
        assert info["stats"]["idle"] == 1
        limited = (await control(s, "GET", "/functions/limited")).json()
        assert limited["rate"]["rate"] == 5
        missing = await control(s, "GET", "/functions/nope")
        assert missing.status == 404
        assert missing.json()["error"]["code"] == "unknown_function"


async def test_containers_lists_hot_containers(autojump_clock: trio.testing.MockClock) -> None:
    async with stack(FNS) as s:
        await warm(s)
        listed = (await control(s, "GET", "/containers")).json()
        assert [(c["function"], c["state"]) for c in listed] == [("hot", "idle")]


async def test_unknown_route_is_404(autojump_clock: trio.testing.MockClock) -> None:
    async with stack(FNS) as s:
        for method, path in (
            ("GET", "/nope"),
            ("GET", "/functions/echo/x"),
            ("POST", "/tokens/a/b"),
        ):
            reply = await control(s, method, path)
            assert reply.status == 404, path
            assert reply.json()["error"]["code"] == "not_found"


async def test_a_known_route_with_another_method_is_405_with_allow(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with stack(FNS) as s:
        for method, path, allow in (
            ("POST", "/status", "GET"),
            ("DELETE", "/functions", "GET"),
            ("POST", "/functions/echo", "GET, PUT, DELETE"),
            ("GET", "/functions/echo/invoke", "POST"),
            ("PUT", "/tokens", "GET, POST"),
        ):
            reply = await control(s, method, path)
            assert reply.status == 405, (method, path)
            assert reply.headers["allow"] == allow
            assert reply.json()["error"]["code"] == "method_not_allowed"
        assert "echo" in s.registry  # nothing was changed


# ---- changes -----------------------------------------------------------------


async def test_put_deploys_then_updates(autojump_clock: trio.testing.MockClock) -> None:
    async with stack(FNS) as s:
        spec = {"image": "busybox", "cmd": ["cat"], "memory": "64MiB"}
        created = await control(s, "PUT", "/functions/new", spec)
        assert created.status == 201
        assert created.json()["source"] == "deployed"
        assert (await request(s.app, "POST", "/invoke/new", b"hi")).body == b"hi"
        updated = await control(s, "PUT", "/functions/new", {**spec, "memory": "96MiB"})
        assert updated.status == 200
        assert updated.json()["spec"]["memory"] == 96 * 1024 * 1024


async def test_put_refuses_a_bad_spec(autojump_clock: trio.testing.MockClock) -> None:
    async with stack(FNS) as s:
        for body in ({"image": ""}, {"image": "x", "memory": "nope"}, [1], {"image": "x", "y": 1}):
            reply = await control(s, "PUT", "/functions/bad", body)
            assert reply.status == 400, body
            assert reply.json()["error"]["code"] == "bad_spec"
        not_json = await request(s.control, "PUT", "/functions/bad", b"{nope")
        assert not_json.status == 400
        assert "bad" not in s.registry


async def test_delete_removes(autojump_clock: trio.testing.MockClock) -> None:
    async with stack(FNS) as s:
        reply = await control(s, "DELETE", "/functions/hot")
        assert reply.json() == {"removed": "hot"}
        assert (await request(s.app, "POST", "/invoke/hot", b"x")).status == 404
        assert (await control(s, "DELETE", "/functions/hot")).status == 404


async def test_scale_validates_and_applies(autojump_clock: trio.testing.MockClock) -> None:
    async with stack(FNS) as s:
        ok = await control(s, "POST", "/functions/hot/scale", {"min_warm": 2})
        assert ok.status == 200
        assert ok.json()["min_warm"] == 2
        for body in (
            {"min_warm": -1},
            {"max_containers": 0},
            {"min_warm": 5, "max_containers": 3},
            {"min_warm": "2"},
            {"min_warm": True},
            {"warm": 1},
            [2],
        ):
            reply = await control(s, "POST", "/functions/hot/scale", body)
            assert reply.status == 400, body
            assert reply.json()["error"]["code"] == "bad_spec"
        assert s.registry.spec("hot").min_warm == 2


async def test_drain_sets_the_drain_going(autojump_clock: trio.testing.MockClock) -> None:
    async with stack(FNS) as s:
        reply = await control(s, "POST", "/drain")
        assert reply.status == 202
        assert reply.json() == {"draining": True}
        assert s.drain_requested.is_set()
