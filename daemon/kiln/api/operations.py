"""What operators can do to a running daemon: deploy, remove, scale, reload, drain,
and what they can ask it (status, functions, containers).

The control API (and SIGHUP) call these. Changes go to the function registry
(which starts, rolls over and retires supervisors) and to the persisted store,
one change at a time.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from kiln import __version__
from kiln.admission.hostmem import HostResources
from kiln.admission.memory import MemoryBudget
from kiln.calls.errors import CallError
from kiln.calls.lifecycle import Calls
from kiln.config import Config, ConfigError, load
from kiln.containers.janitor import Janitor
from kiln.docker import Docker, DockerError, DockerNotFound
from kiln.functions.policy import HostPolicy
from kiln.functions.registry import FunctionRegistry
from kiln.functions.spec import FunctionSpec
from kiln.functions.store import FunctionStore
from kiln.hot.supervisors import Supervisors
from kiln.units import format_size

if TYPE_CHECKING:
    from kiln.asyncq.queue import AsyncQueue

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
        registry: FunctionRegistry,
        calls: Calls,
        supervisors: Supervisors,
        memory: MemoryBudget,
        docker: Docker,
        store: FunctionStore,
        capacity: int,
        on_drain: Callable[[], None],
        janitor: Janitor | None = None,
        host: HostResources | None = None,
        policy: HostPolicy | None = None,
    ) -> None:
        self.config = config
        self.registry = registry
        self.calls = calls
        self.supervisors = supervisors
        self.memory = memory
        self.docker = docker
        self.store = store
        self.capacity = capacity
        self.policy = policy or HostPolicy(capacity, networks=config.limits.networks)
        self.on_drain = on_drain
        self.janitor = janitor
        self.host = host
        self.started_at = trio.current_time()
        self._lock = trio.Lock()  # one change at a time
        #: The async queue, when enabled (its figures go into /status).
        self.asyncq: AsyncQueue | None = None

    # ---- queries -------------------------------------------------------------

    def spec(self, name: str) -> FunctionSpec:
        """The spec of ``name``; raises 404 ``unknown_function``."""
        return self.registry.spec(name)

    def function_info(self, name: str) -> dict[str, Any]:
        spec = self.spec(name)
        supervisor = self.registry.supervisor(name)
        rate = self.registry.get(name).rate
        return {
            "name": name,
            "spec": spec.to_json(),
            "source": "deployed" if name in self.store.names() else "config",
            "containers": [dataclasses.asdict(c) for c in supervisor.containers()]
            if supervisor
            else [],
            "stats": dataclasses.asdict(supervisor.statistics()) if supervisor else None,
            "rate": dataclasses.asdict(rate.statistics()) if rate else None,
        }

    def functions(self) -> list[dict[str, Any]]:
        out = []
        for name, spec in sorted(self.registry.specs().items()):
            supervisor = self.registry.supervisor(name)
            stats = supervisor.statistics() if supervisor else None
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
        for name, supervisor in sorted(self.supervisors.by_name.items()):
            for c in supervisor.containers():
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
                await self.docker.ping(timeout=2)
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
            "functions": len(self.registry),
            "calls_in_flight": self.calls.inflight,
            "docker": {
                "socket": self.docker.socket_path or self.docker.url,
                "reachable": reachable,
            },
            "draining": self.calls.draining,
            "janitor_pending": self.janitor.pending if self.janitor else 0,
            "restart_backoff": {
                st.function: {
                    "consecutive_failures": st.consecutive_failures,
                    "restart_in": round(st.restart_in, 1),
                }
                for st in self.supervisors.statistics()
                if st.consecutive_failures
            },
            "janitor": dataclasses.asdict(self.janitor.statistics()) if self.janitor else None,
            "rate_limits": {
                name: dataclasses.asdict(stats)
                for name, stats in self.registry.rate_statistics().items()
            },
            "host": (
                {"cpus": self.host.cpus, "cpu_source": self.host.cpu_source} if self.host else None
            ),
            "async": self.asyncq.status() if self.asyncq is not None else None,
        }

    # ---- changes -------------------------------------------------------------

    def _check_fits(self, spec: FunctionSpec) -> None:
        problem = self.policy.problem(spec)
        if problem is not None:
            raise BadRequest(problem, code="bad_spec")

    async def deploy(self, spec: FunctionSpec) -> None:
        """Deploy or update a function; persisted, so it survives a restart."""
        self._check_fits(spec)
        async with self._lock:
            previous = self.store.read_bytes(spec.name)
            self.store.save(spec)
            try:
                await self.registry.apply(spec)
            except BaseException:
                # Refused or interrupted: the store keeps what it had before.
                self.store.restore(spec.name, previous)
                raise
        log.info("deployed function %s (%s, %s)", spec.name, spec.image, format_size(spec.memory))

    async def image_warning(self, spec: FunctionSpec) -> str | None:
        """Why ``spec``'s first call would fail for want of its image, or None.

        Kiln never pulls: an image that is not on this host is worth a warning at
        deploy time. When Docker cannot tell (down, slow), say nothing.
        """
        try:
            with trio.move_on_after(5):
                await self.docker.images.inspect(spec.image)
        except DockerNotFound:
            return (
                f"image {spec.image!r} is not on this host: Kiln never pulls, so calls of "
                f"{spec.name!r} fail until it is there (docker pull / docker load it)"
            )
        except DockerError:
            pass
        return None

    async def remove(self, name: str) -> None:
        self.spec(name)
        async with self._lock:
            self.store.delete(name)
            self.registry.retire(name, "removed")
        log.info("removed function %s", name)

    async def scale(
        self, name: str, *, min_warm: int | None, max_containers: int | None
    ) -> FunctionSpec:
        self.spec(name)
        async with self._lock:
            try:
                new = self.registry.rescale(name, min_warm=min_warm, max_containers=max_containers)
            except ConfigError as e:
                raise BadRequest(f"scale: {e}", code="bad_spec") from e
            if new.name in self.store.names():
                self.store.save(new)
        log.info("scaled %s: min_warm=%d max_containers=%d", name, new.min_warm, new.max_containers)
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
            for section in ("daemon", "docker", "limits", "logs", "metrics")
            if getattr(config, section) != getattr(self.config, section)
        ]
        async with self._lock:
            current = self.registry.specs()
            added = [n for n in merged if n not in current]
            changed = [n for n in merged if n in current and merged[n] != current[n]]
            removed = [n for n in current if n not in merged]
            for name in removed:
                self.registry.retire(name, "removed from the config")
            for name in added + changed:
                await self.registry.apply(merged[name])
            self.config = dataclasses.replace(self.config, functions=config.functions)
        if ignored:
            log.warning("reload: changes to [%s] need a restart; ignored", "], [".join(ignored))
        log.info(
            "reloaded %s: added %s, changed %s, removed %s", config.source, added, changed, removed
        )
        return ReloadResult(sorted(added), sorted(changed), sorted(removed), ignored)

    def drain(self) -> None:
        self.on_drain()
