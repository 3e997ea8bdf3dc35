"""What a Kiln container looks like to Docker: labels, name, hardened host config.

Pure functions, no I/O: the container spec is data, tested without Docker.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kiln.functions.spec import FunctionSpec
from kiln.units import MiB

LABEL_DAEMON = "kiln.daemon"
LABEL_INSTANCE = "kiln.instance"
LABEL_FUNCTION = "kiln.function"
LABEL_CALL = "kiln.call"

TMPFS_SIZE = 64 * MiB
NOFILE = 1024


@dataclass(frozen=True)
class Identity:
    """Who started a container: this daemon (stable across restarts) and this run of it."""

    daemon_id: str
    instance: str = field(default_factory=lambda: secrets.token_hex(6))

    def labels(self, function: str) -> dict[str, str]:
        return {
            LABEL_DAEMON: self.daemon_id,
            LABEL_INSTANCE: self.instance,
            LABEL_FUNCTION: function,
        }


def container_name(identity: Identity, function: str, suffix: str) -> str:
    """A deterministic name, so a create that timed out can still be found and removed."""
    return f"kiln-{identity.daemon_id}-{function}-{suffix}"[:128]


def container_config(
    spec: FunctionSpec,
    identity: Identity,
    *,
    stdio: bool,
    env: Mapping[str, str] | None = None,
    binds: Sequence[str] = (),
    extra_labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The body of ``POST /containers/create`` for one container of ``spec``.

    Hardened by default: a non-root user (the spec's ``user``, ``1000:1000``
    unless set), an init process, read-only root with a tmpfs ``/tmp``,
    memory = memory+swap = the function's memory, a pids limit, a nofile
    ulimit, every capability dropped, ``no-new-privileges``, and network
    ``none`` unless the function asks for one.
    """
    all_env = {**spec.env, **(env or {})}
    labels = {**identity.labels(spec.name), **(extra_labels or {})}
    host_config: dict[str, Any] = {
        "Init": True,
        "ReadonlyRootfs": True,
        "Tmpfs": {"/tmp": f"rw,nosuid,nodev,size={TMPFS_SIZE // MiB}m"},
        "Memory": spec.memory,
        "MemorySwap": spec.memory,
        "PidsLimit": spec.pids_limit,
        "Ulimits": [{"Name": "nofile", "Soft": NOFILE, "Hard": NOFILE}],
        "CapDrop": ["ALL"],
        "SecurityOpt": ["no-new-privileges"],
        "NetworkMode": spec.network,
        "AutoRemove": False,
        # Kiln reads the output from the attach stream itself (kiln.logs); with
        # the "none" driver dockerd keeps no copy (`docker logs` has nothing to show).
        "LogConfig": {"Type": "none", "Config": {}},
    }
    if binds:
        host_config["Binds"] = list(binds)
    if spec.cpus is not None:
        host_config["NanoCpus"] = int(spec.cpus * 1e9)
    config: dict[str, Any] = {
        "Image": spec.image,
        "Env": [f"{k}={v}" for k, v in all_env.items()],
        "Labels": labels,
        "HostConfig": host_config,
        "User": spec.user,
        "Tty": False,
        "NetworkDisabled": spec.network == "none",
    }
    if spec.cmd is not None:
        config["Cmd"] = list(spec.cmd)
    if stdio:
        config.update(
            AttachStdin=True,
            AttachStdout=True,
            AttachStderr=True,
            OpenStdin=True,
            StdinOnce=True,
        )
    return config
