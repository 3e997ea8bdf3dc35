"""One call, start to finish: look the function up, rate-limit, admit, run.

This is where Docker's failures become what a caller sees (DESIGN.md, "Errors a
caller sees"): Docker down or not answering → 503; the image missing → 502
naming it; any other Docker refusal → 502 with Docker's message.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import trio

from kiln.containers import Identity
from kiln.docker import (
    DockerAPIError,
    DockerClient,
    DockerError,
    DockerNotFound,
    DockerTimeout,
    DockerUnreachable,
)
from kiln.errors import CallError, FunctionFailed, NotFound, Unavailable
from kiln.functions import FunctionSpec
from kiln.stdio import run_stdio

log = logging.getLogger("kiln.invoke")

DOCKER_RETRY_AFTER = 5.0


@dataclass
class CallResult:
    status: int
    body: bytes
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


@dataclass
class Timings:
    """Phase durations of one call, in seconds (queue = waiting for memory)."""

    queue: float = 0.0
    start: float = 0.0
    run: float = 0.0
    cold: bool = False

    def header(self) -> bytes:
        return (
            f"queue={self.queue * 1000:.1f};start={self.start * 1000:.1f};run={self.run * 1000:.1f}"
        ).encode()


def docker_call_error(e: DockerError, spec: FunctionSpec) -> CallError:
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


class Invoker:
    """Runs calls. Owns no tasks: each call runs in its caller's task."""

    def __init__(
        self,
        *,
        docker: DockerClient,
        identity: Identity,
        functions: Mapping[str, FunctionSpec],
        max_response: int,
    ) -> None:
        self.docker = docker
        self.identity = identity
        self.functions: Mapping[str, FunctionSpec] = dict(functions)
        self.max_response = max_response
        self.draining = False

    def lookup(self, name: str) -> FunctionSpec:
        spec = self.functions.get(name)
        if spec is None:
            raise NotFound(f"no function named {name!r}", code="unknown_function")
        return spec

    async def invoke(self, name: str, body: bytes, call_id: str, timings: Timings) -> CallResult:
        """Run one call. Raises :class:`CallError` with the status the caller gets."""
        spec = self.lookup(name)
        if self.draining:
            raise Unavailable(
                "kiln is draining: not taking new calls", code="draining", retry_after=5
            )
        t0 = trio.current_time()
        try:
            output = await run_stdio(
                self.docker, spec, self.identity, call_id, body, max_output=self.max_response
            )
        except DockerError as e:
            raise docker_call_error(e, spec) from e
        finally:
            timings.run = trio.current_time() - t0
            timings.cold = True
        return CallResult(200, output, [(b"content-type", b"application/octet-stream")])
