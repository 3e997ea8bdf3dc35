"""Helpers shared by the kiln.docker tests (no fixtures: anyio and pytest-trio would
both claim async ones)."""

from __future__ import annotations

import io
import secrets
import tarfile
from typing import Any

from kiln.docker import Docker, DockerContainer
from tests.docker.conftest import BUSYBOX, LABELS, PREFIX


def name(kind: str = "") -> str:
    return f"{PREFIX}-{kind}{secrets.token_hex(3)}"


def config(*cmd: str, **extra: Any) -> dict[str, Any]:
    """A busybox container's create config, labelled for clean-up."""
    labels = dict(LABELS)
    labels.update(extra.pop("Labels", {}))
    return {"Image": BUSYBOX, "Cmd": list(cmd), "Labels": labels, **extra}


async def create(docker: Docker, *cmd: str, **extra: Any) -> DockerContainer:
    return await docker.containers.create(config(*cmd, **extra), name=name())


def tar_of(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()
