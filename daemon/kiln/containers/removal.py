"""Removing a container the way Kiln means it: forcibly, with its anonymous volumes,
and "already gone" or "already being removed" counting as done."""

from __future__ import annotations

from kiln.docker import Docker, DockerConflict, DockerNotFound


async def remove_container(docker: Docker, ref: str, *, http_timeout: float | None = None) -> bool:
    """Remove a container and its anonymous volumes, forcibly. False if it was already
    gone; a removal Docker already has in progress counts as done."""
    try:
        await docker.containers.container(ref).delete(
            force=True, v=True, timeout=http_timeout if http_timeout is not None else ...
        )
    except DockerNotFound:
        return False
    except DockerConflict as e:
        if "already in progress" in e.message:
            return True
        raise
    return True
