"""/metrics on the fake engine: what a scrape shows after real calls."""

from __future__ import annotations

import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families

from kiln.admission.hostmem import HostResources
from kiln.units import MiB
from tests.asgi import request
from tests.harness import Stack, functions, stack

FNS = functions(
    echo={"image": "busybox", "cmd": ["cat"]},
    fail={"image": "busybox", "cmd": ["fail"]},
    limited={"image": "busybox", "cmd": ["cat"], "rate": "1/s"},
    hot={"image": "fnimage", "cmd": ["hot_echo"], "format": "http-stream", "memory": "64MiB"},
)


async def scrape(s: Stack) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    reply = await request(s.app, "GET", "/metrics")
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(reply.body.decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def phase_count(m: dict[tuple[str, tuple[tuple[str, str], ...]], float], phase: str) -> float:
    return sum(
        value
        for (name, labels), value in m.items()
        if name == "kiln_call_phase_seconds_count" and dict(labels)["phase"] == phase
    )


async def test_calls_by_function_and_status(autojump_clock: trio.testing.MockClock) -> None:
    async with stack(FNS) as s:
        for name in ("echo", "echo", "fail", "hot", "hot", "missing"):
            await request(s.app, "POST", f"/invoke/{name}", b"x")
        m = await scrape(s)
        assert m[("kiln_calls_total", (("function", "echo"), ("status", "200")))] == 2
        assert m[("kiln_calls_total", (("function", "fail"), ("status", "502")))] == 1
        assert m[("kiln_calls_total", (("function", "hot"), ("status", "200")))] == 2
        # a call to no function is not a series (callers cannot create label values)
        assert not any(dict(labels).get("function") == "missing" for _, labels in m)
        # every stdio call and the first hot call started a container
        assert m[("kiln_cold_starts_total", (("function", "echo"),))] == 2
        assert m[("kiln_cold_starts_total", (("function", "hot"),))] == 1
        assert phase_count(m, "run") == 5
        assert phase_count(m, "start") == 4


async def test_state_gauges(autojump_clock: trio.testing.MockClock) -> None:
    async with stack(FNS, capacity=1024 * MiB) as s:
        await request(s.app, "POST", "/invoke/hot", b"x")
        m = await scrape(s)
        assert m[("kiln_memory_bytes", (("kind", "total"),))] == 1024 * MiB
        assert m[("kiln_memory_bytes", (("kind", "reserved"),))] == 64 * MiB
        assert m[("kiln_containers", (("function", "hot"), ("state", "idle")))] == 1
        assert m[("kiln_calls_in_flight", ())] == 0
        assert m[("kiln_draining", ())] == 0
        s.calls.drain()
        assert (await scrape(s))[("kiln_draining", ())] == 1


async def test_docker_requests_are_timed(autojump_clock: trio.testing.MockClock) -> None:
    async with stack(FNS) as s:
        await request(s.app, "POST", "/invoke/echo", b"x")
        m = await scrape(s)
        ops = {dict(labels)["operation"] for name, labels in m if name.startswith("kiln_docker_")}
        assert "create_container" in ops


async def test_invoke_rate_limiter_figures(autojump_clock: trio.testing.MockClock) -> None:
    async with stack(FNS) as s:
        await request(s.app, "POST", "/invoke/limited", b"x")
        await request(s.app, "POST", "/invoke/limited", b"x")
        m = await scrape(s)
        assert m[("kiln_invoke_rate_allowed_total", (("function", "limited"),))] == 1
        assert m[("kiln_invoke_rate_rejected_total", (("function", "limited"),))] == 1
        assert m[("kiln_invoke_rate_tokens", (("function", "limited"),))] == 0
        assert ("kiln_invoke_rate_allowed_total", (("function", "echo"),)) not in m


async def test_janitor_figures(autojump_clock: trio.testing.MockClock) -> None:
    async with stack(FNS) as s:
        s.fake.fail["remove"] = (500, "device busy")
        await request(s.app, "POST", "/invoke/echo", b"x")
        m = await scrape(s)
        assert m[("kiln_janitor_pending", ())] == 1
        del s.fake.fail["remove"]
        await s.janitor.wait_empty()
        m = await scrape(s)
        assert m[("kiln_janitor_pending", ())] == 0
        assert m[("kiln_janitor_removed_total", ())] == 1
        assert m[("kiln_janitor_attempts_total", ())] >= 1


async def test_host_cpus(autojump_clock: trio.testing.MockClock) -> None:
    host = HostResources(
        memory_limit=None,
        memory_available=1 << 30,
        memory_source="host",
        cpus=1.5,
        cpu_source="cgroup2",
    )
    async with stack(FNS, host=host) as s:
        assert (await scrape(s))[("kiln_host_cpus", ())] == 1.5
        status = (await request(s.control, "GET", "/status")).json()
        assert status["host"] == {"cpus": 1.5, "cpu_source": "cgroup2"}
