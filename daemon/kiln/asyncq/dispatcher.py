"""The dispatcher: runs due async calls through the one call lifecycle.

A task in the root nursery. Each round it claims due calls, oldest due first,
as many as the async share of memory and each function's
``async_concurrency`` allow, and starts one task per call, which runs it with
:meth:`kiln.calls.lifecycle.Calls.call` (the same admission and hot/cold
paths as a synchronous call) and records the outcome, or puts the call back
with a backoff (:mod:`kiln.asyncq.backoff`). When nothing can be claimed it
sleeps until the earliest of: the next due call (a retry, or with a shared
store another host's lease running out), a new accept, or — when it held back
because of capacity — a running call finishing. No polling: with PostgreSQL,
other hosts' accepts wake it through ``LISTEN/NOTIFY``.

The async share: the calls it runs hold at most ``async_capacity`` bytes
(``[limits] async_fraction`` of the pool), counting each running call at its
function's memory; ``stdio`` calls reserve their memory as async in the
budget too, so synchronous callers always keep the rest.

Retention: a second task sleeps until the oldest finished call is
``retention`` old, purges what expired, and sleeps again.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol

import trio

from kiln.asyncq import backoff
from kiln.asyncq.headers import split_request
from kiln.asyncq.queue import AsyncQueue, Change
from kiln.asyncq.records import CallRecord, Outcome, truncate
from kiln.asyncq.store import StoreError
from kiln.calls.lifecycle import CallResult
from kiln.fncontract import HttpRequest
from kiln.functions.spec import FunctionSpec
from kiln.http.asgi import error_body

log = logging.getLogger("kiln.asyncq")

#: Calls claimed in one store transaction, at most.
BATCH = 16
#: A lease covers the longest a call can take (waiting, starting, running) plus this.
LEASE_MARGIN = 30.0
#: After a store failure, the dispatcher tries again this many seconds later.
STORE_RETRY = 1.0
#: Attempts to record a finished call before giving up (it then runs again after a restart).
RECORD_TRIES = 4


class Runner(Protocol):
    async def call(
        self,
        name: str,
        body: bytes,
        *,
        call_id: str,
        headers: Iterable[tuple[bytes, bytes]] = (),
        is_async: bool = False,
        http: HttpRequest | None = None,
    ) -> CallResult: ...


class Dispatcher:
    def __init__(
        self,
        queue: AsyncQueue,
        runner: Runner,
        specs: Callable[[], dict[str, FunctionSpec]],
        *,
        async_capacity: int,
        queue_wait: float,
        max_response: int,
        lease_margin: float = LEASE_MARGIN,
        rng: random.Random | None = None,
    ) -> None:
        self.queue = queue
        self.store = queue.store
        self.clock = queue.clock
        self.runner = runner
        self.specs = specs
        self.async_capacity = async_capacity
        self.queue_wait = queue_wait
        self.max_response = max_response
        self.lease_margin = lease_margin
        self.rng = rng or random.Random()
        #: Bytes the running async calls hold (each at its function's memory).
        self.held = 0
        #: The most it ever held (tests check it against the share).
        self.held_peak = 0
        self.running: Counter[str] = Counter()
        self.stopping = False
        self._wake = trio.Event()
        self._expiry_changed = trio.Event()
        #: Whether the last round held back for capacity (a finishing call then wakes it).
        self._held_back = False
        queue.on_change(self._changed)

    # ---- wake-ups ---------------------------------------------------------------

    def wake(self) -> None:
        """Something may be due (a new accept here or, shared, on another host)."""
        self._wake.set()

    def _changed(self, kind: Change) -> None:
        if kind == "accepted":
            self._wake.set()
        else:
            self._expiry_changed.set()

    def stop(self) -> None:
        """Drain: claim nothing more; running calls go on (the daemon's drain waits for
        them through ``Calls.wait_idle``, then cancels what is left, which goes back
        to the queue)."""
        self.stopping = True
        self._wake.set()

    # ---- the tasks ----------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        n = await self.store.recover(host=self.queue.host, now=self.clock.now())
        if n:
            log.warning(
                "async: %d call(s) were running here when kiln last stopped; queued again", n
            )
        await self._refresh_stats()
        async with trio.open_nursery() as nursery:
            if self.queue.dsn is not None:
                from kiln.asyncq.pgnotify import listen

                nursery.start_soon(listen, self.queue.dsn, self.wake)
            nursery.start_soon(self._purge_loop)
            task_status.started()
            await self._claim_loop(nursery)
            # Draining: calls still running finish (or are cancelled by the daemon's
            # drain and go back to the queue); then the purger and listener stop.
            while self.running:
                self._wake = trio.Event()
                await self._wake.wait()
            nursery.cancel_scope.cancel()

    async def _claim_loop(self, nursery: trio.Nursery) -> None:
        claims = 0
        while not self.stopping:
            self._wake = trio.Event()
            specs = self.specs()
            exclude, limit = self._room(specs)
            claimed: list[CallRecord] = []
            if limit > 0:
                try:
                    claimed = await self.store.claim(
                        host=self.queue.host,
                        now=self.clock.now(),
                        lease=self._lease(specs),
                        exclude=exclude,
                        limit=limit,
                    )
                except StoreError as e:
                    log.warning("async: claiming failed (%s); trying again in %g s", e, STORE_RETRY)
                    with trio.move_on_after(STORE_RETRY):
                        await trio.sleep_forever()
                    continue
            self._held_back = bool(exclude) or limit < BATCH
            for record in claimed:
                spec = specs.get(record.function)
                memory = spec.memory if spec is not None else 0
                self.held += memory
                self.held_peak = max(self.held_peak, self.held)
                self.running[record.function] += 1
                self.queue.counters.started += 1
                nursery.start_soon(self._run_one, record, memory)
            claims += len(claimed)
            if claims >= 256:  # the queue's figures, now and then while busy
                claims = 0
                await self._refresh_stats()
            if claimed and len(claimed) == limit:
                continue
            if self.stopping:
                break
            if limit == 0:
                await self._wake.wait()  # every function is at its limit: a call ending wakes us
                continue
            if claimed:
                continue  # took fewer than asked: the next round sleeps if nothing is due
            try:
                due = await self.store.next_due(exclude=exclude)
            except StoreError as e:
                log.warning("async: reading the queue failed (%s)", e)
                due = self.clock.now() + STORE_RETRY
            await self._refresh_stats()
            with trio.move_on_at(self.clock.deadline(due)):
                await self._wake.wait()

    def _room(self, specs: dict[str, FunctionSpec]) -> tuple[list[str], int]:
        """Functions that cannot take another call now, and how many calls to claim:
        as many as the tightest remaining function could take, so a batch never
        overshoots the share or a function's concurrency."""
        free = self.async_capacity - self.held
        exclude: list[str] = []
        limit = BATCH
        for name, spec in specs.items():
            room = spec.async_limit - self.running[name]
            if spec.memory > 0:
                room = min(room, free // spec.memory)
            if room <= 0:
                exclude.append(name)
            else:
                limit = min(limit, room)
        if specs and len(exclude) == len(specs):
            # Every function is at its limit. (Calls of functions removed since their
            # accept wait too; they are claimed, and fail with 404, once there is room.)
            limit = 0
        return exclude, limit

    def _lease(self, specs: dict[str, FunctionSpec]) -> float:
        longest = max(
            (s.start_timeout + s.timeout for s in specs.values()),
            default=0.0,
        )
        return self.queue_wait + longest + self.lease_margin

    async def _refresh_stats(self) -> None:
        try:
            self.queue.counters.stats = await self.store.stats(now=self.clock.now())
        except StoreError as e:
            log.warning("async: reading queue figures failed: %s", e)

    # ---- one call ---------------------------------------------------------------

    async def _run_one(self, record: CallRecord, memory: int) -> None:
        try:
            await self._attempt(record)
        except Exception as e:
            # A bug, not the call's failure (Calls.call returns those): keep the
            # dispatcher alive and fail the call with a 500.
            log.exception("async call %s of %s: unexpected error", record.id, record.function)
            message = f"internal error: {type(e).__name__}: {e}"
            outcome = Outcome(500, (), error_body("internal", message), False, message)
            self.queue.counters.failed += 1
            await self._record(
                "finish",
                lambda: self.store.finish(
                    record.id, host=self.queue.host, ok=False, outcome=outcome, now=self.clock.now()
                ),
            )
        finally:
            self.held -= memory
            self.running[record.function] -= 1
            if self.running[record.function] <= 0:
                del self.running[record.function]
            if self._held_back or self.stopping:
                self._wake.set()

    async def _attempt(self, record: CallRecord) -> None:
        host = self.queue.host
        headers, http = split_request(record.headers)
        try:
            result = await self.runner.call(
                record.function,
                record.body,
                call_id=record.id,
                headers=headers,
                is_async=True,
                http=http,
            )
        except trio.Cancelled:
            # The daemon is stopping: the call goes back to the queue, the attempt
            # not counted (shielded and bounded: the store must hear of it now).
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await self._record(
                    "release",
                    lambda: self.store.release(record.id, host=host, now=self.clock.now()),
                )
            raise
        error = result.error
        if error is not None and error.code == "draining":
            await self._record(
                "release", lambda: self.store.release(record.id, host=host, now=self.clock.now())
            )
            return
        body, cut = truncate(result.body, self.max_response)
        if error is not None:
            body = error_body(error.code, error.message)
            cut = False
        outcome = Outcome(
            status=result.status,
            headers=tuple(result.headers),
            body=body,
            truncated=cut,
            error=None if error is None else f"{error.code}: {error.message}",
        )
        spec = self.specs().get(record.function)
        policy = (
            backoff.Policy(retries=spec.retries, retry_on_error=spec.retry_on_error)
            if spec is not None
            else backoff.Policy(retries=0)
        )
        now = self.clock.now()
        decision = backoff.decide(
            ok=error is None,
            status=result.status,
            code=None if error is None else error.code,
            attempts=record.attempts,
            policy=policy,
            now=now,
            rng=self.rng,
        )
        if isinstance(decision, backoff.Retry):
            self.queue.counters.retried += 1
            log.info(
                "async call %s of %s: attempt %d got %d (%s); retrying in %.1f s",
                record.id,
                record.function,
                record.attempts,
                result.status,
                outcome.error,
                decision.due - now,
            )
            await self._record(
                "retry",
                lambda: self.store.retry(
                    record.id,
                    host=host,
                    due=decision.due,
                    error=outcome.error or "",
                    status=result.status,
                ),
            )
            self._wake.set()  # the retry may be due before the dispatcher's deadline
            return
        if decision.ok:
            self.queue.counters.succeeded += 1
        else:
            self.queue.counters.failed += 1
        await self._record(
            "finish",
            lambda: self.store.finish(
                record.id, host=host, ok=decision.ok, outcome=outcome, now=self.clock.now()
            ),
        )
        self.queue.finished(record.id)
        self._expiry_changed.set()

    async def _record(self, what: str, write: Callable[[], Awaitable[object]]) -> None:
        """Write a transition, trying again a few times if the store fails. If it
        never succeeds the call stays ``running`` here and runs again after a
        restart (or, shared, when its lease runs out): at-least-once."""
        delay = 0.5
        for attempt in range(RECORD_TRIES):
            try:
                await write()
                return
            except StoreError as e:
                if attempt == RECORD_TRIES - 1:
                    log.error("async: could not record %s: %s", what, e)
                    return
                log.warning("async: recording %s failed (%s); trying again", what, e)
                await trio.sleep(delay)
                delay *= 2

    # ---- retention --------------------------------------------------------------

    async def _purge_loop(self) -> None:
        retention = self.queue.retention
        while True:
            self._expiry_changed = trio.Event()
            try:
                oldest = await self.store.next_expiry()
            except StoreError as e:
                log.warning("async: reading expiries failed: %s", e)
                oldest = self.clock.now() + STORE_RETRY - retention
            if oldest is None:
                await self._expiry_changed.wait()
                continue
            await trio.sleep_until(self.clock.deadline(oldest + retention))
            try:
                # (a millisecond's slack for the round trip through the Trio clock)
                n = await self.store.purge(before=self.clock.now() - retention + 0.001)
            except StoreError as e:
                log.warning("async: purging failed: %s", e)
                continue
            if n:
                log.info("async: purged %d finished call(s) older than %g s", n, retention)
