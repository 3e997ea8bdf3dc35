"""Rate limits: a token bucket for Docker mutations, a cap on in-flight Docker
calls, and the per-function invoke rate.

Layers:

* :class:`TokenBucket` — pure arithmetic, no Trio, no I/O. The caller passes
  ``now``; tokens refill lazily from the last state (no ticker).
* :class:`AsyncTokenBucket` — the Trio adapter: FIFO waiters, only the head
  waiter has a deadline.
* :class:`DockerLimiter` — bucket for container creates + a FIFO semaphore for
  in-flight Docker calls.
* :class:`InvokeRateLimiter` — per function, non-blocking: over the rate is a
  429 with ``Retry-After``.

None of these owns a task. When nobody waits, nothing runs and no deadline is
pending: idle means asleep.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass

import trio

from kiln.calls.errors import RateLimited

__all__ = [
    "AsyncTokenBucket",
    "BucketStatistics",
    "DockerLimiter",
    "DockerLimiterStatistics",
    "InvokeRateLimiter",
    "InvokeRateStatistics",
    "TokenBucket",
]


class TokenBucket:
    """A token bucket of ``burst`` tokens refilled at ``rate`` tokens/second.

    Starts full at time ``now``. Pure arithmetic: every method takes ``now``
    (seconds, any monotonic clock) and nothing happens between calls.

    Representation (GCRA, the "virtual scheduling" form): the bucket keeps the
    time ``origin`` at which it was last known full and the number ``count`` of
    tokens taken since then; the theoretical time at which the bucket is full
    again is ``origin + count / rate``. A token may be taken at ``now`` iff
    ``now >= origin + (count - burst + 1) / rate``.

    Why this form: Trio's clock reads about 1e5 s on a long-running host, where
    one float ulp is ~1.5e-11 s, so ``now + 1e-12 == now``. A bucket that stores
    fractional tokens and sleeps "until the deficit is refilled" can wake at a
    time where rounding still leaves 0.9999999 tokens, and a loop that sleeps by
    the remaining tiny deficit never advances. Here :meth:`due` and
    :meth:`try_take` evaluate *the same expression on the same state*, so taking
    at (or after) the time :meth:`due` returned always succeeds; and times are
    computed as ``origin + k / rate`` (one division, one addition), so they do
    not drift: with ``origin = 0`` the k-th token after the burst is due at
    exactly ``k / rate``.

    A rate whose interval ``1 / rate`` is below the clock's resolution at
    ``now`` behaves as unlimited (the clock cannot tell the tokens apart).
    """

    __slots__ = ("_burst", "_count", "_origin", "_rate")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        if not (rate > 0 and math.isfinite(rate)):
            raise ValueError(f"rate must be a positive finite number, got {rate!r}")
        if burst < 1:
            raise ValueError(f"burst must be at least 1, got {burst!r}")
        self._rate = float(rate)
        self._burst = int(burst)
        self._origin = float(now)
        self._count = 0

    @property
    def rate(self) -> float:
        return self._rate

    @property
    def burst(self) -> int:
        return self._burst

    def _settle(self, now: float) -> None:
        # Once the bucket is strictly past full, restart the count from ``now``:
        # the state is the same (full) and ``count`` stays small. (Strictly: at
        # exactly the due time of a busy bucket the state must not change, or
        # the next due time would be computed from a new origin and drift.)
        if self._origin + self._count / self._rate < now:
            self._origin = now
            self._count = 0

    def _earliest(self) -> float:
        return self._origin + (self._count - self._burst + 1) / self._rate

    def tokens_at(self, now: float) -> float:
        """Tokens available at ``now`` (fractional; informational)."""
        full_at = self._origin + self._count / self._rate
        if full_at <= now:
            return float(self._burst)
        return min(float(self._burst), max(0.0, self._burst - (full_at - now) * self._rate))

    def try_take(self, now: float) -> bool:
        """Take one token if one is available at ``now``."""
        self._settle(now)
        if now >= self._earliest():
            self._count += 1
            return True
        return False

    def due(self, now: float) -> float:
        """The absolute time (``>= now``) at which one token will be available.

        If no token is taken in between, ``try_take(t)`` succeeds for every
        ``t >= due(now)`` — in particular at exactly the returned time, so a
        waiter needs one ``sleep_until(due)`` and never a re-check loop.
        """
        self._settle(now)
        return max(now, self._earliest())

    def retry_after(self, now: float) -> float:
        """Seconds until a token is available (0.0 if one is available now)."""
        return max(0.0, self.due(now) - now)

    def give_back(self, now: float) -> None:
        """Return one unused token (e.g. its taker was cancelled before use).

        Never raises the bucket above ``burst``; if the bucket has refilled
        since, the token is simply dropped.
        """
        self._settle(now)
        if self._count > 0:
            self._count -= 1


@dataclass(frozen=True)
class BucketStatistics:
    """Snapshot of an :class:`AsyncTokenBucket`.

    ``total_waits`` counts acquires that had to wait and got their token;
    ``total_wait_time`` is the virtual time those acquires spent waiting.
    """

    tokens: float
    waiting: int
    total_waits: int
    total_wait_time: float
    rate: float
    burst: int


class _Waiter:
    __slots__ = ("wake",)

    def __init__(self) -> None:
        self.wake = trio.Event()


class AsyncTokenBucket:
    """A :class:`TokenBucket` that Trio tasks wait on, first come first served.

    Only the head waiter has a deadline: it sleeps until the time its token is
    due (one ``move_on_at(due)``), takes the token and wakes the next waiter,
    which becomes the head. Waiters behind the head wait on their own
    :class:`trio.Event`, with no deadline. When nobody waits, no task runs and no
    deadline is pending.

    The clock is ``trio.current_time()``; the bucket starts full at first use.
    """

    def __init__(self, rate: float, burst: int) -> None:
        # Validate now, even though the bucket is made lazily at first use.
        TokenBucket(rate, burst, 0.0)
        self._rate = rate
        self._burst = burst
        self._bucket: TokenBucket | None = None
        self._waiters: OrderedDict[_Waiter, None] = OrderedDict()
        self._total_waits = 0
        self._total_wait_time = 0.0

    def _get_bucket(self, now: float) -> TokenBucket:
        if self._bucket is None:
            self._bucket = TokenBucket(self._rate, self._burst, now)
        return self._bucket

    def _head(self) -> _Waiter | None:
        return next(iter(self._waiters)) if self._waiters else None

    async def acquire(self) -> None:
        """Wait for one token, in arrival order.

        Cancellation: a waiter cancelled at any point before it returns
        (queued or at the head) has taken nothing; it leaves the queue and, if it
        was the head, the next waiter becomes the head and gets the token at the
        very time the cancelled one would have. This is a checkpoint.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        now = trio.current_time()
        bucket = self._get_bucket(now)
        if not self._waiters and bucket.try_take(now):
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        me = _Waiter()
        self._waiters[me] = None
        started = now
        try:
            if self._head() is not me:
                await me.wake.wait()  # set when we become the head
            while True:
                now = trio.current_time()
                if bucket.try_take(now):
                    break
                # Normally one pass: at ``due`` the take succeeds. A give_back()
                # sets ``wake`` so the head re-reads an earlier due time.
                me.wake = trio.Event()
                with trio.move_on_at(bucket.due(now)):
                    await me.wake.wait()
        finally:
            was_head = self._head() is me
            del self._waiters[me]
            if was_head:
                head = self._head()
                if head is not None:
                    head.wake.set()
        self._total_waits += 1
        self._total_wait_time += trio.current_time() - started

    def give_back(self) -> None:
        """Return an unused token (see :meth:`TokenBucket.give_back`); the head
        waiter, if any, re-reads its due time. Does not block."""
        now = trio.current_time()
        self._get_bucket(now).give_back(now)
        head = self._head()
        if head is not None:
            head.wake.set()

    def statistics(self) -> BucketStatistics:
        tokens = float(self._burst)
        if self._bucket is not None:
            tokens = self._bucket.tokens_at(trio.current_time())
        return BucketStatistics(
            tokens=tokens,
            waiting=len(self._waiters),
            total_waits=self._total_waits,
            total_wait_time=self._total_wait_time,
            rate=self._rate,
            burst=self._burst,
        )


