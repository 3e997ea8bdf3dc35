"""Hot functions: one supervisor (:class:`FunctionPool`) per ``http-stream`` function.

Each container is one task in the supervisor's nursery, living through
``reserve memory → create → start → ready → (busy ⇄ idle)* → remove``. Its
memory is reserved from the admission pool for its whole life and comes back
when the container is removed, on every path.

* **Herd control by arithmetic** (:mod:`kiln.herd`): a new container starts
  only while waiting calls outnumber idle + starting containers, never beyond
  ``max_containers``; ``min_warm`` containers are kept started ahead of calls.
* **LIFO reuse**: the most recently idle container serves the next call, so
  surplus containers reach their ``idle_timeout`` and go.
* **Hand-off, not polling**: a container that becomes free is handed directly
  to the first waiting call (FIFO) by setting that call's event.
* **Idle timeout as a deadline**: an idle container's task waits on its
  ``retire`` event inside a cancel scope whose deadline is
  ``idle_since + idle_timeout``; a call taking the container moves the deadline
  to infinity. No ticker.
* A container that dies (or is ``docker kill``-ed from outside) is noticed by
  its ``/wait`` long poll; its memory is released and the next call gets a
  fresh one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import itertools
import logging
import math
import shutil
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import trio

from kiln.admission.memory import EvictionCandidate, MemoryBudget, Reservation
from kiln.calls.errors import CallError, CallTimeout, FunctionFailed, Unavailable, docker_call_error
from kiln.calls.stdio import StderrTail, remove_container
from kiln.containers.janitor import Janitor
from kiln.containers.spec import Identity, container_config, container_name
from kiln.docker import STDOUT, DockerClient, DockerError, Frame
from kiln.fncontract import Verdict, call_request_headers, container_env, interpret_response
from kiln.functions.spec import FunctionSpec
from kiln.herd import containers_to_start, should_retire_idle
from kiln.httpstream import FnConnection, FnProtocolError
from kiln.readiness import ListenerInvalid, wait_for_listener

log = logging.getLogger("kiln.pool")


def make_iofs_dir(path: Path) -> None:
    """The per-container dir bind-mounted at /tmp/iofs: writable by the function's user.

    Local-disk metadata calls, microseconds: fine to do synchronously.
    """
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o777)


class HotResponse(Protocol):
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


class HotConnection(Protocol):
    """One keep-alive connection to a container's listener."""

    async def call(self, headers: list[tuple[bytes, bytes]], body: bytes) -> HotResponse: ...

    async def aclose(self) -> None: ...


class ListenerTransport(Protocol):
    """How a supervisor learns a container is ready and talks to it (the seam for tests)."""

    async def wait_ready(self, iofs: Path) -> Path: ...

    async def connect(self, socket_path: Path) -> HotConnection: ...


class UnixTransport:
    """The real one: inotify on the bind-mounted dir, HTTP/1.1 over the Unix socket."""

    async def wait_ready(self, iofs: Path) -> Path:
        return await wait_for_listener(iofs)

    async def connect(self, socket_path: Path) -> HotConnection:
        return await FnConnection.open(socket_path)


class State(enum.Enum):
    STARTING = "starting"
    IDLE = "idle"
    BUSY = "busy"
    RETIRING = "retiring"


@dataclass(eq=False)
class HotContainer:
    """One container of a hot function, as its supervisor sees it."""

    seq: int
    name: str
    state: State = State.STARTING
    cid: str | None = None
    created_at: float = 0.0
    ready_at: float = 0.0
    idle_since: float = 0.0
    calls: int = 0
    current_call: str | None = None
    conn: HotConnection | None = None
    reservation: Reservation | None = None
    retire: trio.Event = field(default_factory=trio.Event)
    idle_scope: trio.CancelScope | None = None
    exit_code: int | None = None
    log_tail: StderrTail = field(default_factory=StderrTail)
    retire_reason: str = ""
    create_sent: bool = False

    def retire_now(self, reason: str) -> None:
        if not self.retire.is_set():
            self.retire_reason = reason
            self.retire.set()


@dataclass(frozen=True)
class ContainerInfo:
    name: str
    id: str | None
    state: str
    age: float
    idle_for: float | None
    calls: int


@dataclass(frozen=True)
class FunctionPoolStatistics:
    function: str
    starting: int
    idle: int
    busy: int
    retiring: int
    waiting: int
    total: int
    started_total: int
    start_failures: int
    evicted_total: int
    calls_total: int


class _CallWaiter:
    __slots__ = ("container", "error", "event")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.container: HotContainer | None = None
        self.error: CallError | None = None


