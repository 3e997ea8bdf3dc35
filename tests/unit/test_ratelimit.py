"""ratelimit: token bucket arithmetic (no Trio), the async FIFO bucket, the
Docker limiter and the per-function invoke limiter (on a MockClock)."""

from __future__ import annotations

import math
import random

import pytest
import trio
import trio.testing

from kiln.admission.ratelimit import AsyncTokenBucket, DockerLimiter, InvokeRateLimiter, TokenBucket
from kiln.calls.errors import RateLimited


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


# ============================================================ TokenBucket (pure)


def test_bucket_starts_full_and_burst_is_taken_at_once() -> None:
    b = TokenBucket(rate=2.0, burst=5, now=0.0)
    assert b.tokens_at(0.0) == 5.0
    assert [b.try_take(0.0) for _ in range(6)] == [True] * 5 + [False]
    assert b.tokens_at(0.0) == 0.0


def test_bucket_refills_lazily_and_caps_at_burst() -> None:
    b = TokenBucket(rate=4.0, burst=2, now=10.0)
    assert b.try_take(10.0)
    assert b.try_take(10.0)
    assert b.tokens_at(10.125) == pytest.approx(0.5)
    assert b.tokens_at(10.5) == 2.0
    assert b.tokens_at(1000.0) == 2.0
    assert b.try_take(1000.0)
    assert b.try_take(1000.0)
    assert not b.try_take(1000.0)


def test_bucket_due_and_retry_after() -> None:
    b = TokenBucket(rate=3.0, burst=1, now=0.0)
    assert b.due(0.0) == 0.0
    assert b.retry_after(0.0) == 0.0
    assert b.try_take(0.0)
    assert b.due(0.0) == 1 / 3
    assert b.retry_after(0.1) == pytest.approx(1 / 3 - 0.1)
    assert not b.try_take(0.3)
    assert b.try_take(1 / 3)


def test_bucket_times_do_not_drift() -> None:
    # The k-th token after the burst is due at exactly k / rate.
    for rate in (3.0, 7.0, 10.0, 0.3):
        b = TokenBucket(rate=rate, burst=4, now=0.0)
        now = 0.0
        times = []
        for _ in range(1000):
            now = b.due(now)
            assert b.try_take(now)
            times.append(now)
        assert times[:4] == [0.0] * 4
        assert times[4:] == [k / rate for k in range(1, 997)]


def test_the_1e5_clock_pitfall_is_real() -> None:
    # Why due() must be exact: at ~1e5 s, tiny deficits vanish in rounding.
    assert 1e5 + 1e-12 == 1e5


@pytest.mark.parametrize("rate", [3.0, 7.0, 10.0, 1e6, 0.7])
@pytest.mark.parametrize("burst", [1, 2, 20])
def test_taking_at_due_always_succeeds_on_a_1e5_clock(rate: float, burst: int) -> None:
    rng = random.Random(f"{rate}-{burst}")
    now = 1e5 + rng.random()
    b = TokenBucket(rate=rate, burst=burst, now=now)
    taken = 0
    start = now
    for _ in range(3000):
        # Interleave idle gaps so the bucket sometimes refills part-way.
        if rng.random() < 0.05:
            now += rng.random() * burst / rate
        due = b.due(now)
        assert due >= now
        now = due
        assert b.try_take(now), (rate, burst, now)  # one sleep, then success
        taken += 1
    # Never more than burst + rate * elapsed.
    assert taken <= burst + rate * (now - start) + 1e-6 * taken


@pytest.mark.parametrize("rate", [3.0, 7.0, 1e6])
def test_1e5_clock_exact_rate(rate: float) -> None:
    origin = 1e5 + 0.123456789
    b = TokenBucket(rate=rate, burst=1, now=origin)
    now = origin
    for k in range(1, 2001):
        assert b.try_take(now)
        now = b.due(now)
        assert now == origin + k / rate  # computed once, no accumulation
        assert now > origin


