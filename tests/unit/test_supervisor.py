"""Hot-function supervisors on the mock clock with the fake Docker engine:
herd control, LIFO reuse, idle timeout, min_warm, eviction, death from outside."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from kiln.units import MiB
from tests.asgi import Reply, request
from tests.harness import Stack, functions, stack


def hot(cmd: str, **kw: object) -> dict[str, object]:
    return {"image": "fnimage", "cmd": [cmd], "format": "http-stream", "memory": "128MiB", **kw}


FNS = functions(
    echo=hot("hot_echo", max_containers=10, idle_timeout=30),
    small=hot("hot_echo", max_containers=4, idle_timeout=30),
    slow=hot("hot_slow", timeout=2),
    bad=hot("hot_500"),
    mute=hot("hot_never_binds", start_timeout=5),
    crash=hot("hot_exits"),
    big=hot("hot_big"),
)


def live(s: Stack, fn: str) -> list[str]:
    return [c.id for c in s.fake.containers.values() if c.labels.get("kiln.function") == fn]


async def burst(s: Stack, fn: str, n: int) -> list[Reply]:
    replies: list[Reply] = []

    async def one(i: int) -> None:
        replies.append(await request(s.app, "POST", f"/invoke/{fn}", b"%d" % i))

    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(one, i)
    return replies


async def test_1000_first_calls_start_at_most_max_containers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with stack(FNS, queue_max=2000, queue_wait=60) as s:
        replies = await burst(s, "echo", 1000)
        assert len(replies) == 1000
        assert all(r.status == 200 for r in replies)
        assert s.fake.created_total == 10
        assert sum(1 for r in replies if r.headers.get("kiln-cold") == "1") == 10


async def test_never_more_containers_than_waiting_calls(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with stack(FNS) as s:
        replies = await burst(s, "echo", 3)
        assert [r.status for r in replies] == [200] * 3
        assert s.fake.created_total == 3
        # sequential calls afterwards reuse them: nothing new is created
        for _ in range(5):
            assert (await request(s.app, "POST", "/invoke/echo", b"again")).status == 200
        assert s.fake.created_total == 3


async def test_cold_call_reports_start_time(autojump_clock: trio.testing.MockClock) -> None:
    async with stack(FNS) as s:
        first = await request(s.app, "POST", "/invoke/echo", b"hi")
        assert first.body == b"hi"
        assert first.headers["kiln-cold"] == "1"
        timing = dict(kv.split("=") for kv in first.headers["kiln-timing"].split(";"))
        assert float(timing["start"]) == pytest.approx(300, abs=1)
        second = await request(s.app, "POST", "/invoke/echo", b"hi")
        assert "kiln-cold" not in second.headers
        assert (
            float(dict(kv.split("=") for kv in second.headers["kiln-timing"].split(";"))["start"])
            == 0
        )


async def test_lifo_reuse_lets_surplus_reach_idle_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with stack(FNS) as s:
        await burst(s, "small", 4)
        assert len(live(s, "small")) == 4
        # one call every 5 s for a minute: LIFO keeps handing out the same container
        for _ in range(12):
            await request(s.app, "POST", "/invoke/small", b"x")
            await trio.sleep(5)
        assert len(live(s, "small")) == 1
        assert s.fake.created_total == 4


async def test_idle_timeout_exact(autojump_clock: trio.testing.MockClock) -> None:
    async with stack(FNS) as s:
        await request(s.app, "POST", "/invoke/echo", b"x")
        t_idle = trio.current_time()
        assert len(live(s, "echo")) == 1
        await trio.sleep(29.9)
        assert len(live(s, "echo")) == 1
        await trio.sleep(0.2)
        assert live(s, "echo") == []
        assert trio.current_time() - t_idle == pytest.approx(30.1)
        assert s.memory.statistics().reserved == 0


async def test_min_warm_prewarms_keeps_and_restores(autojump_clock: trio.testing.MockClock) -> None:
    async with stack(functions(warm=hot("hot_echo", min_warm=2, idle_timeout=10))) as s:
        await trio.sleep(1)
        assert len(live(s, "warm")) == 2  # started ahead of any call
        await trio.sleep(3600)
        assert len(live(s, "warm")) == 2  # idle timeout never drops below min_warm
        s.fake.kill_container(live(s, "warm")[0])
        await trio.sleep(1)
        assert len(live(s, "warm")) == 2  # the dead one was replaced
        assert s.memory.statistics().reserved == 2 * 128 * MiB


async def test_killed_from_outside_mid_idle(autojump_clock: trio.testing.MockClock) -> None:
    async with stack(FNS) as s:
        assert (await request(s.app, "POST", "/invoke/echo", b"1")).status == 200
        (cid,) = live(s, "echo")
        s.fake.kill_container(cid)
        await trio.sleep(0.1)
        assert live(s, "echo") == []  # noticed and removed
        assert s.memory.statistics().reserved == 0
        reply = await request(s.app, "POST", "/invoke/echo", b"2")
        assert reply.status == 200
        assert reply.body == b"2"
        assert s.memory.statistics().reserved == 128 * MiB


async def test_call_timeout_kills_container(autojump_clock: trio.testing.MockClock) -> None:
    async with stack(FNS) as s:
        t0 = trio.current_time()
        reply = await request(s.app, "POST", "/invoke/slow", b"x")
        assert reply.status == 504
        # the timeout starts when the container is handed over (after its 0.3 s start)
        assert trio.current_time() - t0 == pytest.approx(2.3)
        await trio.sleep(0.1)
        assert live(s, "slow") == []
        assert s.memory.statistics().reserved == 0


async def test_http_500_kills_container_next_call_fresh(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with stack(FNS) as s:
        reply = await request(s.app, "POST", "/invoke/bad", b"x")
        assert reply.status == 502
        await trio.sleep(0.1)
        assert live(s, "bad") == []
        await request(s.app, "POST", "/invoke/bad", b"x")
        assert s.fake.created_total == 2


async def test_never_binds_504_after_start_timeout(autojump_clock: trio.testing.MockClock) -> None:
    async with stack(FNS) as s:
        t0 = trio.current_time()
        reply = await request(s.app, "POST", "/invoke/mute", b"x")
        assert reply.status == 504
        assert reply.json()["error"]["code"] == "start_timeout"
        assert trio.current_time() - t0 == pytest.approx(5)
        await trio.sleep(0.1)
        assert live(s, "mute") == []
        assert s.memory.statistics().reserved == 0


async def test_exits_at_start_502(autojump_clock: trio.testing.MockClock) -> None:
    async with stack(FNS) as s:
        reply = await request(s.app, "POST", "/invoke/crash", b"x")
        assert reply.status == 502
        err = reply.json()["error"]
        assert err["code"] == "start_failed"
        assert "failed to initialize" in err["message"]
        assert "code 3" in err["message"]


async def test_eviction_takes_idle_not_busy(autojump_clock: trio.testing.MockClock) -> None:
    fns = functions(
        a=hot("hot_echo", idle_timeout=600),
        b=hot("hot_echo", idle_timeout=600),
        slow_a=hot("hot_slow", idle_timeout=600, timeout=30),
    )
    async with stack(fns, capacity=256 * MiB, queue_wait=10) as s:
        await request(s.app, "POST", "/invoke/a", b"x")  # a: one idle container
        async with trio.open_nursery() as nursery:
            # slow_a: one busy container for 5 s
            nursery.start_soon(request, s.app, "POST", "/invoke/slow_a", b"x")
            await trio.sleep(1)
            assert s.memory.statistics().reserved == 256 * MiB
            # b needs memory: a's idle container is evicted, slow_a's busy one is not
            reply = await request(s.app, "POST", "/invoke/b", b"y")
            assert reply.status == 200
            assert live(s, "a") == []
            assert len(live(s, "slow_a")) == 1
        pools = {p.function: p for p in s.supervisors.statistics()}
        assert pools["a"].evicted_total == 1
        assert pools["slow_a"].evicted_total == 0


async def test_waiter_evicts_a_container_that_goes_idle_later(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The waiter queued while every container was busy; one goes idle afterwards."""
    fns = functions(a=hot("hot_slow", idle_timeout=600, timeout=30), b=hot("hot_echo"))
    async with stack(fns, capacity=128 * MiB, queue_wait=60) as s:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(request, s.app, "POST", "/invoke/a", b"x")  # busy for 5 s
            await trio.sleep(1)
            t0 = trio.current_time()
            reply = await request(s.app, "POST", "/invoke/b", b"y")
            assert reply.status == 200
            # served as soon as a's container went idle (at ~5.3 s) and was evicted
            assert trio.current_time() - t0 < 6
        assert live(s, "a") == []


