"""Removes containers whose removal failed (Docker down, Docker slow), later.

When a call's cleanup cannot remove its container — Docker is unreachable or
not answering — the container id is handed here instead of being forgotten.
The janitor's task sleeps on an event while it has nothing to do (idle means
asleep) and, while it has work, retries with a backoff deadline (1 s doubling
to 60 s) until Docker removes the container or says it is already gone.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import trio

from kiln.containers.removal import remove_container
from kiln.docker import Docker, DockerError

log = logging.getLogger("kiln.janitor")

BACKOFF_START = 1.0
BACKOFF_MAX = 60.0
#: At shutdown: how long the last try at pending removals may take.
FLUSH_TIMEOUT = 10.0

_ID_RE = re.compile(r"^[0-9a-f]{64}$")


def shown(ref: str) -> str:
    """A container for a log line: an id cut to Docker's 12 characters, a name whole."""
    return ref[:12] if _ID_RE.match(ref) else ref


@dataclass(frozen=True)
class JanitorStatistics:
    pending: int
    removed_total: int
    attempts_total: int


class Janitor:
    def __init__(self, docker: Docker) -> None:
        self.docker = docker
        self._pending: dict[str, str] = {}  # container id → function
        self._wake = trio.Event()
        self._empty = trio.Event()
        self._empty.set()
        self._removed_total = 0
        self._attempts_total = 0

    def remove_later(self, cid: str, function: str) -> None:
        """Queue a container for removal (never blocks)."""
        self._pending[cid] = function
        if self._empty.is_set():
            self._empty = trio.Event()
        self._wake.set()

    async def wait_empty(self) -> None:
        """Return once nothing is left to remove."""
        await self._empty.wait()

    @property
    def pending(self) -> int:
        return len(self._pending)

    def statistics(self) -> JanitorStatistics:
        return JanitorStatistics(len(self._pending), self._removed_total, self._attempts_total)

    async def flush(self, timeout: float = FLUSH_TIMEOUT) -> int:  # noqa: ASYNC109
        """One last try at every pending removal (at shutdown), bounded by ``timeout``
        and shielded. Returns how many are still pending: the next start's sweep
        removes those."""
        with trio.CancelScope(shield=True), trio.move_on_after(timeout):
            for cid, function in list(self._pending.items()):
                try:
                    await remove_container(self.docker, cid, http_timeout=timeout)
                except DockerError as e:
                    log.warning("cannot remove container %s of %s: %s", shown(cid), function, e)
                    break
                if self._pending.pop(cid, None) is None:
                    continue  # the other of run() and flush() got there first
                self._removed_total += 1
                log.info("removed left-over container %s of %s", shown(cid), function)
        if self._pending:
            log.warning(
                "%d container(s) left for the next start's sweep to remove", len(self._pending)
            )
        return len(self._pending)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        backoff = BACKOFF_START
        while True:
            if not self._pending:
                self._empty.set()
                self._wake = trio.Event()
                await self._wake.wait()
                backoff = BACKOFF_START
            failed = False
            for cid, function in list(self._pending.items()):
                self._attempts_total += 1
                try:
                    with trio.CancelScope(shield=True):
                        await remove_container(self.docker, cid)
                except DockerError as e:
                    log.warning(
                        "still cannot remove container %s of %s: %s", shown(cid), function, e
                    )
                    failed = True
                    break
                if self._pending.pop(cid, None) is None:
                    continue  # the other of run() and flush() got there first
                self._removed_total += 1
                log.info("removed left-over container %s of %s", shown(cid), function)
            if failed:
                await trio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