def test_give_back_never_exceeds_burst() -> None:
    b = TokenBucket(rate=1.0, burst=2, now=0.0)
    b.give_back(0.0)
    assert b.tokens_at(0.0) == 2.0
    assert b.try_take(0.0)
    b.give_back(0.0)
    assert b.tokens_at(0.0) == 2.0
    assert b.try_take(0.0)
    assert b.try_take(0.0)
    assert not b.try_take(0.0)
    b.give_back(0.0)
    assert b.try_take(0.0)


def test_bucket_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError, match="rate"):
        TokenBucket(0.0, 1, 0.0)
    with pytest.raises(ValueError, match="rate"):
        TokenBucket(math.inf, 1, 0.0)
    with pytest.raises(ValueError, match="burst"):
        TokenBucket(1.0, 0, 0.0)


# ============================================================ AsyncTokenBucket


async def test_async_bucket_burst_then_exact_rate(autojump_clock: trio.testing.MockClock) -> None:
    rate, burst = 4.0, 3
    bucket = AsyncTokenBucket(rate, burst)
    t0 = trio.current_time()
    times: list[float] = []

    async def one() -> None:
        await bucket.acquire()
        times.append(trio.current_time() - t0)

    async with trio.open_nursery() as nursery:
        for _ in range(11):
            nursery.start_soon(one)
    assert times == [0.0] * 3 + [k / rate for k in range(1, 9)]
    stats = bucket.statistics()
    assert stats.waiting == 0
    assert stats.total_waits == 8
    assert stats.total_wait_time == pytest.approx(sum(k / rate for k in range(1, 9)))


def test_async_bucket_on_a_1e5_clock() -> None:
    # Same as above, but the clock starts near 1e5 s (a host up for a day).
    clock = trio.testing.MockClock(autojump_threshold=0)
    clock.jump(1e5 + 0.3)

    async def main() -> list[float]:
        bucket = AsyncTokenBucket(7.0, 1)
        times: list[float] = []
        for _ in range(50):
            await bucket.acquire()
            times.append(trio.current_time())
        return times

    times = trio.run(main, clock=clock)
    origin = times[0]
    assert origin >= 1e5
    assert times == [origin + k / 7.0 for k in range(50)]


async def test_async_bucket_fifo(autojump_clock: trio.testing.MockClock) -> None:
    bucket = AsyncTokenBucket(10.0, 1)
    order: list[int] = []

    async def one(i: int) -> None:
        await bucket.acquire()
        order.append(i)

    async with trio.open_nursery() as nursery:
        for i in range(20):
            nursery.start_soon(one, i)
            await trio.testing.wait_all_tasks_blocked()  # fix the arrival order
    assert order == list(range(20))


@pytest.mark.parametrize("position", ["head", "queued"])
async def test_cancelled_waiter_consumes_nothing(
    autojump_clock: trio.testing.MockClock, position: str
) -> None:
    rate = 2.0
    bucket = AsyncTokenBucket(rate, 1)
    t0 = trio.current_time()
    await bucket.acquire()  # bucket now empty; next token due at t0 + 0.5
    got: dict[str, float] = {}

    async def one(name: str, scope: trio.CancelScope | None = None) -> None:
        if scope is None:
            await bucket.acquire()
        else:
            with scope:
                await bucket.acquire()
            if scope.cancelled_caught:
                return
        got[name] = trio.current_time() - t0

    victim = trio.CancelScope()
    async with trio.open_nursery() as nursery:
        names = ["a", "victim", "b"] if position == "queued" else ["victim", "a", "b"]
        for name in names:
            nursery.start_soon(one, name, victim if name == "victim" else None)
            await trio.testing.wait_all_tasks_blocked()
        await trio.sleep(0.25)  # mid-wait
        victim.cancel()
    assert "victim" not in got
    # Either way the victim took nothing: the next token (due at 0.5, the
    # victim's own time when it was the head) goes to "a", the one after to "b".
    assert got == {"a": 0.5, "b": 1.0}
    assert bucket.statistics().waiting == 0


