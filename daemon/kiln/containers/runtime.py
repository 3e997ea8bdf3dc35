"""The one way Kiln runs containers, and the one place Docker's failures become caller errors.

Both call formats use it: a ``stdio`` call's container and a hot function's
containers live as ::

    async with runtime.claim(spec, name) as box:   # leaving it removes the container
        await runtime.create(box, config)
        await runtime.start(box)
        ...

* **Removal by deterministic name.** Once a create has been sent, the container
  may exist even if the create was cancelled or timed out before Docker
  answered; leaving :meth:`ContainerRuntime.claim` removes it by id, else by its
  name. A claim whose create never reached Docker (no connection) or that
  Docker refused removes nothing, so the janitor only ever gets containers
  that may exist.
* **Shielded and bounded.** Removal and kill run shielded from cancellation and
  end within a timeout; what Docker could not remove goes to the janitor, which
  keeps trying. Neither ever raises: cleanup never hides the call's own outcome.
* **One error boundary.** Docker's failures become :class:`CallError` in
  :func:`call_error`, applied by :func:`docker_failures` around every Docker
  call made for a call: Docker down or not answering → 503; the image missing →
  502 naming it; any other refusal → 502 with Docker's message. Callers above
  this module never see a ``DockerError``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

import trio

from kiln.calls.errors import CallError, FunctionFailed, Unavailable
from kiln.containers.janitor import Janitor, shown
from kiln.containers.removal import remove_container
from kiln.docker import (
    Docker,
    DockerAPIError,
    DockerConflict,
    DockerError,
    DockerNotConnected,
    DockerNotFound,
    DockerTimeout,
    DockerUnreachable,
    Stream,
)
from kiln.functions.spec import FunctionSpec

log = logging.getLogger("kiln.containers")

#: How long removing a container may take once its call is over (or cancelled).
CLEANUP_TIMEOUT = 30.0
#: How long killing a container may take.
KILL_TIMEOUT = 10.0
#: Retry-After (seconds) when Docker is down or not answering.
DOCKER_RETRY_AFTER = 5.0


def call_error(e: DockerError, spec: FunctionSpec) -> CallError:
    """What the caller is told when Docker failed us."""
    if isinstance(e, DockerUnreachable):
        return Unavailable(
            f"Docker is unreachable: {e}", code="docker_unavailable", retry_after=DOCKER_RETRY_AFTER
        )
    if isinstance(e, DockerTimeout):
        return Unavailable(
            f"Docker is not answering: {e}",
            code="docker_unavailable",
            retry_after=DOCKER_RETRY_AFTER,
        )
    if isinstance(e, DockerNotFound) and "image" in e.message.lower():
        return FunctionFailed(
            f"image {spec.image!r} of function {spec.name!r} is not on this host "
            f"(Docker: {e.message}); pull or import it",
            code="image_not_found",
        )
    if isinstance(e, DockerAPIError):
        return FunctionFailed(f"Docker refused: {e}", code="docker_error")
    return FunctionFailed(f"Docker failed: {e}", code="docker_error")


@contextmanager
def docker_failures(spec: FunctionSpec) -> Iterator[None]:
    """Turn a DockerError raised inside the block into the caller's :class:`CallError`."""
    try:
        yield
    except DockerError as e:
        raise call_error(e, spec) from e


def docker_log_config(driver: str) -> dict[str, Any]:
    """``HostConfig.LogConfig`` for Kiln's containers (``[logs] docker_driver``).

    Kiln reads containers' output itself (the attach stream, :mod:`kiln.logs`), so
    by default dockerd keeps no copy (``none``: ``docker logs`` has nothing to
    show). ``json-file`` or ``local`` keep a small one (1 MiB) for ``docker logs``,
    at the cost of dockerd writing every line to disk."""
    if driver == "none":
        return {"Type": "none", "Config": {}}
    return {"Type": driver, "Config": {"max-size": "1m", "max-file": "1"}}


