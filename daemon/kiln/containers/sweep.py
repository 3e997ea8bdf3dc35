"""The orphan sweep: at start, remove the containers an earlier run of this daemon
left behind (crashed, SIGKILLed, or stopped while Docker was down).

Containers are found by label: ``kiln.daemon`` = this daemon's id, with a
``kiln.instance`` other than this run's. The sweep is bounded in time; what it
could not remove in time is logged and left to the next start.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import trio

from kiln.containers.removal import remove_container
from kiln.containers.spec import LABEL_DAEMON, LABEL_FUNCTION, LABEL_INSTANCE, Identity
from kiln.docker import Docker, DockerError

log = logging.getLogger("kiln.sweep")

SWEEP_TIMEOUT = 60.0
SWEEP_PARALLEL = 8


@dataclass(frozen=True)
class SweepResult:
    found: int
    removed: int
    failed: int
    timed_out: bool


async def sweep_orphans(
    docker: Docker,
    identity: Identity,
    *,
    timeout: float = SWEEP_TIMEOUT,  # noqa: ASYNC109
) -> SweepResult:
    """Remove this daemon's containers from other instances. Never raises DockerError."""
    try:
        listed = [
            c._container
            for c in await docker.containers.list(
                all=True, filters={"label": [f"{LABEL_DAEMON}={identity.daemon_id}"]}
            )
        ]
    except DockerError as e:
        log.warning("orphan sweep skipped: %s", e)
        return SweepResult(0, 0, 0, False)
    orphans = [
        c for c in listed if (c.get("Labels") or {}).get(LABEL_INSTANCE) != identity.instance
    ]
    removed = failed = 0
    limit = trio.Semaphore(SWEEP_PARALLEL)

    async def remove(c: dict[str, object]) -> None:
        nonlocal removed, failed
        cid = str(c["Id"])
        labels = c.get("Labels") or {}
        assert isinstance(labels, dict)
        async with limit:
            try:
                await remove_container(docker, cid)
                removed += 1
                log.info(
                    "removed orphan %s of %s (instance %s)",
                    cid[:12],
                    labels.get(LABEL_FUNCTION, "?"),
                    labels.get(LABEL_INSTANCE, "?"),
                )
            except DockerError as e:
                failed += 1
                log.warning("could not remove orphan %s: %s", cid[:12], e)

    with trio.move_on_after(timeout) as scope:
        async with trio.open_nursery() as nursery:
            for c in orphans:
                nursery.start_soon(remove, c)
    result = SweepResult(len(orphans), removed, failed, scope.cancelled_caught)
    if orphans:
        log.info(
            "orphan sweep: %d found, %d removed, %d failed%s",
            result.found,
            result.removed,
            result.failed,
            f", stopped after {timeout:g} s" if result.timed_out else "",
        )
    return result
