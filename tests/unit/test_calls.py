"""The one call path, ``Calls.call``, on the fake engine and the mock clock:
what it returns, records and cancels, with and without an HTTP caller."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from kiln.calls.lifecycle import CALLER_GONE, CallResult
from tests.asgi import ClientWatch, request
from tests.harness import Stack, functions, stack

FNS = functions(
    echo={"image": "busybox", "cmd": ["cat"], "timeout": 10},
    slow={"image": "busybox", "cmd": ["sleep"], "timeout": 10},
    fail={"image": "busybox", "cmd": ["fail"]},
    limited={"image": "busybox", "cmd": ["cat"], "rate": "1/s"},
    hot={"image": "fnimage", "cmd": ["hot_echo"], "format": "http-stream"},
)


def timing(header: str) -> dict[str, float]:
    return {k: float(v) for k, v in (kv.split("=") for kv in header.split(";"))}


def calls_counted(s: Stack, function: str, status: int) -> float:
    value = s.metrics.registry.get_sample_value(
        "kiln_calls_total", {"function": function, "status": str(status)}
    )
    return value or 0.0


# ---- stdio calls report their container's start (create + start) ------------


async def test_stdio_call_reports_create_and_start_as_start(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with stack(FNS) as s:
        s.fake.stall["create"] = 0.2
        s.fake.stall["start"] = 0.1
        reply = await request(s.app, "POST", "/invoke/echo", b"x")
        assert reply.status == 200
        assert reply.headers["kiln-cold"] == "1"
        t = timing(reply.headers["kiln-timing"])
        assert t["start"] == pytest.approx(300, abs=1)
        assert t["queue"] == 0


async def test_stdio_start_is_not_counted_as_run(autojump_clock: trio.testing.MockClock) -> None:
    async with stack(FNS) as s:
        s.fake.stall["create"] = 2
        result = await s.calls.call("echo", b"x", call_id="c1")
        assert result.status == 200
        assert result.timings.cold
        assert result.timings.start == pytest.approx(2)
        assert result.timings.run < 1


# ---- no HTTP caller (a background dispatcher) --------------------------------


async def test_call_without_a_caller_runs_to_the_end(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with stack(FNS) as s:
        result = await s.calls.call("echo", b"background", call_id="bg1")
        assert result == CallResult(
            200,
            b"background",
            [(b"content-type", b"application/octet-stream")],
            result.timings,
        )
        assert result.error is None
        hot = await s.calls.call("hot", b"warm", call_id="bg2")
        assert hot.status == 200
        assert hot.body == b"warm"
        assert hot.timings.cold
        assert calls_counted(s, "echo", 200) == 1
        assert calls_counted(s, "hot", 200) == 1


async def test_body_reader_is_called_once_after_the_lookup(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with stack(FNS) as s:
        reads: list[str] = []

        async def body() -> bytes:
            reads.append("read")
            return b"lazily"

        missing = await s.calls.call("missing", body, call_id="c1")
        assert missing.status == 404
        assert missing.error is not None
        assert missing.error.code == "unknown_function"
        assert reads == []
        found = await s.calls.call("echo", body, call_id="c2")
        assert found.body == b"lazily"
        assert reads == ["read"]


async def test_failures_are_results_not_exceptions(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with stack(FNS) as s:
        result = await s.calls.call("fail", b"x", call_id="c1")
        assert result.status == 502
        assert result.error is not None
        assert result.error.code == "function_error"
        assert result.timings.cold
        assert calls_counted(s, "fail", 502) == 1


async def test_draining_refuses_new_calls(autojump_clock: trio.testing.MockClock) -> None:
    async with stack(FNS) as s:
        s.calls.drain()
        result = await s.calls.call("echo", b"x", call_id="c1")
        assert result.status == 503
        assert result.error is not None
        assert result.error.code == "draining"
        assert s.fake.created_total == 0


async def test_rate_limit_refuses_with_429(autojump_clock: trio.testing.MockClock) -> None:
    async with stack(FNS) as s:
        assert (await s.calls.call("limited", b"x", call_id="c1")).status == 200
        second = await s.calls.call("limited", b"x", call_id="c2")
        assert second.status == 429
        assert second.error is not None
        assert second.error.retry_after == pytest.approx(1)
        stats = s.registry.rate_statistics()["limited"]
        assert (stats.allowed, stats.rejected) == (1, 1)


# ---- the caller leaves -------------------------------------------------------


async def test_caller_gone_cancels_the_call_and_reports_499(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with stack(FNS) as s:
        client = ClientWatch()
        result = None

        async def run() -> None:
            nonlocal result
            result = await s.calls.call("slow", b"x", call_id="c1", disconnect=client)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            await trio.sleep(1)
            assert len(s.fake.containers) == 1
            client.leave()
        assert result is not None
        assert result.status == CALLER_GONE
        assert result.caller_gone
        assert s.fake.containers == {}
        assert s.calls.inflight == 0
        assert calls_counted(s, "slow", CALLER_GONE) == 1


async def test_cancelling_the_calling_task_still_logs_the_call(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kiln.calls")
    async with stack(FNS) as s:
        with trio.move_on_after(1):
            await s.calls.call("slow", b"x", call_id="cancelled1")
        assert s.fake.containers == {}
        assert s.calls.inflight == 0
        lines = [r.getMessage() for r in caplog.records if "id=cancelled1" in r.getMessage()]
        assert len(lines) == 1
        assert "status=499" in lines[0]


async def test_every_call_logs_one_line(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kiln.calls")
    async with stack(FNS) as s:
        await s.calls.call("echo", b"x", call_id="ok1")
        await s.calls.call("missing", b"x", call_id="nf1")
        for call_id, status in (("ok1", 200), ("nf1", 404)):
            lines = [r.getMessage() for r in caplog.records if f"id={call_id}" in r.getMessage()]
            assert len(lines) == 1
            assert f"status={status}" in lines[0]
