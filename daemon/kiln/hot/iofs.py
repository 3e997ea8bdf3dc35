"""Where hot containers' listener dirs live: one tmpfs, ``nosuid,nodev,noexec``, bounded.

Each hot container gets a fresh dir, bind-mounted at ``/tmp/iofs``, in which
its FDK creates ``lsnr.sock``. Kiln must reach that socket from the host, so
the dir is a host dir; what a function writes there is therefore on the host.
To keep it harmless, every listener dir lives under ``[daemon] run_dir/iofs``,
which must be a **tmpfs mounted ``nosuid,nodev,noexec``**:

* a bind mount carries its source mount's flags, so inside the container and
  on the host a setuid file there is never honoured, no device node opens, and
  nothing there executes;
* tmpfs is bounded: the whole mount by its ``size`` (``[limits] iofs_size``),
  and each function by its own memory limit, because tmpfs pages are charged
  to the memory cgroup of the container that writes them (a 64 MiB function
  is OOM-killed before it has written 64 MiB there).

Run as root, Kiln mounts it itself when it is missing (source
``kiln-iofs-auto``) and unmounts it at exit, also one a killed run left;
otherwise someone privileged must (the systemd unit does, in an
``ExecStartPre=+``), and Kiln refuses to start without it.

The pure part (reading ``/proc/self/mountinfo``, judging a mount) is separate
from the few system calls.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from kiln.units import MiB

log = logging.getLogger("kiln.iofs")

REQUIRED_OPTIONS = frozenset({"nosuid", "nodev", "noexec"})
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MNT_DETACH = 0x2
#: Inodes on the mount: three per container (its dir, socket, symlink) and room to spare.
NR_INODES = 65536


#: The source name of the tmpfs Kiln mounts itself (``kiln-iofs`` is the systemd unit's).
OWN_SOURCE = "kiln-iofs-auto"


@dataclass(frozen=True)
class Mount:
    mount_point: str
    fstype: str
    options: frozenset[str]
    source: str = ""


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as ``\\040`` etc."""
    out = []
    i = 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[Mount]:
    """The mounts in ``/proc/self/mountinfo`` text, in order (later ones on top)."""
    mounts: list[Mount] = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields = left.split()
        tail = right.split()
        if not sep or len(fields) < 6 or len(tail) < 3:
            continue
        options = set(fields[5].split(",")) | set(tail[2].split(","))
        mounts.append(Mount(_unescape(fields[4]), tail[0], frozenset(options), _unescape(tail[1])))
    return mounts


def mount_at(path: str, mounts: list[Mount]) -> Mount | None:
    """The mount whose mount point is exactly ``path`` (the topmost one), or None."""
    found = None
    for m in mounts:
        if m.mount_point == path:
            found = m
    return found


def unsafe_reason(mount: Mount | None) -> str | None:
    """Why ``mount`` will not do for listener dirs, or None if it will."""
    if mount is None:
        return "is not a mount of its own"
    if mount.fstype != "tmpfs":
        return f"is a {mount.fstype} mount, not tmpfs"
    missing = sorted(REQUIRED_OPTIONS - mount.options)
    if missing:
        return f"is mounted without {','.join(missing)}"
    return None


def mount_options(size: int) -> str:
    return f"size={max(1, size // MiB)}m,nr_inodes={NR_INODES},mode=0700"


class IofsUnsafe(Exception):
    """The listener dirs' mount is missing or unsafe, and Kiln cannot mount it."""


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _read_mounts() -> list[Mount]:
    return parse_mountinfo(
        Path("/proc/self/mountinfo").read_text(encoding="utf-8", errors="replace")
    )


class IofsRoot:
    """``run_dir/iofs``: prepared at start, one dir per daemon instance inside it."""

    def __init__(self, base: Path, size: int) -> None:
        self.base = base
        self.size = size
        self.mounted_here = False

    def prepare(self) -> None:
        """Make sure ``base`` is a suitable tmpfs: mount it if missing (as root), else
        raise :class:`IofsUnsafe` saying what to do."""
        self.base.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = os.path.realpath(self.base)
        found = mount_at(path, _read_mounts())
        reason = unsafe_reason(found)
        if reason is None:
            # One Kiln mounted (a run that was killed): ours to unmount at exit.
            self.mounted_here = found is not None and found.source == OWN_SOURCE
            return
        if os.geteuid() != 0:
            raise IofsUnsafe(
                f"{path} {reason}. Hot containers' listener dirs must be on a tmpfs mounted "
                f"nosuid,nodev,noexec: as root, `mount -t tmpfs -o {mount_options(self.size)},"
                f"nosuid,nodev,noexec kiln-iofs {path}` and chown it to Kiln's user (the systemd "
                "unit does this), or run Kiln as root and it mounts it itself"
            )
        if mount_at(path, _read_mounts()) is not None:
            raise IofsUnsafe(f"{path} {reason}; unmount it and Kiln mounts a suitable tmpfs")
        libc = _libc()
        flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
        data = mount_options(self.size).encode()
        if libc.mount(OWN_SOURCE.encode(), path.encode(), b"tmpfs", flags, data) != 0:
            err = ctypes.get_errno()
            raise IofsUnsafe(f"cannot mount a tmpfs at {path}: {os.strerror(err)}")
        self.mounted_here = True
        log.info("listener dirs: tmpfs at %s (%s,nosuid,nodev,noexec)", path, data.decode())

    def close(self) -> None:
        """Unmount what :meth:`prepare` mounted (lazily: containers Docker could not
        remove yet keep their own reference to it)."""
        if not self.mounted_here:
            return
        self.mounted_here = False
        path = os.path.realpath(self.base)
        if _libc().umount2(path.encode(), MNT_DETACH) != 0:
            err = ctypes.get_errno()
            if err not in (errno.EINVAL, errno.ENOENT):
                log.warning("could not unmount %s: %s", path, os.strerror(err))

    def sweep(self, keep: str) -> int:
        """Remove the listener dirs every other instance left (crashed or killed runs)."""
        removed = 0
        with contextlib.suppress(FileNotFoundError):
            for entry in self.base.iterdir():
                if entry.name == keep or not entry.is_dir() or entry.is_symlink():
                    continue
                shutil.rmtree(entry, ignore_errors=True)
                removed += 1
        if removed:
            log.info(
                "removed the listener dirs of %d earlier instance(s) in %s", removed, self.base
            )
        return removed
