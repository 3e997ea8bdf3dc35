"""One hot container's life: create, start, ready, output, exit, kill, remove.

Its output (stdout and stderr) is read once, from the attach stream opened
before the container starts, into the function's log (:mod:`kiln.logs`); the
containers log to Docker's ``none`` driver, so dockerd keeps no copy.

:class:`HotContainer` is what a supervisor holds for one container (its
scheduling state lives in :mod:`kiln.hot.scheduler`); :class:`Launcher` does
its I/O: Docker through the container runtime (:mod:`kiln.containers.runtime`,
which also maps Docker's failures), the listener through the transport.
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import trio

from kiln.admission.memory import Reservation
from kiln.calls.errors import CallError, CallTimeout, FunctionFailed
from kiln.calls.stdio import ExitInfo
from kiln.calls.stdio import outcome as exit_outcome
from kiln.containers.runtime import Box, ContainerRuntime
from kiln.containers.spec import Identity, container_config
from kiln.fncontract import container_env
from kiln.functions.spec import FunctionSpec
from kiln.hot.dialer import Dialer
from kiln.hot.httpstream import FnProtocolError
from kiln.hot.readiness import ListenerInvalid
from kiln.hot.transport import ListenerTransport
from kiln.logs.service import FRAME_NAME, ContainerLog, Logs

log = logging.getLogger("kiln.hot")

#: After a call's connection broke: how long to wait for Docker to report the exit.
EXIT_REPORT_WAIT = 1.0
#: How long asking Docker whether a container was OOM-killed may take.
OOM_CHECK_TIMEOUT = 5.0
#: While Docker is down: the first and the longest pause before asking it again
#: whether a container still runs.
WAIT_RETRY_FIRST = 0.5
WAIT_RETRY_MAX = 1.0
#: How long a container that exited may take to deliver its last output.
OUTPUT_GRACE = 1.0
#: Fn's log framing: FDKs that honour it write ``kiln_call_id=<Fn-Call-Id>`` on
#: stdout and stderr as each call starts, so lines are attributed exactly.
LOGFRAME_ENV = {"FN_LOGFRAME_NAME": FRAME_NAME, "FN_LOGFRAME_HDR": "Fn-Call-Id"}


def make_iofs_dir(path: Path) -> None:
    """The per-container dir bind-mounted at /tmp/iofs: writable by the function's user.

    Local-disk metadata calls, microseconds: fine to do synchronously.
    """
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o777)


@dataclass(eq=False)
class HotContainer:
    """One container of a hot function, as its supervisor holds it."""

    seq: int
    name: str
    iofs: Path
    created_at: float = 0.0
    box: Box | None = None
    ready_at: float = 0.0
    calls: int = 0
    current_call: str | None = None
    conn: Dialer | None = None
    reservation: Reservation | None = None
    exit_code: int | None = None
    log: ContainerLog | None = None
    output_done: trio.Event = field(default_factory=trio.Event)
    retire: trio.Event = field(default_factory=trio.Event)
    exited: trio.Event = field(default_factory=trio.Event)
    retire_reason: str = ""
    idle_deadline: float = math.inf
    _idle_scope: trio.CancelScope | None = None

    @property
    def cid(self) -> str | None:
        return self.box.id if self.box is not None else None

    def begin_call(self, call_id: str) -> None:
        self.current_call = call_id
        if self.log is not None:
            self.log.begin_call(call_id)

    def end_call(self) -> None:
        self.current_call = None
        if self.log is not None:
            self.log.end_call()

    def output_tail(self, call: str | None = None) -> str:
        """The last lines this container wrote (during ``call`` only, if given), for
        error messages."""
        return self.log.tail_text(call=call) if self.log is not None else ""

    def retire_now(self, reason: str) -> None:
        if not self.retire.is_set():
            self.retire_reason = reason
            self.retire.set()

    def set_idle_deadline(self, deadline: float) -> None:
        self.idle_deadline = deadline
        if self._idle_scope is not None:
            self._idle_scope.deadline = deadline

    async def wait_retired(self) -> bool:
        """Wait for retirement or the idle deadline: True when retired."""
        with trio.CancelScope(deadline=self.idle_deadline) as scope:
            self._idle_scope = scope
            try:
                await self.retire.wait()
            finally:
                self._idle_scope = None
        return self.retire.is_set()


class Launcher:
    """The I/O side of one function's hot containers."""

    def __init__(
        self,
        spec: FunctionSpec,
        *,
        runtime: ContainerRuntime,
        identity: Identity,
        transport: ListenerTransport,
        max_response: int,
        logs: Logs | None = None,
    ) -> None:
        self.spec = spec
        self.runtime = runtime
        self.identity = identity
        self.transport = transport
        self.max_response = max_response
        self.logs = logs or Logs()

    @asynccontextmanager
    async def claim(self, c: HotContainer) -> AsyncIterator[None]:
        """Own ``c``'s container and its /tmp/iofs dir: leaving the block closes the
        connection and removes both, on every path (shielded). Never raises."""
        try:
            async with self.runtime.claim(self.spec, c.name) as box:
                c.box = box
                try:
                    yield
                finally:
                    if c.conn is not None:
                        with trio.CancelScope(shield=True):
                            await c.conn.aclose()
        finally:
            shutil.rmtree(c.iofs, ignore_errors=True)

    def _env(self) -> dict[str, str]:
        """The contract's variables, the function's own, and Fn's log-frame ones
        (``[logs] call_frames``)."""
        env = container_env(self.spec.name, self.spec.memory, self.spec.env)
        if self.logs.settings.call_frames:
            env.update(LOGFRAME_ENV)
        return env

    async def start(
        self, c: HotContainer, nursery: trio.Nursery, on_exit: Callable[[HotContainer], None]
    ) -> None:
        """Create and start ``c``, wait for its listener and connect. Raises CallError.

        Its exit watcher and output reader run in ``nursery`` until it is cancelled;
        ``on_exit`` is told when the container exits.
        """
        spec = self.spec
        box = c.box
        assert box is not None
        make_iofs_dir(c.iofs)
        config = container_config(
            spec,
            self.identity,
            stdio=False,
            env=self._env(),
            binds=[f"{c.iofs}:/tmp/iofs"],
        )
        await self.runtime.create(box, config)
        c.log = self.logs.container(spec.name, c.name)
        # Attached before it starts: not a line is lost.
        await nursery.start(self._read_output, c, box)
        await self.runtime.start(box)
        exited = trio.Event()
        nursery.start_soon(self._watch_exit, c, box, exited, on_exit)
        socket_path: Path | None = None
        invalid: ListenerInvalid | None = None
        with trio.move_on_after(spec.start_timeout) as scope:
            async with trio.open_nursery() as race:

                async def listener() -> None:
                    nonlocal socket_path, invalid
                    try:
                        socket_path = await self.transport.wait_ready(c.iofs)
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
                with trio.move_on_after(OUTPUT_GRACE):
                    await c.output_done.wait()
                tail = c.output_tail()
                oom = await self.out_of_memory(c, tail)
                if oom is not None:
                    raise FunctionFailed(
                        f"{oom.message} (the container died before it was ready)",
                        code=oom.code,
                    )
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
        dialer = Dialer(
            partial(self.transport.connect, socket_path, max_response=self.max_response),
            idle=self.transport.connection_idle,
        )
        try:
            await dialer.connect()
        except FnProtocolError as e:
            raise FunctionFailed(
                f"function {spec.name!r}: cannot connect to its listener: {e}", code="start_failed"
            ) from e
        c.conn = dialer
        nursery.start_soon(dialer.run)

    async def _watch_exit(
        self,
        c: HotContainer,
        box: Box,
        exited: trio.Event,
        on_exit: Callable[[HotContainer], None],
    ) -> None:
        retry = WAIT_RETRY_FIRST
        while True:
            try:
                c.exit_code = await self.runtime.wait(box)
                break
            except CallError as e:
                if e.code != "docker_unavailable":
                    log.warning(
                        "fn=%s container %s: lost track of it: %s", self.spec.name, c.name, e
                    )
                    break
                # Docker is down, not the container: it runs on (containerd keeps
                # it) and serves calls while its socket answers. Ask again until
                # Docker is back and says whether it still runs.
                if retry == WAIT_RETRY_FIRST:
                    log.warning(
                        "fn=%s container %s: Docker stopped answering (%s); it keeps serving "
                        "while its socket answers",
                        self.spec.name,
                        c.name,
                        e.message,
                    )
                await trio.sleep(retry)
                retry = min(retry * 2, WAIT_RETRY_MAX)
        exited.set()
        c.exited.set()
        on_exit(c)

    async def _read_output(
        self,
        c: HotContainer,
        box: Box,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Read the container's stdout and stderr until it exits, one batch of
        frames per read, into the function's log."""
        output = c.log
        assert output is not None
        started = False
        try:
            async with self.runtime.attach(box) as stream:
                task_status.started()
                started = True
                feed = output.feed
                while (frames := await stream.read_batch()) is not None:
                    feed(frames)
        except CallError as e:
            if not started:
                raise
            log.debug("fn=%s container %s: output stream ended: %s", self.spec.name, c.name, e)
        finally:
            output.close()
            c.output_done.set()

    async def out_of_memory(self, c: HotContainer, tail: str) -> CallError | None:
        """The caller's ``out_of_memory`` error if ``c`` (which has exited) was
        OOM-killed, else None. Never raises."""
        if c.box is None or c.exit_code is None:
            return None
        try:
            with trio.move_on_after(OOM_CHECK_TIMEOUT):
                oom = await self.runtime.oom_killed(c.box)
        except CallError:
            oom = False
        if not oom:
            # Exit 137 alone is no proof: `docker kill` and Kiln's own kills give it too.
            return None
        return exit_outcome(self.spec, ExitInfo(c.exit_code, oom, tail))

    async def why_lost(
        self, c: HotContainer, error: CallError, call: str | None = None
    ) -> CallError:
        """A call's connection broke: if the container died of its memory limit, say
        so (``out_of_memory``, "raise `memory`"), else keep ``error``. Waits a moment
        for Docker to report the exit. Never raises."""
        with trio.move_on_after(EXIT_REPORT_WAIT):
            await c.exited.wait()
        if not c.exited.is_set():
            return error
        return await self.out_of_memory(c, c.output_tail(call)) or error

    async def kill(self, c: HotContainer) -> None:
        """Kill a broken container (shielded, bounded, never raises): the caller and the
        next call never meet it again."""
        if c.box is not None:
            await self.runtime.kill(c.box)
