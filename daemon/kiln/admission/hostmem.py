"""How much memory and CPU the host gives us.

Sources, in order (a missing or unreadable file falls through to the next
source; nothing here raises for a strange host):

* cgroup v2 (``<root>/cgroup.controllers`` exists): ``memory.max`` and
  ``cpu.max`` of our own cgroup (the ``0::/path`` line of
  ``/proc/self/cgroup``) *and of each of its ancestors up to the root*; the
  smallest limit wins, because a parent's limit caps its children. ``max`` means
  unlimited. The root is the last ancestor tried. (Inside a container without a cgroup
  namespace the own path does not exist under the mount; the walk then ends at
  the mount root, which *is* the container's cgroup.)
* cgroup v1: ``<root>/memory/<path>/memory.limit_in_bytes`` (path from the
  ``memory`` line) and ``<root>/cpu/<path>/cpu.cfs_quota_us`` /
  ``cpu.cfs_period_us`` (path from the ``cpu`` line; ``cpu,cpuacct`` is tried
  too), same ancestor walk. A memory value at or above 2**60 (the kernel writes
  9223372036854771712) and a quota of -1 mean unlimited.
* the host: ``psutil.virtual_memory().available`` and the CPUs this process may
  run on.

Note: the containers Kiln starts live in cgroups made by dockerd, not in Kiln's
own cgroup, so Kiln's limit does not bound them. Using it anyway is the
conservative choice: an operator who confines the Kiln
service to 4 GiB expects Kiln not to hand out more than that.

The pure part (:func:`plan_capacity`) does no I/O.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import psutil

from kiln.units import MiB, format_size

__all__ = [
    "CapacityPlan",
    "HostResources",
    "plan_capacity",
    "read_host_resources",
]

#: cgroup v1 reports "no limit" as a huge page-aligned number; anything at or
#: above this is treated as unlimited.
UNLIMITED_THRESHOLD = 2**60


@dataclass(frozen=True)
class HostResources:
    """What the host gives us, as read once at startup (or on reload).

    ``memory_limit`` is the cgroup limit in bytes (``None``: unlimited or no
    cgroup); ``memory_source`` names where the limit came from: ``"cgroup2"``,
    ``"cgroup1"`` or ``"host"`` (no limit found; only ``memory_available``
    counts). ``cpus`` is the usable CPU count (a quota may make it fractional);
    ``cpu_source`` names the binding constraint: the cgroup quota or ``"host"``
    when the core count is the smaller one.
    """

    memory_limit: int | None
    memory_available: int
    memory_source: str
    cpus: float
    cpu_source: str


# --------------------------------------------------------------------------- reading


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None


def _own_paths(proc_self_cgroup: Path) -> tuple[str | None, dict[str, str]]:
    """Parse ``/proc/self/cgroup``: (v2 path, {v1 controller: path})."""
    text = _read_text(proc_self_cgroup)
    v2: str | None = None
    v1: dict[str, str] = {}
    if text is None:
        return v2, v1
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            v2 = path
        else:
            for controller in controllers.split(","):
                if controller:
                    v1[controller] = path
    return v2, v1


def _ancestors(base: Path, own: str | None) -> list[Path]:
    """``base/a/b/c``, ``base/a/b``, ``base/a``, ``base``: own cgroup first."""
    dirs: list[Path] = []
    if own:
        rel = PurePosixPath(own.strip())
        parts = [p for p in rel.parts if p not in ("/", "", ".", "..")]
        for i in range(len(parts), 0, -1):
            dirs.append(base.joinpath(*parts[:i]))
    dirs.append(base)
    return dirs


def _parse_int(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _min_limit(values: list[int | None]) -> tuple[bool, int | None]:
    """(was anything read, smallest finite limit). ``None`` entries = unlimited."""
    finite = [v for v in values if v is not None]
    return True, (min(finite) if finite else None)


def _v2_memory(dirs: list[Path]) -> tuple[bool, int | None]:
    found: list[int | None] = []
    for d in dirs:
        text = _read_text(d / "memory.max")
        if text is None:
            continue
        if text == "max":
            found.append(None)
            continue
        value = _parse_int(text)
        if value is None:
            continue
        found.append(None if value >= UNLIMITED_THRESHOLD else value)
    return _min_limit(found) if found else (False, None)


def _v1_memory(dirs: list[Path]) -> tuple[bool, int | None]:
    found: list[int | None] = []
    for d in dirs:
        value = _parse_int(_read_text(d / "memory.limit_in_bytes"))
        if value is None:
            continue
        found.append(None if value >= UNLIMITED_THRESHOLD or value < 0 else value)
    return _min_limit(found) if found else (False, None)


def _v2_cpu(dirs: list[Path]) -> tuple[bool, float | None]:
    found: list[float | None] = []
    for d in dirs:
        text = _read_text(d / "cpu.max")
        if text is None:
            continue
        fields = text.split()
        if not fields:
            continue
        if fields[0] == "max":
            found.append(None)
            continue
        quota = _parse_int(fields[0])
        period = _parse_int(fields[1]) if len(fields) > 1 else 100000
        if quota is None or period is None or quota <= 0 or period <= 0:
            continue
        found.append(quota / period)
    if not found:
        return False, None
    finite = [v for v in found if v is not None]
    return True, (min(finite) if finite else None)


def _v1_cpu(dirs: list[Path]) -> tuple[bool, float | None]:
    found: list[float | None] = []
    for d in dirs:
        quota = _parse_int(_read_text(d / "cpu.cfs_quota_us"))
        if quota is None:
            continue
        if quota < 0:
            found.append(None)
            continue
        period = _parse_int(_read_text(d / "cpu.cfs_period_us"))
        if period is None or period <= 0 or quota == 0:
            continue
        found.append(quota / period)
    if not found:
        return False, None
    finite = [v for v in found if v is not None]
    return True, (min(finite) if finite else None)


def _host_cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def read_host_resources(
    cgroup_root: Path = Path("/sys/fs/cgroup"),
    proc_self_cgroup: Path = Path("/proc/self/cgroup"),
    *,
    available: int | None = None,
    cpu_count: int | None = None,
) -> HostResources:
    """Read the memory and CPU limits that apply to this process.

    ``available`` and ``cpu_count`` replace psutil's available memory and the
    host's CPU count (tests inject them). Never raises for missing or malformed
    cgroup files: each falls through to the next source. Blocking file I/O on
    pseudo-files; call it at startup (or via ``trio.to_thread.run_sync``).
    """
    own_v2, own_v1 = _own_paths(proc_self_cgroup)
    is_v2 = (cgroup_root / "cgroup.controllers").exists()

    memory_limit: int | None = None
    memory_source = "host"
    memory_found = False  # a cgroup answered (a limit or "unlimited")
    cpu_quota: float | None = None
    cpu_quota_source = "host"
    cpu_found = False

    if is_v2:
        dirs = _ancestors(cgroup_root, own_v2)
        memory_found, memory_limit = _v2_memory(dirs)
        if memory_limit is not None:
            memory_source = "cgroup2"
        cpu_found, cpu_quota = _v2_cpu(dirs)
        cpu_quota_source = "cgroup2"
    if not memory_found:
        memory_found, memory_limit = _v1_memory(
            _ancestors(cgroup_root / "memory", own_v1.get("memory"))
        )
        if memory_limit is not None:
            memory_source = "cgroup1"
    if not cpu_found:
        own_cpu = own_v1.get("cpu")
        for sub in ("cpu", "cpu,cpuacct"):
            cpu_found, cpu_quota = _v1_cpu(_ancestors(cgroup_root / sub, own_cpu))
            if cpu_found:
                cpu_quota_source = "cgroup1"
                break

    if available is None:
        available = int(psutil.virtual_memory().available)
    cores = cpu_count if cpu_count is not None else _host_cpu_count()
    if cpu_quota is not None and cpu_quota < cores:
        cpus, cpu_source = cpu_quota, cpu_quota_source
    else:
        cpus, cpu_source = float(cores), "host"
    return HostResources(
        memory_limit=memory_limit,
        memory_available=max(0, available),
        memory_source=memory_source,
        cpus=cpus,
        cpu_source=cpu_source,
    )


# --------------------------------------------------------------------------- arithmetic


@dataclass(frozen=True)
class CapacityPlan:
    """How the pool size was worked out, for the log and the status page.

    The rule: ``base`` is the smaller of the cgroup limit and the memory the
    host has available now (available memory is what is really free; a cgroup
    limit caps us even when the host has more; either can be the binding one,
    so take the smaller). ``headroom = max(headroom_fraction * base,
    headroom_min)`` is kept back for Kiln itself, Docker and the kernel;
    ``detected = max(0, base - headroom)``. A configured ``cap`` is an upper
    bound only: ``capacity = min(detected, cap)``. A cap above the detected
    value is *not* honoured (promising memory the host does not have turns
    admission into OOM kills); :attr:`cap_exceeds_detected` says so, so the
    caller can log it, and :meth:`explain` mentions it.
    """

    base: int
    base_desc: str
    headroom: int
    headroom_desc: str
    detected: int
    cap: int | None
    capacity: int

    @property
    def cap_exceeds_detected(self) -> bool:
        return self.cap is not None and self.cap > self.detected

    def explain(self) -> str:
        """E.g. ``"3.5 GiB (cgroup1 limit 4 GiB minus 10% headroom)"``."""
        text = f"{format_size(self.capacity)} ({self.base_desc} minus {self.headroom_desc}"
        if self.cap is not None and self.cap < self.detected:
            text += f", capped at {format_size(self.cap)} by config"
        text += ")"
        if self.cap_exceeds_detected:
            assert self.cap is not None
            text += (
                f"; configured cap {format_size(self.cap)} ignored: above the detected "
                f"{format_size(self.detected)}"
            )
        return text


def plan_capacity(
    res: HostResources,
    *,
    cap: int | None,
    headroom_fraction: float = 0.10,
    headroom_min: int = 256 * MiB,
) -> CapacityPlan:
    """Work out the memory budget from ``res`` (pure; see :class:`CapacityPlan`)."""
    if not 0 <= headroom_fraction < 1:
        raise ValueError(f"headroom_fraction must be in [0, 1), got {headroom_fraction}")
    if headroom_min < 0:
        raise ValueError(f"headroom_min must be >= 0, got {headroom_min}")
    if cap is not None and cap < 0:
        raise ValueError(f"cap must be >= 0, got {cap}")
    limit, avail = res.memory_limit, res.memory_available
    if limit is not None and limit <= avail:
        base, base_desc = limit, f"{res.memory_source} limit {format_size(limit)}"
    elif limit is not None:
        base = avail
        base_desc = (
            f"host available {format_size(avail)}, below the {res.memory_source} limit "
            f"{format_size(limit)}"
        )
    else:
        base, base_desc = avail, f"host available {format_size(avail)}"
    by_fraction = int(base * headroom_fraction)
    if by_fraction >= headroom_min:
        headroom = by_fraction
        headroom_desc = f"{headroom_fraction * 100:g}% headroom"
    else:
        headroom = headroom_min
        headroom_desc = f"{format_size(headroom_min)} minimum headroom"
    detected = max(0, base - headroom)
    capacity = detected if cap is None else min(detected, cap)
    return CapacityPlan(
        base=base,
        base_desc=base_desc,
        headroom=headroom,
        headroom_desc=headroom_desc,
        detected=detected,
        cap=cap,
        capacity=capacity,
    )
