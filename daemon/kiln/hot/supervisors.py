"""The supervisors nursery: one :class:`~kiln.hot.supervisor.Supervisor` per hot function.

It is also the memory budget's *evictor*: asked for idle containers of other
functions, it offers every supervisor's idle containers (the budget picks the
oldest idle first and evicts only if that covers its shortfall).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import trio

from kiln.admission.memory import EvictionCandidate, MemoryBudget
from kiln.containers.runtime import ContainerRuntime
from kiln.containers.spec import Identity
from kiln.functions.spec import FunctionSpec
from kiln.hot.report import SupervisorStatistics
from kiln.hot.supervisor import Supervisor
from kiln.hot.transport import ListenerTransport
from kiln.logs.service import Logs

log = logging.getLogger("kiln.hot")


def _make_root(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True, mode=0o711)


class Supervisors:
    def __init__(
        self,
        *,
        runtime: ContainerRuntime,
        memory: MemoryBudget,
        identity: Identity,
        iofs_root: Path,
        max_response: int,
        queue_max: int,
        queue_wait: float,
        transport: ListenerTransport | None = None,
        logs: Logs | None = None,
    ) -> None:
        self.transport = transport
        self.logs = logs
        self.runtime = runtime
        self.memory = memory
        self.identity = identity
        self.iofs_root = iofs_root
        self.max_response = max_response
        self.queue_max = queue_max
        self.queue_wait = queue_wait
        self.by_name: dict[str, Supervisor] = {}
        self._scopes: dict[str, trio.CancelScope] = {}
        self._nursery: trio.Nursery | None = None

    async def run(
        self,
        functions: Mapping[str, FunctionSpec],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Start a supervisor per hot function; run until cancelled (then every container goes)."""
        _make_root(self.iofs_root)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for spec in functions.values():
                    if spec.format == "http-stream":
                        await self.add(spec)
                task_status.started()
                await trio.sleep_forever()
        finally:
            shutil.rmtree(self.iofs_root, ignore_errors=True)

    async def add(self, spec: FunctionSpec) -> Supervisor:
        """Start the supervisor of a hot function (it prewarms ``min_warm`` containers)."""
        assert self._nursery is not None
        supervisor = Supervisor(
            spec,
            runtime=self.runtime,
            memory=self.memory,
            identity=self.identity,
            iofs_root=self.iofs_root,
            max_response=self.max_response,
            queue_max=self.queue_max,
            queue_wait=self.queue_wait,
            transport=self.transport,
            logs=self.logs,
        )
        scope = trio.CancelScope()
        self.by_name[spec.name] = supervisor
        self._scopes[spec.name] = scope

        async def supervise(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with scope:
                await supervisor.run(task_status=task_status)

        await self._nursery.start(supervise, name=f"supervisor {spec.name}")
        return supervisor

    async def replace(self, spec: FunctionSpec) -> None:
        """Roll a function over to a new spec: new calls go to new containers; the old
        supervisor's idle containers retire now and its busy ones after their call."""
        self.remove(spec.name, reason="replaced by a new spec")
        if spec.format == "http-stream":
            await self.add(spec)

    def remove(self, name: str, *, reason: str = "removed") -> None:
        """Retire a function's supervisor; its scope ends once its last container is gone."""
        supervisor = self.by_name.pop(name, None)
        scope = self._scopes.pop(name, None)
        if supervisor is None or scope is None:
            return
        supervisor.retire_all(reason)
        assert self._nursery is not None

        async def stop_when_empty() -> None:
            await supervisor.wait_empty()
            scope.cancel()

        self._nursery.start_soon(stop_when_empty, name=f"retire {name}")

    def get(self, name: str) -> Supervisor | None:
        return self.by_name.get(name)

    def candidates(self, exclude_owner: str) -> Sequence[EvictionCandidate]:
        out: list[EvictionCandidate] = []
        for name, supervisor in self.by_name.items():
            if name != exclude_owner:
                out.extend(supervisor.eviction_candidates())
        return out

    def statistics(self) -> list[SupervisorStatistics]:
        return [s.statistics() for s in self.by_name.values()]
