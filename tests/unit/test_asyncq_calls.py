"""Async calls end to end on the fake Docker engine and a MockClock: the accept
path, the dispatcher (the one call lifecycle, the async share of memory,
per-function concurrency, retries), reading, cancelling, retention."""

from __future__ import annotations

import itertools
import random
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from kiln.asyncq.records import CallRecord, NewCall
from kiln.asyncq.sqlite import SQLiteStore
from kiln.asyncq.store import Accepted, QueueFull, StoreError
from kiln.calls.lifecycle import CallResult
from kiln.config import AsyncConfig
from kiln.functions.spec import FunctionSpec
from kiln.units import MiB
from tests.asgi import Reply, request
from tests.fakedocker import Proc
from tests.harness import Stack, functions, stack

ASYNC = [(b"kiln-invoke-type", b"async")]


class MemoryStore(SQLiteStore):
    """SQLite in memory, run in the event loop's thread (virtual time must not
    jump while a worker thread runs)."""

    inline = True

    def __init__(self) -> None:
        super().__init__(":memory:")


class NoJitter(random.Random):
    def random(self) -> float:
        return 0.0


FNS = functions(
    echo={"image": "busybox", "cmd": ["cat"], "memory": "32MiB", "async_concurrency": 100},
    slow={"image": "busybox", "cmd": ["slowcat"], "memory": "32MiB", "async_concurrency": 100},
    one={"image": "busybox", "cmd": ["slowcat"], "memory": "32MiB", "async_concurrency": 1},
    flaky={
        "image": "busybox",
        "cmd": ["fail"],
        "memory": "32MiB",
        "retries": 3,
        "retry_on_error": True,
    },
    broken={"image": "busybox", "cmd": ["fail"], "memory": "32MiB"},
)


@asynccontextmanager
async def async_stack(
    fns: dict[str, FunctionSpec] = FNS, *, store: SQLiteStore | None = None, **kw: object
) -> AsyncIterator[Stack]:
    async with stack(fns, async_store=store or MemoryStore(), **kw) as s:  # type: ignore[arg-type]
        assert s.daemon.dispatcher is not None
        s.daemon.dispatcher.rng = NoJitter()
        yield s


