"""What this host lets a function have, beyond a well-formed spec.

A spec can be valid on its own and still be one this host will never run: its
memory never fits the pool, it asks for more CPUs than the host has (Docker
refuses the create), or for a network the operator has not allowed. The same
check guards the config file (refused at start and by ``--check``), deploys
(refused, nothing persisted) and persisted specs (skipped at start, logged).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from kiln.functions.spec import FunctionSpec, network_problem, never_fits


def host_cpus() -> int:
    """CPUs this process may run on; Docker refuses a CPU quota above what dockerd sees."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class HostPolicy:
    capacity: int
    networks: tuple[str, ...] = ()
    cpus: int | None = None

    def problem(self, spec: FunctionSpec) -> str | None:
        """Why this host will never run ``spec``, naming the key; or None."""
        return (
            network_problem(spec, self.networks)
            or never_fits(spec, self.capacity)
            or self._cpus_problem(spec)
        )

    def _cpus_problem(self, spec: FunctionSpec) -> str | None:
        if spec.cpus is None or self.cpus is None or spec.cpus <= self.cpus:
            return None
        return (
            f"functions.{spec.name}.cpus: {spec.cpus:g} is more than the {self.cpus} CPU(s) "
            "Docker can give a container on this host"
        )
