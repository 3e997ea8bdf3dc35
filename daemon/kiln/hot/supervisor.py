"""The supervisor of one ``http-stream`` function: the Trio side of its hot containers.

The decisions (which call gets which container, when one starts or goes) are
the pure :class:`~kiln.hot.scheduler.Scheduler`'s; this adapter feeds it
events and carries its decisions out:

* each container is one task in the supervisor's nursery, living through
  ``reserve memory → create → start → ready → (busy ⇄ idle)* → remove``; its
  memory is reserved for its whole life and comes back on every path;
* a waiting call sleeps on its own event until a container (or a refusal) is
  handed to it: no polling;
* an idle container's task waits for its retirement inside a cancel scope
  whose deadline is the idle deadline the scheduler gave it: no ticker;
* a container that dies (or is ``docker kill``-ed from outside) is noticed by
  its ``/wait`` long poll; its memory is released and the next call gets a
  fresh one.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import trio

from kiln.admission.memory import EvictionCandidate, MemoryBudget
from kiln.calls.errors import CallError, Unavailable
from kiln.containers.runtime import ContainerRuntime
from kiln.containers.spec import Identity, container_name
from kiln.fncontract import HttpRequest
from kiln.functions.spec import FunctionSpec
from kiln.hot.call import Outcome, run_call
from kiln.hot.container import HotContainer, Launcher
from kiln.hot.decisions import Decision, Emptied, Hand, Park, Refusal, Refuse, Retire, Start, WarmAt
from kiln.hot.report import ContainerInfo, HotResult, SupervisorStatistics
from kiln.hot.scheduler import Scheduler
from kiln.hot.transport import ListenerTransport, UnixTransport
from kiln.logs.service import Logs
from kiln.trioutil import open_nursery

log = logging.getLogger("kiln.hot")


#: How many more containers a call that never reached its container's listener may try.
MAX_REDISPATCH = 2


class _Waiter:
    __slots__ = ("container", "error", "event", "first")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.container: HotContainer | None = None
        self.first = False
        self.error: CallError | None = None


class Supervisor:
    """The supervisor of one hot function. Run :meth:`run` in a nursery (via
    ``nursery.start``); cancelling it removes every container it started."""

    def __init__(
        self,
        spec: FunctionSpec,
        *,
        runtime: ContainerRuntime,
        memory: MemoryBudget,
        identity: Identity,
        iofs_root: Path,
        max_response: int,
        queue_max: int = 100,
        queue_wait: float = 10.0,
        transport: ListenerTransport | None = None,
        logs: Logs | None = None,
    ) -> None:
        self.spec = spec
        self.memory = memory
        self.identity = identity
        self.iofs_root = iofs_root
        self.queue_max = queue_max
        self.queue_wait = queue_wait
        self.launcher = Launcher(
            spec,
            runtime=runtime,
            identity=identity,
            transport=transport or UnixTransport(),
            max_response=max_response,
            logs=logs,
        )
        self.scheduler = Scheduler(
            max_containers=spec.max_containers,
            min_warm=spec.min_warm,
            idle_timeout=spec.idle_timeout,
            queue_max=queue_max,
        )
        self._nursery: trio.Nursery | None = None
        self._containers: dict[int, HotContainer] = {}
        self._waiters: dict[int, _Waiter] = {}
        self._emptied: trio.Event | None = None
        self._warm_at = math.inf  # when the restart backoff lets min_warm starts go
        self._warm_scope: trio.CancelScope | None = None

    # ---- carrying out the scheduler's decisions -----------------------------

    def _apply(self, decisions: Sequence[Decision], error: CallError | None = None) -> None:
        for d in decisions:
            if isinstance(d, Start):
                self._launch(d.seq)
            elif isinstance(d, Hand):
                c = self._containers[d.seq]
                c.set_idle_deadline(math.inf)
                w = self._waiters.pop(d.waiter)
                w.container, w.first = c, d.first
                w.event.set()
            elif isinstance(d, Park):
                self._containers[d.seq].set_idle_deadline(d.deadline)
                # an eviction candidate appeared: a waiter of another function may take it
                self.memory.candidates_changed()
            elif isinstance(d, Retire):
                self._containers[d.seq].retire_now(d.reason)
            elif isinstance(d, Refuse):
                w = self._waiters.pop(d.waiter)
                w.error = self._refusal(d, error)
                w.event.set()
            elif isinstance(d, Emptied) and self._emptied is not None:
                self._emptied.set()
            elif isinstance(d, WarmAt):
                self._warm_at = d.deadline
                if self._warm_scope is not None:
                    self._warm_scope.deadline = d.deadline
                log.warning(
                    "fn=%s: %d failed start(s) in a row; the next min_warm start in %.1f s",
                    self.spec.name,
                    d.failures,
                    max(0.0, d.deadline - trio.current_time()),
                )

    def _refusal(self, d: Refuse, error: CallError | None) -> CallError:
        name = self.spec.name
        if d.why is Refusal.START_FAILED and error is not None:
            return error
        if d.why is Refusal.QUEUE_FULL:
            return Unavailable(
                f"{self.scheduler.counts().waiting} calls already wait for a container of "
                f"{name!r} ([limits] queue_max = {self.queue_max})",
                code="queue_full",
                retry_after=1,
            )
        if d.why is Refusal.RETIRED:
            return Unavailable(
                f"function {name!r} was {d.detail}; retry", code="draining", retry_after=1
            )
        if d.why is Refusal.SHUTDOWN:
            return Unavailable(
                f"function {name!r} is shutting down", code="draining", retry_after=5
            )
        return Unavailable(f"function {name!r} is being removed", code="draining", retry_after=5)

    def _launch(self, seq: int) -> None:
        assert self._nursery is not None
        name = container_name(self.identity, self.spec.name, f"{self.identity.instance}-{seq}")
        c = HotContainer(
            seq=seq, name=name, iofs=self.iofs_root / name, created_at=trio.current_time()
        )
        self._containers[seq] = c
        self._nursery.start_soon(self._life, c, name=f"container {c.name}")

    # ---- lifecycle -------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the container tasks until cancelled (every container is then removed)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._apply(self.scheduler.open())
            task_status.started()
            try:
                while True:
                    # Asleep until the restart backoff's hold (if any) is over.
                    with trio.CancelScope(deadline=self._warm_at) as self._warm_scope:
                        await trio.sleep_forever()
                    self._warm_scope = None
                    self._warm_at = math.inf
                    self._apply(self.scheduler.warm_due(trio.current_time()))
            finally:
                self._warm_scope = None
                self._apply(self.scheduler.shutdown())

    def retire_all(self, reason: str) -> None:
        """Retire every container: idle ones go now, busy ones after their call.

        Calls still queued for a container get 503 (retry): the function's
        replacement (a new spec) or its removal takes over from here.
        """
        self._apply(self.scheduler.retire_all(reason))

    async def wait_empty(self) -> None:
        """Return once every container of this supervisor is gone (any number of
        tasks may wait: they share one event until it is set)."""
        if self._containers:
            if self._emptied is None or self._emptied.is_set():
                self._emptied = trio.Event()
            await self._emptied.wait()

    def rescale(self, min_warm: int, max_containers: int) -> None:
        """Change min_warm/max_containers live: start what is now missing, retire idle surplus."""
        self.spec = dataclasses.replace(self.spec, min_warm=min_warm, max_containers=max_containers)
        self.launcher.spec = self.spec
        self._apply(self.scheduler.rescale(min_warm, max_containers))

    # ---- what it reports ---------------------------------------------------------

    def statistics(self) -> SupervisorStatistics:
        counts = dataclasses.asdict(self.scheduler.counts())
        held_until = counts.pop("restart_held_until")
        restart_in = 0.0 if held_until is None else max(0.0, held_until - trio.current_time())
        return SupervisorStatistics(function=self.spec.name, restart_in=restart_in, **counts)

    def containers(self) -> list[ContainerInfo]:
        now = trio.current_time()
        out = []
        for seq, c in self._containers.items():
            phase = self.scheduler.phase(seq)
            state = phase.value if phase is not None else "retiring"
            out.append(
                ContainerInfo(
                    name=c.name,
                    id=c.cid,
                    state=state,
                    age=now - c.created_at,
                    idle_for=now - self.scheduler.idle_since(seq) if state == "idle" else None,
                    calls=c.calls,
                )
            )
        return out

    def eviction_candidates(self) -> Iterable[EvictionCandidate]:
        for seq in self.scheduler.idle():
            c = self._containers[seq]
            if c.reservation is not None and not c.retire.is_set():
                yield EvictionCandidate(
                    reservation=c.reservation,
                    idle_since=self.scheduler.idle_since(seq),
                    evict=lambda seq=seq: self._apply(self.scheduler.evict(seq)),  # type: ignore[misc]
                )

    # ---- calls -----------------------------------------------------------------

    async def _acquire(self) -> tuple[HotContainer, bool, bool]:
        """A container for one call: (container, whether the call waited, its first call)."""
        waiter = self.scheduler.new_waiter()
        w = self._waiters[waiter] = _Waiter()
        self._apply(self.scheduler.call_arrived(waiter))
        waited = not w.event.is_set()
        wait_limit = self.queue_wait + self.spec.start_timeout
        try:
            with trio.move_on_after(wait_limit):
                await w.event.wait()
        finally:
            if not w.event.is_set():
                # timed out or cancelled before anything was handed over
                self.scheduler.waiter_left(waiter)
                del self._waiters[waiter]
        if w.container is not None:
            return w.container, waited, w.first
        if w.error is not None:
            raise w.error
        busy = self.scheduler.counts().busy
        raise Unavailable(
            f"no container of {self.spec.name!r} became free within {wait_limit:g} s "
            f"({busy} busy, max_containers = {self.spec.max_containers})",
            code="no_capacity",
            retry_after=self.queue_wait or 1,
        )

    async def invoke(
        self,
        call_id: str,
        body: bytes,
        headers: Iterable[tuple[bytes, bytes]],
        http: HttpRequest | None = None,
    ) -> HotResult:
        """Run one call on a hot container; a failed call comes back with ``error`` set
        (and its real timings). Raises CallError when no container could be had.

        A call that never reached its container (the listener could not be
        reached again: the container is replaced) goes to another container, up
        to :data:`MAX_REDISPATCH` times.
        """
        t0 = trio.current_time()
        headers = list(headers)
        c, waited, first = await self._acquire()
        t_got = trio.current_time()
        cold = waited and first
        start = (c.ready_at - max(t0, c.created_at)) if cold else 0.0
        queue = (t_got - t0) - start
        # Each undelivered attempt retires its container, so this ends; allow one try
        # per container: when dockerd comes back it may have killed them all at once.
        for attempt in range(max(MAX_REDISPATCH, self.spec.max_containers) + 1):
            if attempt:
                log.warning("fn=%s call %s: sent to another container", self.spec.name, call_id)
                c, _, _ = await self._acquire()
                t_got = trio.current_time()
            outcome = await self._call_on(c, call_id, body, headers, http)
            if not outcome.undelivered:
                break
        run = trio.current_time() - t_got
        if outcome.error is not None:
            return HotResult(outcome.error.status, [], b"", cold, queue, start, run, outcome.error)
        answer = outcome.answer
        assert answer is not None
        return HotResult(answer.status, answer.headers, answer.body, cold, queue, start, run)

    async def _call_on(
        self,
        c: HotContainer,
        call_id: str,
        body: bytes,
        headers: list[tuple[bytes, bytes]],
        http: HttpRequest | None,
    ) -> Outcome:
        c.begin_call(call_id)
        c.calls += 1
        broken: str | None = "call cancelled"
        try:
            outcome = await run_call(
                self.spec, c, call_id, body, headers, http, max_response=self.launcher.max_response
            )
            if outcome.lost and outcome.error is not None:
                why = await self.launcher.why_lost(c, outcome.error, call_id)
                outcome = dataclasses.replace(outcome, error=why)
            broken = outcome.broken
        finally:
            if broken is not None:
                await self.launcher.kill(c)
            c.end_call()
            self._apply(self.scheduler.call_done(c.seq, trio.current_time(), broken))
        return outcome

    # ---- one container's life ---------------------------------------------------

    async def _life(self, c: HotContainer) -> None:
        try:
            async with self.launcher.claim(c):  # removed on leaving, on every path
                try:
                    await self._reserved_life(c)
                except CallError as e:  # no memory, or it failed to start
                    log.warning(
                        "fn=%s container %s failed to start: %s", self.spec.name, c.name, e.message
                    )
                    self._apply(self.scheduler.start_failed(c.seq, trio.current_time()), e)
                except Exception as e:
                    # A bug must not take the whole supervisor (and daemon) down with it.
                    log.exception("fn=%s container %s: unexpected error", self.spec.name, c.name)
                    error = CallError(f"internal error starting a container: {e!r}")
                    self._apply(self.scheduler.start_failed(c.seq, trio.current_time()), error)
        finally:
            del self._containers[c.seq]
            if c.retire_reason:
                log.info("fn=%s container %s removed: %s", self.spec.name, c.name, c.retire_reason)
            self._apply(self.scheduler.container_removed(c.seq, trio.current_time()))

    async def _reserved_life(self, c: HotContainer) -> None:
        """Reserve its memory, start it, serve until retired. Raises CallError if it cannot start."""
        async with (
            self.memory.reserve(self.spec.memory, owner=self.spec.name) as reservation,
            open_nursery() as nursery,
        ):
            c.reservation = reservation
            await self.launcher.start(c, nursery, self._on_exit)
            c.ready_at = trio.current_time()
            log.info(
                "fn=%s container %s ready in %.0f ms",
                self.spec.name,
                c.name,
                (c.ready_at - c.created_at) * 1000,
            )
            self._apply(self.scheduler.container_ready(c.seq, c.ready_at))
            await self._serve(c)
            nursery.cancel_scope.cancel()

    async def _serve(self, c: HotContainer) -> None:
        """Ready: serve calls and idle until retired (by the scheduler, on its idle deadline)."""
        while not await c.wait_retired():
            # the idle deadline passed; only a new Park re-arms it
            c.set_idle_deadline(math.inf)
            self._apply(self.scheduler.idle_expired(c.seq, trio.current_time()))

    def _on_exit(self, c: HotContainer) -> None:
        self._apply(
            self.scheduler.container_died(
                c.seq, f"container exited (code {c.exit_code})", trio.current_time()
            )
        )