async def accept(s: Stack, name: str, body: bytes = b"hi", **headers: str) -> Reply:
    extra = [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    return await request(s.app, "POST", f"/invoke/{name}", body, headers=[*ASYNC, *extra])


async def wait_done(s: Stack, call_id: str) -> Reply:
    reply = await request(s.app, "GET", f"/calls/{call_id}?wait=60")
    assert reply.status == 200
    return reply


async def test_accept_then_run_then_read(autojump_clock: trio.testing.MockClock) -> None:
    async with async_stack() as s:
        r = await accept(s, "echo", b"hello")
        assert r.status == 202
        call_id = r.headers["kiln-call-id"]
        assert r.headers["location"] == f"/calls/{call_id}"
        assert r.json()["state"] == "queued"
        done = (await wait_done(s, call_id)).json()
        assert done["state"] == "succeeded"
        assert done["attempts"] == 1
        assert done["result"]["status"] == 200
        assert done["result"]["body"] == "hello"
        assert done["started"] is not None
        assert done["finished"] >= done["started"]
        # the control API reads it too, and lists it
        c = await request(s.control, "GET", f"/calls/{call_id}")
        assert c.json()["state"] == "succeeded"
        listed = (await request(s.control, "GET", "/calls?function=echo&state=succeeded")).json()
        assert [x["id"] for x in listed["calls"]] == [call_id]
        # the invoke API does not list calls (ids are the only handle on results)
        assert (await request(s.app, "GET", "/calls")).status == 404
        assert s.memory.statistics().reserved == 0


async def test_fn_detached_is_async(autojump_clock: trio.testing.MockClock) -> None:
    async with async_stack() as s:
        r = await request(
            s.app, "POST", "/invoke/echo", b"x", headers=[(b"fn-invoke-type", b"detached")]
        )
        assert r.status == 202


async def test_refusals(autojump_clock: trio.testing.MockClock) -> None:
    async with async_stack(max_body=10, async_config=AsyncConfig(queue_max=2)) as s:
        r = await accept(s, "nope")
        assert r.status == 404
        assert r.json()["error"]["code"] == "unknown_function"
        r = await accept(s, "echo", b"x" * 11)
        assert r.status == 413
        r = await accept(s, "echo", idempotency_key="bad key")
        assert r.status == 400
        assert (await request(s.app, "GET", "/calls/" + "0" * 32)).status == 404
        assert (await request(s.app, "GET", "/calls/../../etc")).status == 404
        assert (await request(s.app, "PUT", "/calls/" + "0" * 32)).status == 405
        assert (await request(s.control, "GET", "/calls?state=nope")).status == 400
        assert (await request(s.control, "GET", "/calls?limit=x")).status == 400
        assert (await request(s.app, "GET", "/calls/" + "0" * 32 + "?wait=nan")).status == 400
        # queue_max = 2 pending calls: the dispatcher is held by the one-at-a-time function
        assert (await accept(s, "one")).status == 202
        assert (await accept(s, "one")).status == 202
        await trio.sleep(1)  # the first is running, the second queued
        r = await accept(s, "one")
        assert r.status == 503
        assert r.json()["error"]["code"] == "queue_full"
        assert r.headers["retry-after"] == "5"


class BrokenStore(MemoryStore):
    """Its writes fail (a full disk, a database gone)."""

    def accept_many(
        self, calls: Sequence[NewCall], *, queue_max: int
    ) -> list[Accepted | QueueFull]:
        raise StoreError("disk I/O error")


class GatedStore(MemoryStore):
    """Its commits (in a worker thread) wait until the test lets them through."""

    inline = False

    def __init__(self, entered: trio.Event, proceed: threading.Event) -> None:
        super().__init__()
        self.entered = entered
        self.proceed = proceed

    def accept_many(
        self, calls: Sequence[NewCall], *, queue_max: int
    ) -> list[Accepted | QueueFull]:
        trio.from_thread.run_sync(self.entered.set)
        assert self.proceed.wait(10)
        return super().accept_many(calls, queue_max=queue_max)


async def test_no_202_unless_committed(autojump_clock: trio.testing.MockClock) -> None:
    async with async_stack(store=BrokenStore()) as s:
        r = await accept(s, "echo")
        assert r.status == 503
        assert r.json()["error"]["code"] == "store_unavailable"
        assert "retry-after" in r.headers
        assert s.daemon.asyncq is not None
        assert await s.daemon.asyncq.find() == []


async def test_202_waits_for_the_commit(autojump_clock: trio.testing.MockClock) -> None:
    entered, proceed = trio.Event(), threading.Event()
    async with async_stack(store=GatedStore(entered, proceed)) as s:
        replies: list[Reply] = []

        async def client() -> None:
            replies.append(await accept(s, "echo"))

        async with trio.open_nursery() as n:
            n.start_soon(client)
            await entered.wait()
            await trio.sleep(5)
            assert replies == []  # the store has not committed: no answer yet
            proceed.set()
        assert replies[0].status == 202


async def test_idempotency_key(autojump_clock: trio.testing.MockClock) -> None:
    async with async_stack() as s:
        a = await accept(s, "echo", b"1", idempotency_key="order-42")
        b = await accept(s, "echo", b"2", idempotency_key="order-42")
        assert a.headers["kiln-call-id"] == b.headers["kiln-call-id"]
        await wait_done(s, a.headers["kiln-call-id"])
        c = await accept(s, "echo", b"3", idempotency_key="order-42")
        assert c.headers["kiln-call-id"] == a.headers["kiln-call-id"]
        assert c.json()["state"] == "succeeded"
        await trio.sleep(10)
        assert s.fake.created_total == 1  # ran once


async def test_cancel_a_queued_call(autojump_clock: trio.testing.MockClock) -> None:
    async with async_stack() as s:
        first = (await accept(s, "one", b"a")).headers["kiln-call-id"]
        second = (await accept(s, "one", b"b")).headers["kiln-call-id"]
        await trio.sleep(1)
        r = await request(s.app, "DELETE", f"/calls/{first}")
        assert r.status == 409  # already running
        r = await request(s.app, "DELETE", f"/calls/{second}")
        assert r.status == 200
        assert r.json()["state"] == "cancelled"
        assert (await wait_done(s, first)).json()["state"] == "succeeded"
        await trio.sleep(60)
        assert s.fake.created_total == 1
        got = (await request(s.app, "GET", f"/calls/{second}")).json()
        assert got["state"] == "cancelled"
        assert got["attempts"] == 0


async def test_concurrency_per_function(autojump_clock: trio.testing.MockClock) -> None:
    async with async_stack() as s:
        ids = [(await accept(s, "one", b"x")).headers["kiln-call-id"] for _ in range(3)]
        t0 = trio.current_time()
        for call_id in ids:
            await wait_done(s, call_id)
        # one at a time, 5 s each (slow_cat)
        assert trio.current_time() - t0 == pytest.approx(15, abs=0.1)


async def test_async_share_of_memory(autojump_clock: trio.testing.MockClock) -> None:
    # 256 MiB pool, half for async: at most 4 of the 32 MiB calls run at once,
    # while a sync call still gets in at once.
    async with async_stack(capacity=256 * MiB, async_fraction=0.5) as s:
        d = s.daemon.dispatcher
        assert d is not None
        ids = [(await accept(s, "slow", b"x")).headers["kiln-call-id"] for _ in range(12)]
        peak_reserved_async = 0

        async def watch() -> None:
            nonlocal peak_reserved_async
            while True:
                peak_reserved_async = max(
                    peak_reserved_async, s.memory.statistics().reserved_async
                )
                await trio.sleep(0.1)

        async with trio.open_nursery() as n:
            n.start_soon(watch)
            await trio.sleep(1)
            assert d.held == 128 * MiB
            t0 = trio.current_time()
            sync = await request(s.app, "POST", "/invoke/echo", b"now")
            assert sync.status == 200
            assert trio.current_time() - t0 < 0.5  # no wait for memory
            for call_id in ids:
                await wait_done(s, call_id)
            n.cancel_scope.cancel()
        assert d.held_peak == 128 * MiB
        assert peak_reserved_async == 128 * MiB
        assert s.memory.statistics().async_capacity == 128 * MiB


async def test_retry_backoff_times(autojump_clock: trio.testing.MockClock) -> None:
    starts: list[float] = []

    async def failing(proc: Proc) -> int:
        starts.append(trio.current_time())
        await proc.read_all()
        return 3

    async with async_stack() as s:
        s.fake.programs["fail"] = failing
        call_id = (await accept(s, "flaky")).headers["kiln-call-id"]
        done = (await wait_done(s, call_id)).json()
        assert done["state"] == "failed"
        assert done["attempts"] == 4
        assert done["result"]["status"] == 502
        gaps = [round(b - a, 3) for a, b in itertools.pairwise(starts)]
        assert gaps == [1.0, 2.0, 4.0]  # 1 s, doubling (jitter off)


async def test_function_errors_are_not_retried_by_default(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with async_stack() as s:
        call_id = (await accept(s, "broken")).headers["kiln-call-id"]
        done = (await wait_done(s, call_id)).json()
        assert done["state"] == "failed"
        assert done["attempts"] == 1
        assert done["error"].startswith("function_error")


async def test_retention_purge(autojump_clock: trio.testing.MockClock) -> None:
    async with async_stack(async_config=AsyncConfig(retention=3600)) as s:
        call_id = (await accept(s, "echo")).headers["kiln-call-id"]
        done = (await wait_done(s, call_id)).json()
        finished = trio.current_time()
        await trio.sleep(3599)
        assert (await request(s.app, "GET", f"/calls/{call_id}")).status == 200
        await trio.sleep(2)
        assert (await request(s.app, "GET", f"/calls/{call_id}")).status == 404
        assert done["finished"] is not None
        assert trio.current_time() - finished == pytest.approx(3601)


class StepCounter(trio.abc.Instrument):
    def __init__(self) -> None:
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps += 1


async def test_no_step_while_nothing_is_due(autojump_clock: trio.testing.MockClock) -> None:
    async with async_stack(async_config=AsyncConfig(retention=86400)) as s:
        call_id = (await accept(s, "echo")).headers["kiln-call-id"]
        await wait_done(s, call_id)
        await trio.sleep(1)
        counter = StepCounter()
        trio.lowlevel.add_instrument(counter)
        try:
            await trio.sleep(3600)  # a virtual hour with nothing due
        finally:
            trio.lowlevel.remove_instrument(counter)
        # only this test's own task woke (once, at the end of its sleep)
        assert counter.steps <= 2


async def test_drain_leaves_queued_calls_queued(autojump_clock: trio.testing.MockClock) -> None:
    async with async_stack() as s:
        ids = [(await accept(s, "one", b"x")).headers["kiln-call-id"] for _ in range(3)]
        await trio.sleep(1)
        s.daemon.drain()
        r = await accept(s, "echo")
        assert r.status == 503
        assert r.json()["error"]["code"] == "draining"
        await wait_done(s, ids[0])
        await trio.sleep(60)
        states = [(await request(s.app, "GET", f"/calls/{i}")).json()["state"] for i in ids]
        assert states == ["succeeded", "queued", "queued"]


async def test_cancelled_running_call_goes_back_to_the_queue(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = MemoryStore()
    async with async_stack(store=store) as s:
        call_id = (await accept(s, "slow", b"x")).headers["kiln-call-id"]
        await trio.sleep(1)
    # the daemon was cancelled mid-call: the call is queued again, the attempt not counted
    rec = store.get(call_id)
    assert rec is not None
    assert rec.state == "queued"
    assert rec.attempts == 0


def test_headers_kept_for_the_call() -> None:
    from kiln.asyncq.headers import NOT_STORED, is_async

    assert is_async([(b"kiln-invoke-type", b"ASYNC")])
    assert not is_async([(b"kiln-invoke-type", b"sync")])
    assert b"idempotency-key" in NOT_STORED




async def test_accepts_are_committed_in_groups(autojump_clock: trio.testing.MockClock) -> None:
    groups: list[int] = []

    class Counting(MemoryStore):
        def accept_many(
            self, calls: Sequence[NewCall], *, queue_max: int
        ) -> list[Accepted | QueueFull]:
            groups.append(len(calls))
            return super().accept_many(calls, queue_max=queue_max)

    async with async_stack(store=Counting()) as s:
        replies: list[Reply] = []

        async def one(i: int) -> None:
            replies.append(await accept(s, "echo", b"%d" % i, idempotency_key=f"k{i % 40}"))

        async with trio.open_nursery() as n:
            for i in range(50):
                n.start_soon(one, i)
        assert [r.status for r in replies] == [202] * 50
        assert sum(groups) == 50
        assert len(groups) < 50  # grouped: fewer transactions than accepts
        # a key repeated inside one group still maps to one call
        ids = {r.json()["id"] for r in replies}
        assert len(ids) == 40


async def test_the_callers_request_is_kept(autojump_clock: trio.testing.MockClock) -> None:
    async with async_stack() as s:
        r = await request(
            s.app,
            "PUT",
            "/invoke/echo/sub/path?x=1",
            b"b",
            headers=[*ASYNC, (b"x-thing", b"yes"), (b"idempotency-key", b"k")],
        )
        assert r.status == 202
        assert s.daemon.asyncq is not None
        rec = await s.daemon.asyncq.get(r.headers["kiln-call-id"])
        assert rec is not None
        assert (b":method", b"PUT") in rec.headers
        assert (b":url", b"/sub/path?x=1") in rec.headers
        assert (b"x-thing", b"yes") in rec.headers
        names = {k for k, _ in rec.headers}
        assert b"kiln-invoke-type" not in names
        assert b"idempotency-key" not in names


async def test_calls_need_a_token_when_auth_is_on(tmp_path: Path) -> None:
    from kiln.api.access import AccessGate
    from kiln.api.auth import Tokens

    tokens = Tokens(tmp_path / "t.json")
    tok, _ = tokens.create("someone", ["other"])
    reached: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        reached.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    gate = AccessGate(app, tokens=tokens)
    path = "/calls/" + "0" * 32
    assert (await request(gate, "GET", path)).status == 401
    assert (await request(gate, "DELETE", path)).status == 401
    ok = await request(gate, "GET", path, headers=[(b"authorization", f"Bearer {tok}".encode())])
    assert ok.status == 200
    assert reached == [path]


class FlakyClaims(MemoryStore):
    """The first claims fail (the database restarting)."""

    def __init__(self) -> None:
        super().__init__()
        self.failures = 3

    def claim(
        self, *, host: str, now: float, lease: float, exclude: Sequence[str], limit: int
    ) -> list[CallRecord]:
        if self.failures:
            self.failures -= 1
            raise StoreError("connection refused")
        return super().claim(host=host, now=now, lease=lease, exclude=exclude, limit=limit)


async def test_the_dispatcher_outlives_store_failures(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = FlakyClaims()
    async with async_stack(store=store) as s:
        store.failures = 3
        call_id = (await accept(s, "echo", b"x")).headers["kiln-call-id"]
        assert (await wait_done(s, call_id)).json()["state"] == "succeeded"
        assert store.failures == 0


async def test_an_unexpected_error_fails_the_call_not_the_daemon(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with async_stack() as s:
        d = s.daemon.dispatcher
        assert d is not None
        real = d.runner

        class Broken:
            async def call(self, name: str, body: bytes, **kw: Any) -> CallResult:
                if body == b"boom":
                    raise RuntimeError("a bug")
                return await real.call(name, body, **kw)

        d.runner = Broken()
        bad = (await accept(s, "echo", b"boom")).headers["kiln-call-id"]
        done = (await wait_done(s, bad)).json()
        assert done["state"] == "failed"
        assert done["result"]["status"] == 500
        good = (await accept(s, "echo", b"fine")).headers["kiln-call-id"]
        assert (await wait_done(s, good)).json()["state"] == "succeeded"