@dataclass(frozen=True)
class DockerLimiterStatistics:
    """Snapshot of a :class:`DockerLimiter`."""

    inflight: int
    max_inflight: int
    waiting_for_slot: int
    create: BucketStatistics


class DockerLimiter:
    """Keeps Docker upright: rate-limits container creates and caps the number
    of Docker API calls in flight.

    ``call()`` holds one of ``max_inflight`` slots for the body (FIFO:
    :class:`trio.Semaphore` wakes waiters in order). ``create()`` first takes a
    token from the create bucket (``create_rate`` per second, ``create_burst``
    at once), *then* a slot — in that order so that a create waiting for its
    token does not sit on a slot that a ``remove`` (which frees memory) needs.

    Cancellation while waiting consumes nothing: a create cancelled while
    waiting for its token took none; one cancelled while waiting for the slot
    gives its token back. Once the body is entered, the token is spent and the
    slot is released when the body exits, however it exits.
    """

    def __init__(
        self, create_rate: float = 10, create_burst: int = 20, max_inflight: int = 32
    ) -> None:
        if max_inflight < 1:
            raise ValueError(f"max_inflight must be at least 1, got {max_inflight}")
        self._bucket = AsyncTokenBucket(create_rate, create_burst)
        self._slots = trio.Semaphore(max_inflight)
        self._max_inflight = max_inflight

    def call(self) -> AbstractAsyncContextManager[None]:
        """Hold an in-flight slot for one Docker API call."""
        return self._call()

    def create(self) -> AbstractAsyncContextManager[None]:
        """Take a create token, then an in-flight slot, for one container create."""
        return self._create()

    @asynccontextmanager
    async def _call(self) -> AsyncIterator[None]:
        async with self._slots:
            yield

    @asynccontextmanager
    async def _create(self) -> AsyncIterator[None]:
        await self._bucket.acquire()
        try:
            await self._slots.acquire()
        except BaseException:
            self._bucket.give_back()
            raise
        try:
            yield
        finally:
            self._slots.release()

    def statistics(self) -> DockerLimiterStatistics:
        return DockerLimiterStatistics(
            inflight=self._max_inflight - self._slots.value,
            max_inflight=self._max_inflight,
            waiting_for_slot=self._slots.statistics().tasks_waiting,
            create=self._bucket.statistics(),
        )


