"""The function table: what each function is while the daemon runs.

One owner for it. A :class:`Function` is a spec plus its run-time parts (the
per-function invoke rate limiter); hot functions also have a supervisor, which
:class:`~kiln.hot.supervisors.Supervisors` runs and this registry starts, rolls
over and retires. The call path reads the table; operator actions (deploy,
remove, scale, reload) change it only through :meth:`FunctionRegistry.apply`,
:meth:`~FunctionRegistry.retire` and :meth:`~FunctionRegistry.rescale`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kiln.admission.ratelimit import InvokeRateLimiter, InvokeRateStatistics
from kiln.calls.errors import NotFound
from kiln.functions.spec import FunctionSpec, check_scale

if TYPE_CHECKING:
    from kiln.hot.supervisor import Supervisor
    from kiln.hot.supervisors import Supervisors


def unknown_function(name: str) -> NotFound:
    return NotFound(f"no function named {name!r}", code="unknown_function")


@dataclass(frozen=True)
class Function:
    """One function at run time: its spec and its invoke rate limiter (if it has a rate)."""

    spec: FunctionSpec
    rate: InvokeRateLimiter | None

    @property
    def name(self) -> str:
        return self.spec.name


def _function(spec: FunctionSpec) -> Function:
    rate = None if spec.rate is None else InvokeRateLimiter(spec.rate, name=spec.name)
    return Function(spec, rate)


class FunctionRegistry:
    """The function table. Owns no tasks; hot functions' supervisors run under
    ``supervisors`` (when given; without it, hot functions cannot be called)."""

    def __init__(
        self, specs: Mapping[str, FunctionSpec], supervisors: Supervisors | None = None
    ) -> None:
        self._functions = {name: _function(spec) for name, spec in specs.items()}
        self.supervisors = supervisors
        #: Called with a function's name when it leaves the table (its logs and series go).
        self.on_retired: list[Callable[[str], None]] = []

    # ---- reading -------------------------------------------------------------

    def get(self, name: str) -> Function:
        """The function named ``name``; raises :class:`NotFound` (404 ``unknown_function``)."""
        fn = self._functions.get(name)
        if fn is None:
            raise unknown_function(name)
        return fn

    def spec(self, name: str) -> FunctionSpec:
        return self.get(name).spec

    def specs(self) -> dict[str, FunctionSpec]:
        return {name: fn.spec for name, fn in self._functions.items()}

    def supervisor(self, name: str) -> Supervisor | None:
        """The hot supervisor of ``name``, or None (a stdio function, or none running)."""
        return self.supervisors.get(name) if self.supervisors is not None else None

    def __contains__(self, name: object) -> bool:
        return name in self._functions

    def __iter__(self) -> Iterator[Function]:
        return iter(list(self._functions.values()))

    def __len__(self) -> int:
        return len(self._functions)

    def rate_statistics(self) -> dict[str, InvokeRateStatistics]:
        """The invoke rate limiter figures of every function that has a ``rate``."""
        return {
            name: fn.rate.statistics()
            for name, fn in sorted(self._functions.items())
            if fn.rate is not None
        }

    # ---- changing ------------------------------------------------------------

    async def apply(self, spec: FunctionSpec) -> None:
        """Add ``spec``, or roll its function over to it: new calls see the new spec at
        once; a hot function gets a new supervisor while the old one's containers retire
        (idle ones now, busy ones after their call). Applying an equal spec does nothing."""
        old = self._functions.get(spec.name)
        if old is not None and old.spec == spec:
            return
        self._functions[spec.name] = _function(spec)
        if self.supervisors is None:
            return
        if old is not None and "http-stream" in (old.spec.format, spec.format):
            await self.supervisors.replace(spec)
        elif old is None and spec.format == "http-stream":
            await self.supervisors.add(spec)

    def retire(self, name: str, reason: str) -> None:
        """Remove ``name`` from the table; its hot containers (if any) drain and go."""
        self._functions.pop(name, None)
        if self.supervisors is not None:
            self.supervisors.remove(name, reason=reason)
        for hook in self.on_retired:
            hook(name)

    def rescale(
        self, name: str, *, min_warm: int | None, max_containers: int | None
    ) -> FunctionSpec:
        """Change ``min_warm``/``max_containers`` in place (no rollover). Raises
        :class:`~kiln.functions.validate.ConfigError` for values no spec could have."""
        fn = self.get(name)
        new_min = fn.spec.min_warm if min_warm is None else min_warm
        new_max = fn.spec.max_containers if max_containers is None else max_containers
        check_scale(new_min, new_max, f"functions.{name}")
        new = dataclasses.replace(fn.spec, min_warm=new_min, max_containers=new_max)
        self._functions[name] = Function(new, fn.rate)
        supervisor = self.supervisor(name)
        if supervisor is not None:
            supervisor.rescale(new_min, new_max)
        return new