@dataclass
class HotResult:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    cold: bool
    queue: float
    start: float
    run: float


class FunctionPool:
    """The supervisor of one hot function. Run :meth:`run` in a nursery (via
    ``nursery.start``); cancelling it removes every container it started."""

    def __init__(
        self,
        spec: FunctionSpec,
        *,
        docker: DockerClient,
        memory: MemoryBudget,
        identity: Identity,
        iofs_root: Path,
        queue_max: int = 100,
        queue_wait: float = 10.0,
        janitor: Janitor | None = None,
        transport: ListenerTransport | None = None,
    ) -> None:
        self.janitor = janitor
        self.transport: ListenerTransport = transport or UnixTransport()
        self.spec = spec
        self.docker = docker
        self.memory = memory
        self.identity = identity
        self.iofs_root = iofs_root
        self.queue_max = queue_max
        self.queue_wait = queue_wait
        self._nursery: trio.Nursery | None = None
        self._containers: dict[int, HotContainer] = {}
        self._idle: list[HotContainer] = []  # LIFO: the end is the most recently idle
        self._waiters: deque[_CallWaiter] = deque()
        self._seq = itertools.count(1)
        self._started_total = 0
        self._start_failures = 0
        self._evicted_total = 0
        self._calls_total = 0
        self._closed = False
        self._emptied: trio.Event | None = None

    # ---- lifecycle -------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the container tasks until cancelled (every container is then removed)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._maybe_start()
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._closed = True
                for w in self._waiters:
                    w.error = Unavailable(
                        f"function {self.spec.name!r} is shutting down",
                        code="draining",
                        retry_after=5,
                    )
                    w.event.set()
                self._waiters.clear()

    def retire_all(self, reason: str) -> None:
        """Retire every container: idle ones go now, busy ones after their call.

        Calls still queued for a container get 503 (retry): the function's
        replacement (a new spec) or its removal takes over from here.
        """
        self._closed = True
        for c in list(self._containers.values()):
            if c.state is not State.BUSY:
                self._take_idle(c)
                c.state = State.RETIRING
                c.retire_now(reason)
        for w in self._waiters:
            w.error = Unavailable(
                f"function {self.spec.name!r} was {reason}; retry", code="draining", retry_after=1
            )
            w.event.set()
        self._waiters.clear()

    async def wait_empty(self) -> None:
        """Return once every container of this pool is gone."""
        if self._containers:
            self._emptied = trio.Event()
            await self._emptied.wait()

    def rescale(self, min_warm: int, max_containers: int) -> None:
        """Change min_warm/max_containers live: start what is now missing, retire idle surplus."""
        self.spec = dataclasses.replace(self.spec, min_warm=min_warm, max_containers=max_containers)
        surplus = self.total - max_containers
        for c in list(self._idle)[: max(0, surplus)]:  # oldest idle first
            self._take_idle(c)
            c.state = State.RETIRING
            c.retire_now(f"scaled down to max_containers = {max_containers}")
        self._maybe_start()

    # ---- counts ------------------------------------------------------------

    def _count(self, state: State) -> int:
        return sum(1 for c in self._containers.values() if c.state is state)

    @property
    def total(self) -> int:
        """Live containers, retiring ones excluded (they are on their way out)."""
        return sum(1 for c in self._containers.values() if c.state is not State.RETIRING)

    def statistics(self) -> FunctionPoolStatistics:
        return FunctionPoolStatistics(
            function=self.spec.name,
            starting=self._count(State.STARTING),
            idle=len(self._idle),
            busy=self._count(State.BUSY),
            retiring=self._count(State.RETIRING),
            waiting=len(self._waiters),
            total=len(self._containers),
            started_total=self._started_total,
            start_failures=self._start_failures,
            evicted_total=self._evicted_total,
            calls_total=self._calls_total,
        )

    def containers(self) -> list[ContainerInfo]:
        now = trio.current_time()
        return [
            ContainerInfo(
                name=c.name,
                id=c.cid,
                state=c.state.value,
                age=now - c.created_at,
                idle_for=now - c.idle_since if c.state is State.IDLE else None,
                calls=c.calls,
            )
            for c in self._containers.values()
        ]

    def eviction_candidates(self) -> Iterable[EvictionCandidate]:
        for c in self._idle:
            if c.reservation is not None and not c.retire.is_set():
                yield EvictionCandidate(
                    reservation=c.reservation,
                    idle_since=c.idle_since,
                    evict=lambda c=c: self._evict(c),  # type: ignore[misc]
                )

    def _evict(self, c: HotContainer) -> None:
        if c.state is State.IDLE:
            self._evicted_total += 1
            self._take_idle(c)
            c.state = State.RETIRING
            c.retire_now("evicted to free memory for another function")

    # ---- herd control ------------------------------------------------------

    def _maybe_start(self) -> None:
        if self._nursery is None or self._closed:
            return
        n = containers_to_start(
            waiting=len(self._waiters),
            idle=len(self._idle),
            starting=self._count(State.STARTING),
            total=self.total,
            max_containers=self.spec.max_containers,
            min_warm=self.spec.min_warm,
        )
        for _ in range(n):
            seq = next(self._seq)
            c = HotContainer(
                seq=seq,
                name=container_name(
                    self.identity, self.spec.name, f"{self.identity.instance}-{seq}"
                ),
                created_at=trio.current_time(),
            )
            self._containers[seq] = c
            self._nursery.start_soon(self._container_life, c, name=f"container {c.name}")

    # ---- hand-off ------------------------------------------------------------

    def _take_idle(self, c: HotContainer) -> None:
        with contextlib.suppress(ValueError):
            self._idle.remove(c)

    def _offer(self, c: HotContainer) -> None:
        """A container is free: give it to the first waiting call, else park it idle."""
        while self._waiters:
            w = self._waiters.popleft()
            w.container = c
            c.state = State.BUSY
            if c.idle_scope is not None:
                c.idle_scope.deadline = math.inf
            w.event.set()
            return
        c.state = State.IDLE
        c.idle_since = trio.current_time()
        self._idle.append(c)
        if c.idle_scope is not None:
            c.idle_scope.deadline = c.idle_since + self.spec.idle_timeout
        # an eviction candidate appeared: a waiter of another function may take it
        self.memory.candidates_changed()

    def _release(self, c: HotContainer, *, broken: str | None) -> None:
        c.current_call = None
        if broken is not None or c.retire.is_set() or self._closed:
            c.state = State.RETIRING
            c.retire_now(broken or c.retire_reason or "function retired")
            self._maybe_start()
            return
        self._offer(c)

    def _fail_one_waiter(self, error: CallError) -> None:
        if self._waiters:
            w = self._waiters.popleft()
            w.error = error
            w.event.set()

    async def _acquire(self) -> tuple[HotContainer, bool]:
        """A container for one call: (container, whether the call waited for one)."""
        if self._closed:
            raise Unavailable(
                f"function {self.spec.name!r} is being removed", code="draining", retry_after=5
            )
        if self._idle:
            c = self._idle.pop()
            c.state = State.BUSY
            if c.idle_scope is not None:
                c.idle_scope.deadline = math.inf
            return c, False
        if len(self._waiters) >= self.queue_max:
            raise Unavailable(
                f"{len(self._waiters)} calls already wait for a container of {self.spec.name!r} "
                f"([limits] queue_max = {self.queue_max})",
                code="queue_full",
                retry_after=1,
            )
        w = _CallWaiter()
        self._waiters.append(w)
        self._maybe_start()
        wait_limit = self.queue_wait + self.spec.start_timeout
        try:
            with trio.move_on_after(wait_limit):
                await w.event.wait()
        finally:
            if not w.event.is_set():
                # timed out or cancelled before anything was handed over
                with contextlib.suppress(ValueError):
                    self._waiters.remove(w)
        if w.container is not None:
            return w.container, True
        if w.error is not None:
            raise w.error
        busy = self._count(State.BUSY)
        raise Unavailable(
            f"no container of {self.spec.name!r} became free within {wait_limit:g} s "
            f"({busy} busy, max_containers = {self.spec.max_containers})",
            code="no_capacity",
            retry_after=self.queue_wait or 1,
        )

    # ---- calls ---------------------------------------------------------------

    async def invoke(
        self, call_id: str, body: bytes, headers: Iterable[tuple[bytes, bytes]]
    ) -> HotResult:
        """Run one call on a hot container. Raises CallError with the caller's status."""
        t0 = trio.current_time()
        c, waited = await self._acquire()
        t_got = trio.current_time()
        cold = waited and c.calls == 0
        start = (c.ready_at - max(t0, c.created_at)) if cold else 0.0
        queue = (t_got - t0) - start
        c.current_call = call_id
        c.calls += 1
        self._calls_total += 1
        broken: str | None = "call cancelled"
        try:
            conn = c.conn
            assert conn is not None
            deadline_unix = time.time() + self.spec.timeout
            request_headers = call_request_headers(call_id, deadline_unix, headers)
            with trio.move_on_after(self.spec.timeout) as scope:
                response = await conn.call(request_headers, body)
            if scope.cancelled_caught:
                broken = "call timed out"
                raise CallTimeout(
                    f"function {self.spec.name!r} did not answer within its timeout of "
                    f"{self.spec.timeout:g} s; its container was killed",
                    code="timeout",
                )
            outcome = interpret_response(response.status, response.headers)
            broken = None
            if outcome.verdict is Verdict.BROKEN:
                broken = f"function answered HTTP {response.status}"
                raise FunctionFailed(
                    f"function {self.spec.name!r} broke the call contract (HTTP {response.status}); "
                    "its container was killed",
                    code="function_error",
                )
            if outcome.verdict is Verdict.FUNCTION_ERROR:
                raise FunctionFailed(
                    f"function {self.spec.name!r} failed: {response.body[:500].decode('utf-8', 'replace')}",
                    code="function_error",
                )
            if outcome.verdict is Verdict.TIMEOUT:
                raise CallTimeout(f"function {self.spec.name!r} reported a timeout", code="timeout")
            return HotResult(
                status=outcome.status,
                headers=list(outcome.headers),
                body=response.body,
                cold=cold,
                queue=queue,
                start=start,
                run=trio.current_time() - t_got,
            )
        except FnProtocolError as e:
            broken = f"protocol error: {e}"
            died = c.retire.is_set() and c.exit_code is not None
            raise FunctionFailed(
                f"function {self.spec.name!r} "
                + (
                    f"exited (code {c.exit_code}) during the call"
                    if died
                    else f"broke the connection: {e}"
                )
                + (f"; last output: {c.log_tail.text()}" if c.log_tail.text() else ""),
                code="function_error",
            ) from e
        finally:
            if broken is not None and c.cid is not None:
                # Kill before answering: the caller (and the next call) never
                # meets a broken container. Shielded and bounded.
                with trio.CancelScope(shield=True), trio.move_on_after(10):
                    try:
                        await self.docker.kill(c.cid)
                    except DockerError as e:
                        log.warning("fn=%s: could not kill %s: %s", self.spec.name, c.name, e)
            self._release(c, broken=broken)

    # ---- one container's life ---------------------------------------------

    async def _container_life(self, c: HotContainer) -> None:
        iofs = self.iofs_root / c.name
        try:
            async with self.memory.reserve(self.spec.memory, owner=self.spec.name) as reservation:
                c.reservation = reservation
                async with trio.open_nursery() as nursery:
                    try:
                        await self._start_container(c, iofs, nursery)
                    except CallError as e:
                        self._start_failures += 1
                        log.warning(
                            "fn=%s container %s failed to start: %s",
                            self.spec.name,
                            c.name,
                            e.message,
                        )
                        c.state = State.RETIRING
                        self._fail_one_waiter(e)
                        nursery.cancel_scope.cancel()
                        return
                    self._started_total += 1
                    c.ready_at = trio.current_time()
                    log.info(
                        "fn=%s container %s ready in %.0f ms",
                        self.spec.name,
                        c.name,
                        (c.ready_at - c.created_at) * 1000,
                    )
                    await self._serve(c)
                    nursery.cancel_scope.cancel()
        except CallError as e:  # no memory (queue full / waited too long)
            self._start_failures += 1
            c.state = State.RETIRING
            self._fail_one_waiter(e)
        except Exception as e:
            # A bug must not take the whole supervisor (and daemon) down with it.
            log.exception("fn=%s container %s: unexpected error", self.spec.name, c.name)
            self._start_failures += 1
            self._fail_one_waiter(CallError(f"internal error starting a container: {e!r}"))
        finally:
            c.state = State.RETIRING
            self._take_idle(c)
            with trio.CancelScope(shield=True):
                await self._remove(c)
            shutil.rmtree(iofs, ignore_errors=True)
            del self._containers[c.seq]
            if not self._containers and self._emptied is not None:
                self._emptied.set()
            if c.retire_reason:
                log.info("fn=%s container %s removed: %s", self.spec.name, c.name, c.retire_reason)
            self._maybe_start()

    async def _start_container(self, c: HotContainer, iofs: Path, nursery: trio.Nursery) -> None:
        spec = self.spec
        make_iofs_dir(iofs)
        config = container_config(
            spec,
            self.identity,
            stdio=False,
            env=container_env(spec.name, spec.memory, spec.env),
            binds=[f"{iofs}:/tmp/iofs"],
        )
        try:
            c.create_sent = True
            c.cid = await self.docker.create_container(config, name=c.name)
            await self.docker.start(c.cid)
        except DockerError as e:
            raise docker_call_error(e, spec) from e
        exited = trio.Event()
        nursery.start_soon(self._watch_exit, c, exited)
        nursery.start_soon(self._follow_logs, c)
        socket_path: Path | None = None
        invalid: ListenerInvalid | None = None
        with trio.move_on_after(spec.start_timeout) as scope:
            async with trio.open_nursery() as race:

                async def listener() -> None:
                    nonlocal socket_path, invalid
                    try:
                        socket_path = await self.transport.wait_ready(iofs)
                    except ListenerInvalid as e:
                        invalid = e
                    race.cancel_scope.cancel()

                async def death() -> None:
                    await exited.wait()
                    race.cancel_scope.cancel()

                race.start_soon(listener)
                race.start_soon(death)
        if invalid is not None:
            raise FunctionFailed(
                f"function {spec.name!r} failed to initialize: {invalid}", code="start_failed"
            )
        if socket_path is None:
            if exited.is_set():
                tail = await self._log_tail(c)
                raise FunctionFailed(
                    f"function {spec.name!r} failed to initialize: its container exited "
                    f"(code {c.exit_code}) before it was ready"
                    + (f"; last output: {tail}" if tail else ""),
                    code="start_failed",
                )
            if scope.cancelled_caught:
                raise CallTimeout(
                    f"function {spec.name!r} was not ready within start_timeout = {spec.start_timeout:g} s "
                    "(no listener at /tmp/iofs/lsnr.sock)",
                    code="start_timeout",
                )
        assert socket_path is not None
        try:
            c.conn = await self.transport.connect(socket_path)
        except (OSError, FnProtocolError) as e:
            raise FunctionFailed(
                f"function {spec.name!r}: cannot connect to its listener: {e}", code="start_failed"
            ) from e

    async def _serve(self, c: HotContainer) -> None:
        """Ready → hand out, idle, wait for the idle deadline or retirement."""
        self._offer(c)
        while not c.retire.is_set():
            with trio.CancelScope() as idle_scope:
                c.idle_scope = idle_scope
                if c.state is State.IDLE:
                    idle_scope.deadline = c.idle_since + self.spec.idle_timeout
                await c.retire.wait()
            c.idle_scope = None
            if c.retire.is_set():
                break
            # the idle deadline passed
            if c.state is State.IDLE:
                if should_retire_idle(total=self.total, min_warm=self.spec.min_warm):
                    self._take_idle(c)
                    c.state = State.RETIRING
                    c.retire_now(f"idle for {self.spec.idle_timeout:g} s")
                else:
                    c.idle_since = trio.current_time()  # kept for min_warm: re-arm
        if c.state is State.IDLE:
            self._take_idle(c)
            c.state = State.RETIRING

    async def _watch_exit(self, c: HotContainer, exited: trio.Event) -> None:
        assert c.cid is not None
        try:
            result = await self.docker.wait(c.cid)
            c.exit_code = result.status_code
        except DockerError as e:
            log.warning("fn=%s container %s: lost track of it: %s", self.spec.name, c.name, e)
        exited.set()
        self._take_idle(c)
        if c.state is State.IDLE:
            c.state = State.RETIRING
        c.retire_now(f"container exited (code {c.exit_code})")

    async def _follow_logs(self, c: HotContainer) -> None:
        assert c.cid is not None

        def on_frame(frame: Frame) -> None:
            for line in c.log_tail.feed(frame.data):
                log.info(
                    "fn=%s call=%s %s: %s",
                    self.spec.name,
                    c.current_call or "-",
                    "stdout" if frame.stream == STDOUT else "stderr",
                    line.decode("utf-8", "replace"),
                )

        try:
            await self.docker.follow_logs(c.cid, on_frame)
        except DockerError as e:
            log.debug("fn=%s container %s: log stream ended: %s", self.spec.name, c.name, e)

    async def _log_tail(self, c: HotContainer) -> str:
        if c.cid is None:
            return c.log_tail.text()
        try:
            with trio.move_on_after(5):
                out, err = await self.docker.logs(c.cid, tail=20)
                return (out + err).decode("utf-8", "replace").strip()[-2000:]
        except DockerError:
            pass
        return c.log_tail.text()

    async def _remove(self, c: HotContainer) -> None:
        if c.conn is not None:
            await c.conn.aclose()
        # A create cancelled or timed out after Docker got it may still have made the
        # container: its name is deterministic, so remove it by name.
        target = c.cid or (c.name if c.create_sent else None)
        if target is None:
            return
        await remove_container(self.docker, target, self.spec.name, self.janitor)
