"""One hot container's life in Docker: create, start, ready, output, exit, kill, remove.

Its output (stdout and stderr) is read once, from the attach stream opened
before the container starts, and goes to the function's log
(:mod:`kiln.logs`); the containers log to Docker's ``none`` driver, so dockerd
keeps no copy.

:class:`HotContainer` is what a supervisor holds for one container (its
scheduling state lives in :mod:`kiln.hot.scheduler`); :class:`Launcher` does
the Docker and socket I/O for it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from kiln.admission.memory import Reservation
from kiln.calls.errors import CallTimeout, FunctionFailed, docker_call_error
from kiln.calls.stdio import remove_container
from kiln.containers.janitor import Janitor
from kiln.containers.spec import Identity, container_config
from kiln.docker import DockerClient, DockerError
from kiln.fncontract import container_env
from kiln.functions.spec import FunctionSpec
from kiln.hot.httpstream import FnProtocolError
from kiln.hot.readiness import ListenerInvalid
from kiln.hot.transport import HotConnection, ListenerTransport
from kiln.logs.service import FRAME_NAME, ContainerLog, Logs

log = logging.getLogger("kiln.hot")

#: How long killing a broken container may take before the call answers anyway.
KILL_TIMEOUT = 10.0
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
    created_at: float = 0.0
    cid: str | None = None
    create_sent: bool = False
    ready_at: float = 0.0
    calls: int = 0
    current_call: str | None = None
    conn: HotConnection | None = None
    reservation: Reservation | None = None
    exit_code: int | None = None
    log: ContainerLog | None = None
    output_done: trio.Event = field(default_factory=trio.Event)
    retire: trio.Event = field(default_factory=trio.Event)
    retire_reason: str = ""
    idle_deadline: float = math.inf
    _idle_scope: trio.CancelScope | None = None

    def begin_call(self, call_id: str) -> None:
        self.current_call = call_id
        if self.log is not None:
            self.log.begin_call(call_id)

    def end_call(self) -> None:
        self.current_call = None
        if self.log is not None:
            self.log.end_call()

    def output_tail(self) -> str:
        """The last lines this container wrote (for error messages)."""
        return self.log.tail_text() if self.log is not None else ""

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
    """The Docker side of one function's hot containers."""

    def __init__(
        self,
        spec: FunctionSpec,
        *,
        docker: DockerClient,
        identity: Identity,
        transport: ListenerTransport,
        janitor: Janitor | None,
        logs: Logs | None = None,
    ) -> None:
        self.spec = spec
        self.docker = docker
        self.identity = identity
        self.transport = transport
        self.janitor = janitor
        self.logs = logs or Logs()

    async def start(
        self,
        c: HotContainer,
        iofs: Path,
        nursery: trio.Nursery,
        on_exit: Callable[[HotContainer], None],
    ) -> None:
        """Create and start ``c``, wait for its listener and connect. Raises CallError.

        Its exit watcher and output reader run in ``nursery`` until it is cancelled;
        ``on_exit`` is told when the container exits.
        """
        spec = self.spec
        make_iofs_dir(iofs)
        config = container_config(
            spec,
            self.identity,
            stdio=False,
            env={**container_env(spec.name, spec.memory, spec.env), **LOGFRAME_ENV},
            binds=[f"{iofs}:/tmp/iofs"],
        )
        try:
            c.create_sent = True
            c.cid = await self.docker.create_container(config, name=c.name)
            c.log = self.logs.container(spec.name, c.name)
            # Attached before it starts: not a line is lost.
            await nursery.start(self._read_output, c)
            await self.docker.start(c.cid)
        except DockerError as e:
            raise docker_call_error(e, spec) from e
        exited = trio.Event()
        nursery.start_soon(self._watch_exit, c, exited, on_exit)
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

    async def _watch_exit(
        self, c: HotContainer, exited: trio.Event, on_exit: Callable[[HotContainer], None]
    ) -> None:
        assert c.cid is not None
        try:
            result = await self.docker.wait(c.cid)
            c.exit_code = result.status_code
        except DockerError as e:
            log.warning("fn=%s container %s: lost track of it: %s", self.spec.name, c.name, e)
        exited.set()
        on_exit(c)

    async def _read_output(
        self, c: HotContainer, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Read the container's stdout and stderr until it exits, one batch of
        frames per read, into the function's log."""
        assert c.cid is not None
        assert c.log is not None
        started = False
        try:
            async with self.docker.attach(c.cid) as stream:
                task_status.started()
                started = True
                feed = c.log.feed
                while (frames := await stream.receive()) is not None:
                    feed(frames)
        except DockerError as e:
            if not started:
                raise
            log.debug("fn=%s container %s: output stream ended: %s", self.spec.name, c.name, e)
        finally:
            c.log.close()
            c.output_done.set()

    async def _log_tail(self, c: HotContainer) -> str:
        with trio.move_on_after(OUTPUT_GRACE):
            await c.output_done.wait()
        return c.output_tail()

    async def kill(self, c: HotContainer) -> None:
        """Kill a broken container, shielded and bounded: the caller (and the next call)
        never meets it again. Never raises."""
        if c.cid is None:
            return
        with trio.CancelScope(shield=True), trio.move_on_after(KILL_TIMEOUT):
            try:
                await self.docker.kill(c.cid)
            except DockerError as e:
                log.warning("fn=%s: could not kill %s: %s", self.spec.name, c.name, e)

    async def remove(self, c: HotContainer) -> None:
        """Close the connection and remove the container, shielded. Never raises."""
        with trio.CancelScope(shield=True):
            if c.conn is not None:
                await c.conn.aclose()
            # A create cancelled or timed out after Docker got it may still have made the
            # container: its name is deterministic, so remove it by name.
            target = c.cid or (c.name if c.create_sent else None)
            if target is None:
                return
            await remove_container(self.docker, target, self.spec.name, self.janitor)
