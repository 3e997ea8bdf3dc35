"""One hot container's life in Docker: create, start, ready, logs, exit, kill, remove.

:class:`HotContainer` is what a supervisor holds for one container (its
scheduling state lives in :mod:`kiln.hot.scheduler`); :class:`Launcher` does
the Docker and socket I/O for it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import trio

from kiln.admission.memory import Reservation
from kiln.calls.errors import CallTimeout, FunctionFailed, docker_call_error
from kiln.calls.stdio import StderrTail, remove_container
from kiln.containers.janitor import Janitor
from kiln.containers.spec import Identity, container_config
from kiln.docker import STDOUT, DockerClient, DockerError, Frame
from kiln.fncontract import container_env
from kiln.functions.spec import FunctionSpec
from kiln.hot.dialer import Dialer
from kiln.hot.httpstream import FnProtocolError
from kiln.hot.readiness import ListenerInvalid
from kiln.hot.transport import ListenerTransport

log = logging.getLogger("kiln.hot")

#: How long killing a broken container may take before the call answers anyway.
KILL_TIMEOUT = 10.0


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
    conn: Dialer | None = None
    reservation: Reservation | None = None
    exit_code: int | None = None
    exited: trio.Event = field(default_factory=trio.Event)
    #: Output of the call in progress only (``log_tail`` spans the container's life).
    call_tail: StderrTail | None = None
    log_tail: StderrTail = field(default_factory=StderrTail)
    retire: trio.Event = field(default_factory=trio.Event)
    retire_reason: str = ""
    idle_deadline: float = math.inf
    _idle_scope: trio.CancelScope | None = None

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
    ) -> None:
        self.spec = spec
        self.docker = docker
        self.identity = identity
        self.transport = transport
        self.janitor = janitor

    async def start(
        self,
        c: HotContainer,
        iofs: Path,
        nursery: trio.Nursery,
        on_exit: Callable[[HotContainer], None],
    ) -> None:
        """Create and start ``c``, wait for its listener and connect. Raises CallError.

        Its exit watcher and log follower run in ``nursery`` until it is cancelled;
        ``on_exit`` is told when the container exits.
        """
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
        nursery.start_soon(self._watch_exit, c, exited, on_exit)
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
        dialer = Dialer(
            partial(self.transport.connect, socket_path), idle=self.transport.connection_idle
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
        self, c: HotContainer, exited: trio.Event, on_exit: Callable[[HotContainer], None]
    ) -> None:
        assert c.cid is not None
        try:
            result = await self.docker.wait(c.cid)
            c.exit_code = result.status_code
        except DockerError as e:
            log.warning("fn=%s container %s: lost track of it: %s", self.spec.name, c.name, e)
        exited.set()
        c.exited.set()
        on_exit(c)

    async def _follow_logs(self, c: HotContainer) -> None:
        assert c.cid is not None

        def on_frame(frame: Frame) -> None:
            if c.call_tail is not None:
                c.call_tail.feed(frame.data)
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