@dataclass(frozen=True)
class InvokeRateStatistics:
    """Snapshot of an :class:`InvokeRateLimiter`."""

    rate: float
    burst: int
    tokens: float
    allowed: int
    rejected: int


class InvokeRateLimiter:
    """Per-function invoke rate: ``rate`` calls/second, ``burst`` at once
    (default: one second's worth, at least 1). Non-blocking.
    """

    def __init__(self, rate: float, burst: int | None = None, *, name: str = "") -> None:
        if burst is None:
            burst = max(1, math.ceil(rate)) if math.isfinite(rate) else 1
        TokenBucket(rate, burst, 0.0)  # validate
        self._rate = rate
        self._burst = burst
        self._name = name
        self._bucket: TokenBucket | None = None
        self._allowed = 0
        self._rejected = 0

    def _get_bucket(self, now: float) -> TokenBucket:
        if self._bucket is None:
            self._bucket = TokenBucket(self._rate, self._burst, now)
        return self._bucket

    def check(self) -> None:
        """Count one call, or raise :class:`RateLimited` (429) if over the rate.

        ``retry_after`` is the exact number of seconds (a float) until the next
        call would be admitted; the API layer rounds it up for the header. A
        rejected call takes nothing.
        """
        now = trio.current_time()
        bucket = self._get_bucket(now)
        if bucket.try_take(now):
            self._allowed += 1
            return
        self._rejected += 1
        wait = bucket.retry_after(now)
        who = f"function {self._name!r}" if self._name else "this function"
        raise RateLimited(
            f"{who} is limited to {self._rate:g} calls/s (burst {self._burst}); "
            f"retry in {wait:.3g} s",
            retry_after=wait,
        )

    def statistics(self) -> InvokeRateStatistics:
        tokens = float(self._burst)
        if self._bucket is not None:
            tokens = self._bucket.tokens_at(trio.current_time())
        return InvokeRateStatistics(
            rate=self._rate,
            burst=self._burst,
            tokens=tokens,
            allowed=self._allowed,
            rejected=self._rejected,
        )
