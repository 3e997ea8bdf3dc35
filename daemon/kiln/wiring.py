"""The daemon's parts, built and connected in one place.

:meth:`Daemon.build` makes every long-lived component from the config and a
Docker client and connects them; :meth:`Daemon.run` runs the two that own
tasks (the janitor and the supervisors). :mod:`kiln.main` adds what only a real
daemon has (signals, listeners, the control socket, the drain); the tests'
harness builds the same daemon on the fake Docker engine.

::

    FunctionRegistry ── the function table (spec, rate limiter, supervisor)
    Calls ───────────── one call's lifecycle; uses the registry, StdioRunner, MemoryBudget
    Supervisors ─────── one hot supervisor per http-stream function (memory's evictor)
    Operations ──────── deploy / remove / scale / reload / drain, /status
    InvokeApp, ControlApp ── HTTP in front of Calls and Operations
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import trio

from kiln.admission.hostmem import HostResources
from kiln.admission.memory import MemoryBudget
from kiln.admission.ratelimit import DockerLimiter
from kiln.api.control import ControlApp
from kiln.api.invoke import InvokeApp
from kiln.api.operations import Operations
from kiln.calls.lifecycle import Calls
from kiln.calls.stdio import StdioRunner
from kiln.config import Config
from kiln.containers.janitor import Janitor
from kiln.containers.spec import Identity
from kiln.docker import DockerClient
from kiln.functions.registry import FunctionRegistry
from kiln.functions.spec import FunctionSpec
from kiln.functions.store import FunctionStore
from kiln.hot.supervisors import Supervisors
from kiln.hot.transport import ListenerTransport, UnixTransport
from kiln.metrics import Metrics


@dataclass
class Daemon:
    """Every long-lived part of one running daemon."""

    config: Config
    docker: DockerClient
    identity: Identity
    memory: MemoryBudget
    janitor: Janitor
    supervisors: Supervisors
    registry: FunctionRegistry
    calls: Calls
    operations: Operations
    metrics: Metrics
    invoke_app: InvokeApp
    control_app: ControlApp

    @classmethod
    def build(
        cls,
        config: Config,
        *,
        docker: DockerClient,
        identity: Identity,
        functions: Mapping[str, FunctionSpec],
        store: FunctionStore,
        capacity: int,
        on_drain: Callable[[], None],
        metrics: Metrics | None = None,
        limiter: DockerLimiter | None = None,
        host: HostResources | None = None,
        transport: ListenerTransport | None = None,
    ) -> Daemon:
        """Wire the parts; nothing runs until :meth:`run`. ``functions`` is the
        table to start with (the config's merged with the deployed ones);
        ``transport`` replaces the Unix-socket connection to hot containers."""
        metrics = metrics or Metrics()
        limits = config.limits
        memory = MemoryBudget(
            capacity,
            queue_max=limits.queue_max,
            queue_wait=limits.queue_wait,
            async_fraction=limits.async_fraction,
        )
        janitor = Janitor(docker)
        supervisors = Supervisors(
            janitor=janitor,
            docker=docker,
            memory=memory,
            identity=identity,
            iofs_root=Path(config.daemon.run_dir) / "iofs" / identity.instance,
            queue_max=limits.queue_max,
            queue_wait=limits.queue_wait,
            transport=transport or UnixTransport(connection_idle=config.daemon.hot_connection_idle),
        )
        memory.evictor = supervisors
        registry = FunctionRegistry(functions, supervisors)
        stdio = StdioRunner(
            docker, identity, max_response=config.daemon.max_response, janitor=janitor
        )
        calls = Calls(registry=registry, stdio=stdio, memory=memory, metrics=metrics)
        operations = Operations(
            config=config,
            registry=registry,
            calls=calls,
            supervisors=supervisors,
            memory=memory,
            docker=docker,
            store=store,
            janitor=janitor,
            capacity=capacity,
            host=host,
            on_drain=on_drain,
        )
        metrics.attach(
            memory=memory,
            supervisors=supervisors,
            limiter=limiter,
            calls=calls,
            registry=registry,
            janitor=janitor,
            host=host,
        )
        return cls(
            config=config,
            docker=docker,
            identity=identity,
            memory=memory,
            janitor=janitor,
            supervisors=supervisors,
            registry=registry,
            calls=calls,
            operations=operations,
            metrics=metrics,
            invoke_app=InvokeApp(calls, max_body=config.daemon.max_body, metrics=metrics),
            control_app=ControlApp(operations),
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the janitor and the supervisors (which prewarm ``min_warm``
        containers) until cancelled; cancelling removes every container."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.janitor.run)
            await nursery.start(self.supervisors.run, self.registry.specs())
            task_status.started()
