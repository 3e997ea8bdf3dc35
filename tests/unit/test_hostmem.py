"""hostmem: cgroup v2 / v1 / host detection on fixture trees, and pool sizing."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.admission.hostmem import HostResources, plan_capacity, read_host_resources
from kiln.units import GiB, MiB

AVAIL = 16 * GiB
CORES = 8


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def v2_tree(tmp_path: Path, own: str = "/") -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    write(root / "cgroup.controllers", "cpuset cpu io memory pids")
    proc = tmp_path / "proc_self_cgroup"
    write(proc, f"0::{own}")
    return root, proc


def v1_tree(tmp_path: Path, own: str = "/") -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    (root / "memory").mkdir(parents=True)
    (root / "cpu,cpuacct").mkdir(parents=True)
    proc = tmp_path / "proc_self_cgroup"
    write(
        proc,
        "\n".join(
            [
                f"12:memory:{own}",
                f"4:cpu,cpuacct:{own}",
                f"1:name=systemd:{own}",
                "0::/",
            ]
        ),
    )
    return root, proc


def read(root: Path, proc: Path) -> HostResources:
    return read_host_resources(root, proc, available=AVAIL, cpu_count=CORES)


# ------------------------------------------------------------------ cgroup v2


def test_v2_limited(tmp_path: Path) -> None:
    root, proc = v2_tree(tmp_path)
    write(root / "memory.max", str(4 * GiB))
    res = read(root, proc)
    assert res == HostResources(4 * GiB, AVAIL, "cgroup2", float(CORES), "host")


def test_v2_max_is_unlimited(tmp_path: Path) -> None:
    root, proc = v2_tree(tmp_path)
    write(root / "memory.max", "max")
    res = read(root, proc)
    assert res.memory_limit is None
    assert res.memory_source == "host"
    assert res.memory_available == AVAIL


def test_v2_own_nested_path(tmp_path: Path) -> None:
    root, proc = v2_tree(tmp_path, "/system.slice/kiln.service")
    write(root / "system.slice" / "memory.max", "max")
    write(root / "system.slice" / "kiln.service" / "memory.max", str(2 * GiB))
    assert read(root, proc).memory_limit == 2 * GiB


def test_v2_parent_limit_caps_child(tmp_path: Path) -> None:
    root, proc = v2_tree(tmp_path, "/kiln.slice/kiln.service")
    write(root / "kiln.slice" / "memory.max", str(1 * GiB))
    write(root / "kiln.slice" / "kiln.service" / "memory.max", "max")
    assert read(root, proc).memory_limit == 1 * GiB


def test_v2_own_path_missing_falls_back_to_root(tmp_path: Path) -> None:
    # Inside a container without a cgroup namespace: /proc/self/cgroup names a
    # path that does not exist under the mount; the mount root is ours.
    root, proc = v2_tree(tmp_path, "/docker/abc123")
    write(root / "memory.max", str(3 * GiB))
    assert read(root, proc).memory_limit == 3 * GiB


def test_v2_garbage_file_falls_through(tmp_path: Path) -> None:
    root, proc = v2_tree(tmp_path, "/a")
    write(root / "a" / "memory.max", "not a number")
    res = read(root, proc)
    assert (res.memory_limit, res.memory_source) == (None, "host")


# ------------------------------------------------------------------ cgroup v1


def test_v1_limited(tmp_path: Path) -> None:
    root, proc = v1_tree(tmp_path)
    write(root / "memory" / "memory.limit_in_bytes", str(4 * GiB))
    res = read(root, proc)
    assert (res.memory_limit, res.memory_source) == (4 * GiB, "cgroup1")


def test_v1_unlimited(tmp_path: Path) -> None:
    root, proc = v1_tree(tmp_path)
    write(root / "memory" / "memory.limit_in_bytes", "9223372036854771712")
    res = read(root, proc)
    assert (res.memory_limit, res.memory_source) == (None, "host")


def test_v1_own_nested_path(tmp_path: Path) -> None:
    root, proc = v1_tree(tmp_path, "/system.slice/kiln.service")
    write(root / "memory" / "memory.limit_in_bytes", "9223372036854771712")
    write(
        root / "memory" / "system.slice" / "kiln.service" / "memory.limit_in_bytes",
        str(512 * MiB),
    )
    assert read(root, proc).memory_limit == 512 * MiB


def test_v1_own_path_missing_falls_back_to_root(tmp_path: Path) -> None:
    root, proc = v1_tree(tmp_path, "/docker/abc123")
    write(root / "memory" / "memory.limit_in_bytes", str(1 * GiB))
    assert read(root, proc).memory_limit == 1 * GiB


# ------------------------------------------------------------------ no cgroup


def test_no_cgroup(tmp_path: Path) -> None:
    res = read(tmp_path / "nothing", tmp_path / "no_proc_file")
    assert res == HostResources(None, AVAIL, "host", float(CORES), "host")


def test_defaults_read_the_real_host() -> None:
    res = read_host_resources()
    assert res.memory_available > 0
    assert res.cpus > 0
    assert res.memory_source in ("cgroup2", "cgroup1", "host")


# ------------------------------------------------------------------ CPU


@pytest.mark.parametrize(
    ("cpu_max", "cpus", "source"),
    [
        ("max 100000", float(CORES), "host"),
        ("200000 100000", 2.0, "cgroup2"),
        ("150000 100000", 1.5, "cgroup2"),
        ("5000000 100000", float(CORES), "host"),  # quota above the core count
    ],
)
def test_v2_cpu(tmp_path: Path, cpu_max: str, cpus: float, source: str) -> None:
    root, proc = v2_tree(tmp_path, "/k")
    write(root / "k" / "cpu.max", cpu_max)
    res = read(root, proc)
    assert (res.cpus, res.cpu_source) == (cpus, source)


@pytest.mark.parametrize(
    ("quota", "period", "cpus", "source"),
    [
        ("-1", "100000", float(CORES), "host"),
        ("50000", "100000", 0.5, "cgroup1"),
        ("300000", "100000", 3.0, "cgroup1"),
        ("9000000", "100000", float(CORES), "host"),
    ],
)
def test_v1_cpu(tmp_path: Path, quota: str, period: str, cpus: float, source: str) -> None:
    root, proc = v1_tree(tmp_path, "/k")
    write(root / "cpu,cpuacct" / "k" / "cpu.cfs_quota_us", quota)
    write(root / "cpu,cpuacct" / "k" / "cpu.cfs_period_us", period)
    res = read(root, proc)
    assert (res.cpus, res.cpu_source) == (cpus, source)


def test_v1_cpu_plain_cpu_dir(tmp_path: Path) -> None:
    root, proc = v1_tree(tmp_path)
    write(root / "cpu" / "cpu.cfs_quota_us", "200000")
    write(root / "cpu" / "cpu.cfs_period_us", "100000")
    assert read(root, proc).cpus == 2.0


def test_cpu_without_cgroup_uses_core_count(tmp_path: Path) -> None:
    res = read_host_resources(tmp_path, tmp_path / "none", available=1, cpu_count=3)
    assert (res.cpus, res.cpu_source) == (3.0, "host")


# ------------------------------------------------------------------ pool_capacity


def res(limit: int | None, available: int, source: str = "cgroup1") -> HostResources:
    return HostResources(limit, available, source if limit else "host", 4.0, "host")


def test_capacity_limit_below_available_uses_limit_minus_fraction() -> None:
    r = res(4 * GiB, 16 * GiB)
    # 10% of 4 GiB = 409.6 MiB > 256 MiB minimum
    assert plan_capacity(r, cap=None).capacity == 4 * GiB - int(4 * GiB * 0.10)


def test_capacity_available_below_limit_uses_available() -> None:
    r = res(8 * GiB, 2 * GiB)
    assert plan_capacity(r, cap=None).capacity == 2 * GiB - 256 * MiB  # min headroom wins


def test_capacity_no_limit_uses_available() -> None:
    r = res(None, 10 * GiB)
    assert plan_capacity(r, cap=None).capacity == 10 * GiB - GiB


def test_capacity_headroom_min() -> None:
    r = res(1 * GiB, 16 * GiB)
    assert plan_capacity(r, cap=None).capacity == 1 * GiB - 256 * MiB
    assert plan_capacity(r, cap=None, headroom_min=0, headroom_fraction=0.0).capacity == 1 * GiB


def test_capacity_floor_zero() -> None:
    assert plan_capacity(res(100 * MiB, 16 * GiB), cap=None).capacity == 0


def test_capacity_cap_is_an_upper_bound_only() -> None:
    r = res(4 * GiB, 16 * GiB)
    detected = plan_capacity(r, cap=None).capacity
    assert plan_capacity(r, cap=1 * GiB).capacity == 1 * GiB
    assert plan_capacity(r, cap=64 * GiB).capacity == detected
    plan = plan_capacity(r, cap=64 * GiB)
    assert plan.cap_exceeds_detected
    assert "ignored" in plan.explain()
    assert not plan_capacity(r, cap=1 * GiB).cap_exceeds_detected


def test_explain() -> None:
    plan = plan_capacity(res(4 * GiB, 16 * GiB), cap=3 * GiB)
    assert plan.explain() == (
        "3 GiB (cgroup1 limit 4 GiB minus 10% headroom, capped at 3 GiB by config)"
    )
    plan = plan_capacity(res(None, 2 * GiB), cap=None)
    assert plan.explain() == "1.8 GiB (host available 2 GiB minus 256 MiB minimum headroom)"


def test_bad_arguments() -> None:
    r = res(None, GiB)
    with pytest.raises(ValueError, match="headroom_fraction"):
        plan_capacity(r, cap=None, headroom_fraction=1.5)
    with pytest.raises(ValueError, match="cap"):
        plan_capacity(r, cap=-1)