@dataclass(eq=False)
class Box:
    """One container claimed for a function: its name always, its id once Docker gave it."""

    spec: FunctionSpec
    name: str
    id: str | None = None
    create_sent: bool = False

    @property
    def ref(self) -> str:
        """How Docker knows it: the id, else the (deterministic, unique) name."""
        return self.id or self.name


class ContainerRuntime:
    """Creates, starts, kills and removes containers over one Docker client."""

    def __init__(
        self, docker: Docker, *, janitor: Janitor | None = None, log_driver: str = "none"
    ) -> None:
        self.docker = docker
        self.janitor = janitor
        self.log_config = docker_log_config(log_driver)

    @asynccontextmanager
    async def claim(self, spec: FunctionSpec, name: str) -> AsyncIterator[Box]:
        """Own the container called ``name``: it is removed when the block is left."""
        box = Box(spec, name)
        try:
            yield box
        finally:
            if box.create_sent:
                await self.remove(box)

    async def create(self, box: Box, config: Mapping[str, Any]) -> str:
        config = {**config, "HostConfig": {**config["HostConfig"], "LogConfig": self.log_config}}
        box.create_sent = True
        with docker_failures(box.spec):
            try:
                container = await self.docker.containers.create(config, name=box.name)
            except (DockerNotConnected, DockerAPIError):
                # Never reached Docker, or Docker refused it: nothing was created,
                # so there is nothing to remove (nor to hand the janitor).
                box.create_sent = False
                raise
        box.id = container.id
        return box.id

    async def start(self, box: Box) -> None:
        with docker_failures(box.spec):
            await self.docker.containers.container(box.ref).start()

    @asynccontextmanager
    async def attach(self, box: Box) -> AsyncIterator[Stream]:
        """The container's stdio (attach before start). A DockerError the stream
        raises inside the block leaves it as the caller's :class:`CallError`."""
        container = self.docker.containers.container(box.ref)
        with docker_failures(box.spec):
            async with container.attach(stdin=True, stdout=True, stderr=True, tty=False) as stream:
                yield stream

    async def wait(self, box: Box) -> int:
        """Block until the container stops; its exit code."""
        with docker_failures(box.spec):
            result = await self.docker.containers.container(box.ref).wait()
        code = result.get("StatusCode")
        if not isinstance(code, int):
            raise call_error(DockerError(500, f"unreadable wait answer {result!r}"), box.spec)
        return code

    async def oom_killed(self, box: Box) -> bool:
        with docker_failures(box.spec):
            state = (await self.docker.containers.container(box.ref).show()).get("State", {})
        return bool(state.get("OOMKilled"))

    async def kill(self, box: Box) -> None:
        """Kill the container, shielded and bounded. Never raises (its removal follows)."""
        if not box.create_sent:
            return
        with trio.CancelScope(shield=True), trio.move_on_after(KILL_TIMEOUT):
            try:
                await self.docker.containers.container(box.ref).kill(
                    signal="KILL", timeout=KILL_TIMEOUT
                )
            except (DockerNotFound, DockerConflict):
                pass  # already stopped or gone
            except DockerError as e:
                log.warning("could not kill container %s of %s: %s", box.name, box.spec.name, e)

    async def remove(self, box: Box) -> None:
        """Remove the container, shielded and bounded. Never raises.

        If Docker cannot remove it now, the janitor (if any) keeps trying later.
        """
        ref = box.ref
        function = box.spec.name
        with trio.CancelScope(shield=True):
            removed = False
            with trio.move_on_after(CLEANUP_TIMEOUT):
                try:
                    await remove_container(self.docker, ref, http_timeout=CLEANUP_TIMEOUT)
                    removed = True
                except DockerError as e:
                    log.error("could not remove container %s of %s: %s", shown(ref), function, e)
            if not removed:
                if self.janitor is not None:
                    self.janitor.remove_later(ref, function)
                else:
                    log.error("container %s of %s was not removed", shown(ref), function)
