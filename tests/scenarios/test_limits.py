"""Admission and rate limits as a caller sees them (fake Docker, mock clock)."""

from __future__ import annotations

import trio
import trio.lowlevel
import trio.testing

from kiln.units import MiB
from tests.asgi import Reply, request
from tests.harness import functions, stack

FNS = functions(
    limited={"image": "busybox", "cmd": ["cat"], "memory": "64MiB", "rate": "2/s"},
    slow={"image": "busybox", "cmd": ["slowcat"], "memory": "128MiB"},
)


async def test_rate_limit_429_with_retry_after(autojump_clock: trio.testing.MockClock) -> None:
    async with stack(FNS) as s:
        statuses = [
            (await request(s.app, "POST", "/invoke/limited", b"x")).status for _ in range(3)
        ]
        assert statuses == [200, 200, 429]
        reply = await request(s.app, "POST", "/invoke/limited", b"x")
        assert reply.status == 429
        assert reply.json()["error"]["code"] == "rate_limited"
        assert int(reply.headers["retry-after"]) >= 1
        await trio.sleep(1)
        assert (await request(s.app, "POST", "/invoke/limited", b"x")).status == 200


async def test_calls_queue_fifo_for_memory_and_report_queue_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with stack(FNS, capacity=128 * MiB, queue_wait=60) as s:
        order: list[int] = []
        replies: dict[int, Reply] = {}

        async def call(i: int) -> None:
            replies[i] = await request(s.app, "POST", "/invoke/slow", b"%d" % i)
            order.append(i)

        async with trio.open_nursery() as nursery:
            for i in range(4):
                nursery.start_soon(call, i)
                await trio.sleep(0.01)
        assert order == [0, 1, 2, 3]
        assert all(r.status == 200 for r in replies.values())
        # each slowcat call takes 5 s; the 4th waited for the three before it
        queue_ms = float(replies[3].headers["kiln-timing"].split(";")[0].split("=")[1])
        assert 14_900 < queue_ms < 15_100
        assert s.memory.statistics().reserved == 0


async def test_no_memory_after_queue_wait_exactly(autojump_clock: trio.testing.MockClock) -> None:
    async with stack(FNS, capacity=128 * MiB, queue_wait=2) as s:
        replies: list[Reply] = []
        t: list[float] = []

        async def call() -> None:
            t0 = trio.current_time()
            replies.append(await request(s.app, "POST", "/invoke/slow", b"x"))
            t.append(trio.current_time() - t0)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call)
            await trio.lowlevel.checkpoint()
            nursery.start_soon(call)
        rejected = [r for r in replies if r.status == 503]
        assert len(rejected) == 1
        err = rejected[0].json()["error"]
        assert err["code"] == "no_memory"
        assert "needs 128 MiB" in err["message"]
        assert rejected[0].headers["retry-after"] == "2"
        assert min(t) == 2.0  # gave up exactly at queue_wait
