"""A Kiln daemon wired to the fake Docker engine, for unit tests.

The parts are built by :meth:`kiln.wiring.Daemon.build`, exactly as
:mod:`kiln.main` builds them; only Docker (the fake engine) and the
connection to hot containers (the fake's transport) differ.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio

from kiln.admission.hostmem import HostResources
from kiln.admission.memory import MemoryBudget
from kiln.api.control import ControlApp
from kiln.api.operations import Operations
from kiln.asyncq.clock import WallClock
from kiln.asyncq.store import Store
from kiln.calls.lifecycle import Calls
from kiln.config import AsyncConfig, Config, DaemonConfig, LimitsConfig, LogsConfig, parse
from kiln.containers.janitor import Janitor
from kiln.containers.spec import Identity
from kiln.docker import Docker
from kiln.functions.registry import FunctionRegistry
from kiln.functions.spec import FunctionSpec
from kiln.functions.store import FunctionStore
from kiln.hot.supervisors import Supervisors
from kiln.http.asgi import ASGIApp
from kiln.metrics import Metrics
from kiln.units import GiB
from kiln.wiring import Daemon
from tests.fakedocker import FakeDocker, FakeTransport


def functions(**tables: Mapping[str, object]) -> dict[str, FunctionSpec]:
    return dict(parse({"functions": dict(tables)}).functions)


@dataclass
class Stack:
    """A running daemon on the fake engine; ``drain_requested`` is set by a drain."""

    fake: FakeDocker
    daemon: Daemon
    drain_requested: trio.Event
    state_dir: Path

    @property
    def docker(self) -> Docker:
        return self.daemon.docker

    @property
    def memory(self) -> MemoryBudget:
        return self.daemon.memory

    @property
    def janitor(self) -> Janitor:
        return self.daemon.janitor

    @property
    def calls(self) -> Calls:
        return self.daemon.calls

    @property
    def registry(self) -> FunctionRegistry:
        return self.daemon.registry

    @property
    def supervisors(self) -> Supervisors:
        return self.daemon.supervisors

    @property
    def operations(self) -> Operations:
        return self.daemon.operations

    @property
    def metrics(self) -> Metrics:
        return self.daemon.metrics

    @property
    def app(self) -> ASGIApp:
        return self.daemon.invoke_app

    @property
    def control(self) -> ControlApp:
        return self.daemon.control_app


def kiln_tasks() -> list[str]:
    """Names of running tasks whose code is Kiln's (the fake's and the test's excluded)."""
    out: list[str] = []

    def walk(task: trio.lowlevel.Task) -> None:
        code = getattr(task.coro, "cr_code", None)
        if code is not None and "/daemon/kiln/" in code.co_filename:
            out.append(task.name)
        for nursery in task.child_nurseries:
            for child in nursery.child_tasks:
                walk(child)

    root = trio.lowlevel.current_root_task()
    assert root is not None
    walk(root)
    return out


@asynccontextmanager
async def stack(
    fns: Mapping[str, FunctionSpec],
    *,
    max_body: int = 1 << 20,
    max_response: int = 1 << 20,
    docker_timeout: float = 30.0,
    capacity: int = 4 * GiB,
    queue_max: int = 100,
    queue_wait: float = 10.0,
    config_source: str = "<harness>",
    host: HostResources | None = None,
    async_store: Store | None = None,
    async_config: AsyncConfig | None = None,
    async_fraction: float = 0.5,
    logs: LogsConfig | None = None,
) -> AsyncIterator[Stack]:
    """Build and run a daemon on the fake engine with functions ``fns`` (as if from
    the config file at ``config_source``); its state and run dirs are temporary."""
    with tempfile.TemporaryDirectory(prefix="kiln-test-") as tmp:
        root = Path(tmp)
        config = Config(
            daemon=DaemonConfig(
                max_body=max_body,
                max_response=max_response,
                state_dir=str(root / "state"),
                run_dir=str(root / "run"),
            ),
            limits=LimitsConfig(
                queue_max=queue_max, queue_wait=queue_wait, async_fraction=async_fraction
            ),
            async_=async_config or AsyncConfig(),
            logs=logs or LogsConfig(),
            functions=dict(fns),
            source=config_source,
        )
        drain_requested = trio.Event()
        metrics = Metrics()
        async with (
            FakeDocker() as fake,
            Docker(
                timeout=docker_timeout,
                observer=metrics.observe_docker,
                **fake.client_kwargs(),
            ) as docker,
        ):
            store = FunctionStore(config.daemon.state_dir)
            daemon = Daemon.build(
                config,
                docker=docker,
                identity=Identity("test"),
                functions={**fns, **store.load()},
                store=store,
                capacity=capacity,
                on_drain=drain_requested.set,
                metrics=metrics,
                transport=FakeTransport(fake),
                host=host,
                async_store=async_store,
                async_clock=WallClock(1_000_000.0) if async_store is not None else None,
            )
            async with trio.open_nursery() as nursery:
                await nursery.start(daemon.run)
                yield Stack(fake, daemon, drain_requested, root / "state")
                nursery.cancel_scope.cancel()
