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
    Logs ────────────── what functions write: rings, mirror, journald, followers
    Tokens ──────────── bearer tokens of the invoke API (auth = "token")
    InvokeApp, ControlApp ── HTTP in front of Calls and Operations (the invoke
                             app behind AccessGate: tokens and CORS)
    AsyncQueue, Dispatcher ── async calls: the durable queue and what runs it (kiln.asyncq)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import trio

from kiln.admission.hostmem import HostResources
from kiln.admission.memory import MemoryBudget
from kiln.admission.ratelimit import DockerLimiter
from kiln.api.access import AccessGate
from kiln.api.auth import Tokens, tokens_path
from kiln.api.control import ControlApp
from kiln.api.invoke import InvokeApp
from kiln.api.operations import Operations
from kiln.asyncq.clock import WallClock
from kiln.asyncq.dispatcher import Dispatcher
from kiln.asyncq.http import CallsRoutes
from kiln.asyncq.queue import AsyncQueue, default_host
from kiln.asyncq.store import Store
from kiln.calls.lifecycle import Calls
from kiln.calls.stdio import StdioRunner
from kiln.config import Config, LogsConfig
from kiln.containers.janitor import Janitor
from kiln.containers.runtime import ContainerRuntime
from kiln.containers.spec import Identity
from kiln.docker import Docker
from kiln.functions.policy import HostPolicy
from kiln.functions.registry import FunctionRegistry
from kiln.functions.spec import FunctionSpec
from kiln.functions.store import FunctionStore
from kiln.hot.supervisors import Supervisors
from kiln.hot.transport import ListenerTransport, UnixTransport
from kiln.http.asgi import ASGIApp
from kiln.logs.service import Logs, LogSettings
from kiln.metrics import Metrics


def log_settings(logs: LogsConfig, state_dir: str) -> LogSettings:
    return LogSettings(
        lines_per_function=logs.lines_per_function,
        bytes_per_function=logs.bytes_per_function,
        max_line=logs.max_line,
        rate=logs.rate,
        burst=logs.burst,
        mirror_dir=(logs.dir or str(Path(state_dir) / "logs")) if logs.mirror else None,
        file_size=logs.file_size,
        file_count=logs.file_count,
        call_frames=logs.call_frames,
    )


@dataclass
class Daemon:
    """Every long-lived part of one running daemon."""

    config: Config
    docker: Docker
    identity: Identity
    memory: MemoryBudget
    janitor: Janitor
    supervisors: Supervisors
    registry: FunctionRegistry
    calls: Calls
    operations: Operations
    metrics: Metrics
    logs: Logs
    tokens: Tokens | None
    invoke_app: ASGIApp
    control_app: ControlApp
    asyncq: AsyncQueue | None = None
    dispatcher: Dispatcher | None = None

    @classmethod
    def build(
        cls,
        config: Config,
        *,
        docker: Docker,
        identity: Identity,
        functions: Mapping[str, FunctionSpec],
        store: FunctionStore,
        capacity: int,
        on_drain: Callable[[], None],
        metrics: Metrics | None = None,
        limiter: DockerLimiter | None = None,
        host: HostResources | None = None,
        transport: ListenerTransport | None = None,
        policy: HostPolicy | None = None,
        logs: Logs | None = None,
        async_store: Store | None = None,
        async_clock: WallClock | None = None,
    ) -> Daemon:
        """Wire the parts; nothing runs until :meth:`run`. ``functions`` is the
        table to start with (the config's merged with the deployed ones);
        ``transport`` replaces the Unix-socket connection to hot containers;
        ``async_store`` (opened by the caller: opening may block) enables async calls."""
        metrics = metrics or Metrics(per_function=config.metrics.per_function)
        logs = logs or Logs(log_settings(config.logs, config.daemon.state_dir))
        tokens = (
            Tokens(tokens_path(config.daemon.state_dir)) if config.daemon.auth == "token" else None
        )
        limits = config.limits
        memory = MemoryBudget(
            capacity,
            queue_max=limits.queue_max,
            queue_wait=limits.queue_wait,
            async_fraction=limits.async_fraction,
        )
        janitor = Janitor(docker)
        runtime = ContainerRuntime(docker, janitor=janitor, log_driver=config.logs.docker_driver)
        supervisors = Supervisors(
            runtime=runtime,
            memory=memory,
            identity=identity,
            iofs_root=Path(config.daemon.run_dir) / "iofs" / identity.instance,
            max_response=config.daemon.max_response,
            queue_max=limits.queue_max,
            queue_wait=limits.queue_wait,
            transport=transport or UnixTransport(connection_idle=config.daemon.hot_connection_idle),
            logs=logs,
        )
        memory.evictor = supervisors
        registry = FunctionRegistry(functions, supervisors)
        registry.on_retired.append(logs.forget)
        registry.on_retired.append(metrics.forget)
        stdio = StdioRunner(runtime, identity, max_response=config.daemon.max_response, logs=logs)
        calls = Calls(registry=registry, stdio=stdio, memory=memory, metrics=metrics, logs=logs)
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
            policy=policy,
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
        metrics.attach_logs(logs)
        invoke_app = InvokeApp(calls, max_body=config.daemon.max_body, metrics=metrics)
        control_app = ControlApp(operations, logs=logs, tokens=tokens)
        asyncq: AsyncQueue | None = None
        dispatcher: Dispatcher | None = None
        if async_store is not None:
            asyncq = AsyncQueue(
                async_store,
                host=default_host(config),
                queue_max=config.async_.queue_max,
                retention=config.async_.retention,
                dsn=config.async_.store if async_store.shared else None,
                clock=async_clock,
                observer=metrics.observe_async_store,
            )
            dispatcher = Dispatcher(
                asyncq,
                calls,
                registry.specs,
                async_capacity=memory.statistics().async_capacity,
                queue_wait=limits.queue_wait,
                max_response=config.daemon.max_response,
                lease_margin=config.async_.lease_margin,
            )
            invoke_app.calls_routes = CallsRoutes(
                asyncq, registry.__contains__, max_body=config.daemon.max_body
            )
            control_app.calls_routes = CallsRoutes(
                asyncq, registry.__contains__, max_body=config.daemon.max_body, listing=True
            )
            operations.asyncq = asyncq
            metrics.attach_async(asyncq, dispatcher)
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
            logs=logs,
            tokens=tokens,
            invoke_app=AccessGate(
                invoke_app,
                tokens=tokens,
                metrics_need_token=config.metrics.require_token,
                origins=lambda name: cors_origins(registry, name),
            ),
            control_app=control_app,
            asyncq=asyncq,
            dispatcher=dispatcher,
        )

    def close(self) -> None:
        self.logs.close()

    def drain(self) -> None:
        """Stop taking calls (sync and async); calls in flight go on."""
        self.calls.drain()
        if self.asyncq is not None:
            self.asyncq.accepting = False
        if self.dispatcher is not None:
            self.dispatcher.stop()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the janitor, the supervisors (which prewarm ``min_warm``
        containers) and the async dispatcher until cancelled; cancelling removes
        every container and puts running async calls back in the queue."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.janitor.run)
            await nursery.start(self.supervisors.run, self.registry.specs())
            if self.dispatcher is not None:
                await nursery.start(self.dispatcher.run)
            task_status.started()


def cors_origins(registry: FunctionRegistry, name: str) -> tuple[str, ...]:
    return registry.spec(name).cors_origins if name in registry else ()
