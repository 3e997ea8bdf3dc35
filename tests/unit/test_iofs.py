"""The listener dirs' mount: reading mountinfo and judging a mount (pure), and the
sweep of dirs an earlier instance left."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.config import LimitsConfig
from kiln.hot.iofs import IofsRoot, Mount, mount_at, mount_options, parse_mountinfo, unsafe_reason
from kiln.units import MiB

MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
25 22 0:21 / /run rw,nosuid,nodev shared:5 - tmpfs tmpfs rw,size=402580k,mode=755
90 25 0:50 / /run/kiln/iofs rw,nosuid,nodev,noexec,relatime shared:40 - tmpfs kiln-iofs rw,size=65536k,nr_inodes=65536,mode=700
91 22 0:51 / /srv/with\\040space rw,relatime - tmpfs x rw
92 25 0:52 / /run/kiln/iofs rw,relatime - tmpfs later rw
"""


def test_parse_mountinfo() -> None:
    mounts = parse_mountinfo(MOUNTINFO)
    assert [m.mount_point for m in mounts] == [
        "/",
        "/run",
        "/run/kiln/iofs",
        "/srv/with space",
        "/run/kiln/iofs",
    ]
    assert mounts[2].fstype == "tmpfs"
    assert mounts[2].source == "kiln-iofs"
    assert {"nosuid", "nodev", "noexec", "size=65536k"} <= mounts[2].options


def test_the_topmost_mount_is_judged() -> None:
    mounts = parse_mountinfo(MOUNTINFO)
    top = mount_at("/run/kiln/iofs", mounts)
    assert top is not None
    assert unsafe_reason(top) == "is mounted without nodev,noexec,nosuid"
    assert unsafe_reason(mount_at("/run/kiln/iofs", mounts[:3])) is None


@pytest.mark.parametrize(
    ("mount", "reason"),
    [
        (None, "is not a mount of its own"),
        (
            Mount("/x", "ext4", frozenset({"nosuid", "nodev", "noexec"})),
            "is a ext4 mount, not tmpfs",
        ),
        (Mount("/x", "tmpfs", frozenset({"nosuid", "nodev"})), "is mounted without noexec"),
        (Mount("/x", "tmpfs", frozenset({"nosuid", "nodev", "noexec", "rw"})), None),
    ],
)
def test_unsafe_reason(mount: Mount | None, reason: str | None) -> None:
    assert unsafe_reason(mount) == reason


def test_mount_options_bound_size_and_inodes() -> None:
    assert mount_options(64 * MiB) == "size=64m,nr_inodes=65536,mode=0700"


def test_sweep_removes_other_instances_dirs(tmp_path: Path) -> None:
    for name in ("old1", "old2", "mine"):
        (tmp_path / name / "kiln-d-f-old-1").mkdir(parents=True)
        (tmp_path / name / "kiln-d-f-old-1" / "lsnr.sock").write_text("")
    (tmp_path / "file").write_text("not a dir")
    root = IofsRoot(tmp_path, 64 * MiB)
    assert root.sweep(keep="mine") == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "mine"]


def test_the_systemd_unit_mounts_what_kiln_requires() -> None:
    unit = (Path(__file__).resolve().parents[2] / "systemd" / "kiln.service").read_text()
    pre = [line for line in unit.splitlines() if line.startswith("ExecStartPre=+")]
    assert len(pre) == 1
    assert "mount -t tmpfs" in pre[0]
    assert " /run/kiln/iofs" in pre[0]
    options = set(pre[0].split("-o ", 1)[1].split()[0].split(","))
    assert {"nosuid", "nodev", "noexec"} <= options
    assert f"size={LimitsConfig().iofs_size // MiB}m" in options
    assert "ExecStopPost=-+/bin/umount --lazy /run/kiln/iofs" in unit
