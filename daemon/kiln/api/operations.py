"""What operators can do to a running daemon: deploy, remove, scale, reload, drain.

The control API (and SIGHUP) call these; they keep the invoker's function
table, the supervisors and the persisted store in step.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import trio

from kiln import __version__
from kiln.admission.memory import MemoryBudget
from kiln.calls.errors import CallError, NotFound
from kiln.calls.lifecycle import Invoker
from kiln.config import Config, ConfigError, load
from kiln.docker import DockerClient, DockerError
from kiln.functions.policy import HostPolicy
from kiln.functions.spec import MAX_CONTAINERS, FunctionSpec
from kiln.functions.store import FunctionStore
from kiln.supervisors import Supervisors
from kiln.units import format_size

log = logging.getLogger("kiln.operations")


class BadRequest(CallError):
    status = 400
    code = "bad_request"


def merge_functions(
    config: Mapping[str, FunctionSpec], deployed: Mapping[str, FunctionSpec]
) -> dict[str, FunctionSpec]:
    """Config file's functions, overridden by those deployed at run time (same name)."""
    return {**config, **deployed}


@dataclass
class ReloadResult:
    added: list[str]
    changed: list[str]
    removed: list[str]
    ignored_sections: list[str]


class Operations:
    def __init__(
        self,
        *,
        config: Config,
        invoker: Invoker,
        supervisors: Supervisors,
        memory: MemoryBudget,
        docker: DockerClient,
        store: FunctionStore,
        capacity: int,
        on_drain: Callable[[], None],
        policy: HostPolicy | None = None,
    ) -> None:
        self.config = config
        self.invoker = invoker
        self.supervisors = supervisors
        self.memory = memory
        self.docker = docker
        self.store = store
        self.capacity = capacity
        self.policy = policy or HostPolicy(capacity, networks=config.limits.networks)
        self.on_drain = on_drain
        self.started_at = trio.current_time()
        self._lock = trio.Lock()  # one change at a time

    # ---- queries -------------------------------------------------------------

    def spec(self, name: str) -> FunctionSpec:
        spec = self.invoker.functions.get(name)
        if spec is None:
            raise NotFound(f"no function named {name!r}", code="unknown_function")
        return spec

    def function_info(self, name: str) -> dict[str, Any]:
        spec = self.spec(name)
        pool = self.supervisors.pool(name)
        return {
            "name": name,
            "spec": spec.to_json(),
            "source": "deployed" if name in self.store.names() else "config",
            "containers": [dataclasses.asdict(c) for c in pool.containers()] if pool else [],
            "stats": dataclasses.asdict(pool.statistics()) if pool else None,
        }

    def functions(self) -> list[dict[str, Any]]:
        out = []
        for name, spec in sorted(self.invoker.functions.items()):
            pool = self.supervisors.pool(name)
            stats = pool.statistics() if pool else None
            out.append(
                {
                    "name": name,
                    "image": spec.image,
                    "format": spec.format,
                    "memory": spec.memory,
                    "min_warm": spec.min_warm,
                    "max_containers": spec.max_containers,
                    "containers": stats.total if stats else 0,
                    "idle": stats.idle if stats else 0,
                    "busy": stats.busy if stats else 0,
                }
            )
        return out

    def containers(self) -> list[dict[str, Any]]:
        out = []
        for name, pool in sorted(self.supervisors.pools.items()):
            for c in pool.containers():
                out.append({"function": name, **dataclasses.asdict(c)})
        return out

    async def status(self) -> dict[str, Any]:
        m = self.memory.statistics()
        by_state: dict[str, int] = {}
        for c in self.containers():
            by_state[c["state"]] = by_state.get(c["state"], 0) + 1
        reachable = True
        try:
            with trio.move_on_after(2) as scope:
                await self.docker.ping()
            reachable = not scope.cancelled_caught
        except DockerError:
            reachable = False
        return {
            "version": __version__,
            "uptime": round(trio.current_time() - self.started_at, 1),
            "memory": {
                "total": m.capacity,
                "reserved": m.reserved,
                "free": m.capacity - m.reserved,
                "total_human": format_size(m.capacity),
                "reserved_human": format_size(m.reserved),
            },
            "queue": {"memory_waiting": m.waiting},
            "containers": by_state,
            "functions": len(self.invoker.functions),
            "docker": {"socket": self.docker.socket_path, "reachable": reachable},
            "draining": self.invoker.draining,
            "janitor_pending": self.invoker.janitor.pending if self.invoker.janitor else 0,
        }

    # ---- changes -------------------------------------------------------------

    def _check_fits(self, spec: FunctionSpec) -> None:
        problem = self.policy.problem(spec)
        if problem is not None:
            raise BadRequest(problem, code="bad_spec")

    async def _apply(self, spec: FunctionSpec) -> None:
        old = self.invoker.functions.get(spec.name)
        self.invoker.functions[spec.name] = spec
        self.invoker.set_rate(spec)
        if old == spec:
            return
        if old is not None and (old.format == "http-stream" or spec.format == "http-stream"):
            await self.supervisors.replace(spec)
        elif old is None and spec.format == "http-stream":
            await self.supervisors.add(spec)

    def _retire(self, name: str, reason: str) -> None:
        self.invoker.functions.pop(name, None)
        self.invoker.rates.pop(name, None)
        self.supervisors.remove(name, reason=reason)

    async def deploy(self, spec: FunctionSpec) -> None:
        """Deploy or update a function; persisted, so it survives a restart."""
        self._check_fits(spec)
        async with self._lock:
            previous = self.store.read_bytes(spec.name)
            self.store.save(spec)
            try:
                await self._apply(spec)
            except BaseException:
                # Refused or interrupted: the store keeps what it had before.
                self.store.restore(spec.name, previous)
                raise
        log.info("deployed function %s (%s, %s)", spec.name, spec.image, format_size(spec.memory))

    async def remove(self, name: str) -> None:
        self.spec(name)
        async with self._lock:
            self.store.delete(name)
            self._retire(name, "removed")
        log.info("removed function %s", name)

    async def scale(
        self, name: str, *, min_warm: int | None, max_containers: int | None
    ) -> FunctionSpec:
        spec = self.spec(name)
        new_min = spec.min_warm if min_warm is None else min_warm
        new_max = spec.max_containers if max_containers is None else max_containers
        if new_min < 0:
            raise BadRequest(f"min_warm must be at least 0, got {new_min}", code="bad_spec")
        if new_max < 1:
            raise BadRequest(f"max_containers must be at least 1, got {new_max}", code="bad_spec")
        if new_max > MAX_CONTAINERS:
            raise BadRequest(
                f"max_containers must be at most {MAX_CONTAINERS}, got {new_max}", code="bad_spec"
            )
        if new_min > new_max:
            raise BadRequest(
                f"min_warm ({new_min}) must not exceed max_containers ({new_max})", code="bad_spec"
            )
        new = dataclasses.replace(spec, min_warm=new_min, max_containers=new_max)
        async with self._lock:
            if new.name in self.store.names():
                self.store.save(new)
            self.invoker.functions[name] = new
            pool = self.supervisors.pool(name)
            if pool is not None:
                pool.rescale(new_min, new_max)
        log.info("scaled %s: min_warm=%d max_containers=%d", name, new_min, new_max)
        return new

    async def reload(self) -> ReloadResult:
        """Re-read the config file and apply its functions. A bad file changes nothing."""
        try:
            config = load(self.config.source)
        except ConfigError as e:
            raise BadRequest(
                f"config not reloaded, the running one stays: {e}", code="bad_config"
            ) from e
        merged = merge_functions(config.functions, self.store.load(self.policy.problem))
        for spec in config.functions.values():
            try:
                self._check_fits(spec)
            except BadRequest as e:
                raise BadRequest(
                    f"config not reloaded, the running one stays: {e.message}", code="bad_config"
                ) from e
        ignored = [
            section
            for section in ("daemon", "docker", "limits")
            if getattr(config, section) != getattr(self.config, section)
        ]
        async with self._lock:
            current = dict(self.invoker.functions)
            added = [n for n in merged if n not in current]
            changed = [n for n in merged if n in current and merged[n] != current[n]]
            removed = [n for n in current if n not in merged]
            for name in removed:
                self._retire(name, "removed from the config")
            for name in added + changed:
                await self._apply(merged[name])
            self.config = dataclasses.replace(self.config, functions=config.functions)
        if ignored:
            log.warning("reload: changes to [%s] need a restart; ignored", "], [".join(ignored))
        log.info(
            "reloaded %s: added %s, changed %s, removed %s", config.source, added, changed, removed
        )
        return ReloadResult(sorted(added), sorted(changed), sorted(removed), ignored)

    def drain(self) -> None:
        self.on_drain()
