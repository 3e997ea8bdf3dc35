"""What a caller is told when Docker fails us (DESIGN.md, "Errors a caller sees")."""

from __future__ import annotations

from kiln.docker import (
    DockerAPIError,
    DockerError,
    DockerNotFound,
    DockerTimeout,
    DockerUnreachable,
)
from kiln.errors import CallError, FunctionFailed, Unavailable
from kiln.functions import FunctionSpec

DOCKER_RETRY_AFTER = 5.0


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
