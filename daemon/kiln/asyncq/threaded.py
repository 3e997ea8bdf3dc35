"""A blocking store, run off the event loop.

Every store operation runs in a worker thread under a capacity limiter of its
own (one thread: the store's connection is used by one thread at a time, and
the daemon's other thread users never wait behind the database). A thread
once started finishes its transaction even if the awaiting task is
cancelled, so a commit is never half-seen: the task learns nothing, the
database has it.

Accepts and results are committed in groups: while one group's transaction
runs, new ones queue up, and the next group takes them all in one transaction
— one fsync for many 202s. No task of its own: the first waiting caller runs
the next group (a "leader"), the others wait for their result.

A store whose ``inline`` attribute is true runs in the event loop's thread
instead: only tests on a ``MockClock`` use that (with an in-memory SQLite
database), since virtual time would jump while a worker thread runs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Generic, TypeVar

import trio

from kiln.asyncq.records import CallRecord, NewCall, Outcome, State
from kiln.asyncq.store import Accepted, FinishItem, QueueFull, QueueStats, Store

T = TypeVar("T")
Item = TypeVar("Item")
R = TypeVar("R")

#: Called after each store operation: (operation, seconds).
Observer = Callable[[str, float], None]


class _Group(Generic[Item, R]):
    """Runs submitted items in groups through ``run_many`` (one store
    transaction per group). No task of its own: the first waiting submitter
    runs the next group; the others wait for their turn or their result."""

    def __init__(self, run_many: Callable[[list[Item]], Awaitable[list[R]]]) -> None:
        self.run_many = run_many
        self._waiting: list[_Item[Item, R]] = []
        self._running = False
        self._turn = trio.Event()

    async def submit(self, item: Item) -> R:
        mine: _Item[Item, R] = _Item(item)
        self._waiting.append(mine)
        try:
            while not mine.done:
                if self._running:
                    await self._turn.wait()
                else:
                    await self._run_group()
        except BaseException:
            if mine in self._waiting:  # not in any group: forget it
                self._waiting.remove(mine)
            raise
        if mine.error is not None:
            raise mine.error
        return mine.result  # type: ignore[return-value]  # done without error: set

    async def _run_group(self) -> None:
        self._running = True
        group, self._waiting = self._waiting, []
        try:
            try:
                results = await self.run_many([x.item for x in group])
            except trio.Cancelled:
                # The leader left before the group's transaction began: the
                # others are still waiting, and the next leader takes them.
                self._waiting[:0] = group
                raise
            except Exception as e:
                for x in group:
                    x.error, x.done = e, True
            else:
                for x, result in zip(group, results, strict=True):
                    x.result, x.done = result, True
        finally:
            self._running = False
            self._turn.set()
            self._turn = trio.Event()


class _Item(Generic[Item, R]):
    __slots__ = ("done", "error", "item", "result")

    def __init__(self, item: Item) -> None:
        self.item = item
        self.done = False
        self.result: R | None = None
        self.error: Exception | None = None


class ThreadedStore:
    def __init__(self, store: Store, *, observer: Observer | None = None) -> None:
        self.store = store
        self.shared = store.shared
        self.limiter = trio.CapacityLimiter(1)
        self.observer = observer
        self.inline = bool(getattr(store, "inline", False))
        self._accepts: _Group[tuple[NewCall, int], Accepted | QueueFull] = _Group(self._accept_many)
        self._finishes: _Group[FinishItem, bool] = _Group(self._finish_many)

    async def _call(self, op: str, fn: Callable[[], T]) -> T:
        t0 = trio.current_time()
        try:
            if self.inline:
                await trio.lowlevel.checkpoint()
                return fn()
            return await trio.to_thread.run_sync(fn, limiter=self.limiter)
        finally:
            if self.observer is not None:
                self.observer(op, trio.current_time() - t0)

    async def accept(self, call: NewCall, *, queue_max: int) -> Accepted:
        out = await self._accepts.submit((call, queue_max))
        if isinstance(out, QueueFull):
            raise out
        return out

    async def _accept_many(self, items: list[tuple[NewCall, int]]) -> list[Accepted | QueueFull]:
        queue_max = items[0][1]
        calls = [call for call, _ in items]
        return await self._call(
            "accept", partial(self.store.accept_many, calls, queue_max=queue_max)
        )

    async def _finish_many(self, items: list[FinishItem]) -> list[bool]:
        return await self._call("finish", partial(self.store.finish_many, items))

    async def get(self, call_id: str) -> CallRecord | None:
        return await self._call("get", partial(self.store.get, call_id))

    async def find(
        self, *, function: str | None, state: State | None, limit: int
    ) -> list[CallRecord]:
        return await self._call(
            "find", partial(self.store.find, function=function, state=state, limit=limit)
        )

    async def cancel(self, call_id: str, *, now: float) -> CallRecord | None:
        return await self._call("cancel", partial(self.store.cancel, call_id, now=now))

    async def claim(
        self, *, host: str, now: float, lease: float, exclude: Sequence[str], limit: int
    ) -> list[CallRecord]:
        return await self._call(
            "claim",
            partial(
                self.store.claim, host=host, now=now, lease=lease, exclude=exclude, limit=limit
            ),
        )

    async def finish(
        self, call_id: str, *, host: str, ok: bool, outcome: Outcome, now: float
    ) -> bool:
        """Record a result; results arriving together share one transaction."""
        return await self._finishes.submit(FinishItem(call_id, host, ok, outcome, now))

    async def retry(self, call_id: str, *, host: str, due: float, error: str, status: int) -> bool:
        return await self._call(
            "retry",
            partial(self.store.retry, call_id, host=host, due=due, error=error, status=status),
        )

    async def release(self, call_id: str, *, host: str, now: float) -> bool:
        return await self._call("release", partial(self.store.release, call_id, host=host, now=now))

    async def recover(self, *, host: str, now: float) -> int:
        return await self._call("recover", partial(self.store.recover, host=host, now=now))

    async def next_due(self, *, exclude: Sequence[str] = ()) -> float | None:
        return await self._call("next_due", partial(self.store.next_due, exclude=exclude))

    async def purge(self, *, before: float) -> int:
        return await self._call("purge", partial(self.store.purge, before=before))

    async def next_expiry(self) -> float | None:
        return await self._call("next_expiry", self.store.next_expiry)

    async def stats(self, *, now: float) -> QueueStats:
        return await self._call("stats", partial(self.store.stats, now=now))

    async def close(self) -> None:
        await self._call("close", self.store.close)
