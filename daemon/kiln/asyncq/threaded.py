"""A blocking store, run off the event loop.

Every store operation runs in a worker thread under a capacity limiter of its
own (one thread: the store's connection is used by one thread at a time, and
the daemon's other thread users never wait behind the database). A thread
once started finishes its transaction even if the awaiting task is
cancelled, so a commit is never half-seen: the task learns nothing, the
database has it.

Accepts are committed in groups: while one group's transaction runs, new
accepts queue up, and the next group takes them all in one transaction — one
fsync for many 202s. No task of its own: the first waiting caller runs the
next group (a "leader"), the others wait for their result.

A store whose ``inline`` attribute is true runs in the event loop's thread
instead: only tests on a ``MockClock`` use that (with an in-memory SQLite
database), since virtual time would jump while a worker thread runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import TypeVar

import trio

from kiln.asyncq.records import CallRecord, NewCall, Outcome, State
from kiln.asyncq.store import Accepted, QueueFull, QueueStats, Store

T = TypeVar("T")

#: Called after each store operation: (operation, seconds).
Observer = Callable[[str, float], None]


class _Pending:
    __slots__ = ("call", "result")

    def __init__(self, call: NewCall) -> None:
        self.call = call
        self.result: Accepted | BaseException | None = None


class ThreadedStore:
    def __init__(self, store: Store, *, observer: Observer | None = None) -> None:
        self.store = store
        self.shared = store.shared
        self.limiter = trio.CapacityLimiter(1)
        self.observer = observer
        self.inline = bool(getattr(store, "inline", False))
        self._waiting: list[_Pending] = []
        self._committing = False
        self._turn = trio.Event()

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
        mine = _Pending(call)
        self._waiting.append(mine)
        try:
            while mine.result is None:
                if self._committing:
                    await self._turn.wait()
                    continue
                await self._commit_group(queue_max)
        except BaseException:
            if mine in self._waiting:  # not in any group: forget it
                self._waiting.remove(mine)
            raise
        if isinstance(mine.result, BaseException):
            raise mine.result
        return mine.result

    async def _commit_group(self, queue_max: int) -> None:
        self._committing = True
        group, self._waiting = self._waiting, []
        try:
            results: list[Accepted | QueueFull] | BaseException
            try:
                results = await self._call(
                    "accept",
                    partial(self.store.accept_many, [p.call for p in group], queue_max=queue_max),
                )
            except trio.Cancelled:
                # The leader left before the group's transaction began: the
                # others are still waiting, and the next leader takes them.
                self._waiting[:0] = [p for p in group if p.result is None]
                raise
            except Exception as e:
                results = e
            for i, p in enumerate(group):
                p.result = results if isinstance(results, BaseException) else results[i]
        finally:
            self._committing = False
            self._turn.set()
            self._turn = trio.Event()

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
        return await self._call(
            "finish",
            partial(self.store.finish, call_id, host=host, ok=ok, outcome=outcome, now=now),
        )

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