async def test_idle_bucket_has_no_tasks_and_no_deadlines(
    autojump_clock: trio.testing.MockClock,
) -> None:
    before = trio.lowlevel.current_statistics()
    bucket = AsyncTokenBucket(5.0, 2)
    limiter = DockerLimiter(create_rate=5.0, create_burst=2, max_inflight=2)
    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(bucket.acquire)
            nursery.start_soon(_create_once, limiter)
    after = trio.lowlevel.current_statistics()
    assert after.tasks_living == before.tasks_living
    assert after.seconds_to_next_deadline == math.inf
    assert bucket.statistics().waiting == 0
    # Nothing wakes up while idle: a long sleep sees no other task run.
    await trio.sleep(3600)
    assert trio.lowlevel.current_statistics().tasks_living == before.tasks_living


async def _create_once(limiter: DockerLimiter) -> None:
    async with limiter.create():
        await trio.sleep(0.01)


# ============================================================ DockerLimiter


async def test_inflight_cap_never_exceeded(autojump_clock: trio.testing.MockClock) -> None:
    limiter = DockerLimiter(create_rate=1000.0, create_burst=50, max_inflight=8)
    inflight = 0
    peak = 0
    rng = random.Random(7)

    async def one(i: int) -> None:
        nonlocal inflight, peak
        cm = limiter.create() if i % 3 == 0 else limiter.call()
        async with cm:
            inflight += 1
            peak = max(peak, inflight)
            # the semaphore hands a slot over before its new holder runs
            assert inflight <= limiter.statistics().inflight <= 8
            await trio.sleep(rng.random())
            inflight -= 1

    async with trio.open_nursery() as nursery:
        for i in range(200):
            nursery.start_soon(one, i)
    assert peak == 8
    stats = limiter.statistics()
    assert (stats.inflight, stats.waiting_for_slot) == (0, 0)


async def test_create_rate_limited(autojump_clock: trio.testing.MockClock) -> None:
    limiter = DockerLimiter(create_rate=10.0, create_burst=20, max_inflight=32)
    t0 = trio.current_time()
    times: list[float] = []

    async def one() -> None:
        async with limiter.create():
            times.append(trio.current_time() - t0)

    async with trio.open_nursery() as nursery:
        for _ in range(30):
            nursery.start_soon(one)
    assert times == [0.0] * 20 + [k / 10.0 for k in range(1, 11)]


async def test_create_waits_for_token_before_slot(autojump_clock: trio.testing.MockClock) -> None:
    limiter = DockerLimiter(create_rate=1.0, create_burst=1, max_inflight=1)
    async with limiter.create():
        pass
    # The bucket is empty. A create waiting for its token must not hold the
    # only slot: a plain call gets through at once.
    t0 = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_create_once, limiter)
        await trio.testing.wait_all_tasks_blocked()
        async with limiter.call():
            assert trio.current_time() == t0
        assert limiter.statistics().create.waiting == 1


async def test_create_cancelled_waiting_for_slot_gives_token_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limiter = DockerLimiter(create_rate=1.0, create_burst=1, max_inflight=1)
    t0 = trio.current_time()
    async with limiter.call():
        with trio.move_on_after(0.5):
            async with limiter.create():  # takes the token, then waits for the slot
                pytest.fail("got the slot while it was held")
    # The token came back: a create now proceeds at once.
    async with limiter.create():
        assert trio.current_time() == t0 + 0.5


# ============================================================ InvokeRateLimiter


async def test_invoke_limiter_retry_after(autojump_clock: trio.testing.MockClock) -> None:
    lim = InvokeRateLimiter(4.0, burst=2, name="hello")
    lim.check()
    lim.check()
    with pytest.raises(RateLimited) as info:
        lim.check()
    assert info.value.status == 429
    assert info.value.retry_after == 0.25
    assert "'hello'" in info.value.message
    await trio.sleep(0.1)
    with pytest.raises(RateLimited) as info:
        lim.check()
    assert info.value.retry_after == pytest.approx(0.15)
    await trio.sleep(0.15)
    lim.check()  # admitted exactly when retry_after said
    stats = lim.statistics()
    assert (stats.allowed, stats.rejected) == (3, 2)


async def test_invoke_limiter_default_burst(autojump_clock: trio.testing.MockClock) -> None:
    lim = InvokeRateLimiter(0.5)
    assert lim.statistics().burst == 1
    lim.check()
    with pytest.raises(RateLimited) as info:
        lim.check()
    assert info.value.retry_after == 2.0
    assert InvokeRateLimiter(5.0).statistics().burst == 5