async def test_answer_over_max_response_is_502_like_stdio(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with stack(FNS, max_response=1 * MiB) as s:
        reply = await request(s.app, "POST", "/invoke/big", b"%d" % (2 * MiB))
        assert reply.status == 502
        assert reply.json()["error"]["code"] == "output_too_large"
        assert "max_response" in reply.json()["error"]["message"]
        await trio.sleep(0.1)
        assert live(s, "big") == []  # the connection is unusable: the container went
        ok = await request(s.app, "POST", "/invoke/big", b"%d" % MiB)
        assert ok.status == 200
        assert len(ok.body) == MiB


async def test_several_tasks_may_wait_for_a_supervisor_to_empty(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with stack(FNS) as s:
        assert (await request(s.app, "POST", "/invoke/echo", b"x")).status == 200
        supervisor = s.registry.supervisor("echo")
        assert supervisor is not None
        emptied: list[int] = []

        async def wait(i: int) -> None:
            await supervisor.wait_empty()
            emptied.append(i)

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(wait, 1)
                nursery.start_soon(wait, 2)
                await trio.testing.wait_all_tasks_blocked()
                s.registry.retire("echo", "removed")  # the supervisors wait for it too
        assert sorted(emptied) == [1, 2]
        assert live(s, "echo") == []
