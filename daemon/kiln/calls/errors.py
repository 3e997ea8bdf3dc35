"""Errors a caller sees, and the one place Docker's failures become them.

Every failure that reaches an HTTP caller is a :class:`CallError`: an HTTP
status, a short machine-readable ``code`` and a human ``message``, plus an
optional ``retry_after`` (seconds) for 429/503. The API layer turns it into
``{"error": {"code": ..., "message": ...}}``.
"""

from __future__ import annotations

from kiln.docker import (
    DockerAPIError,
    DockerError,
    DockerNotFound,
    DockerTimeout,
    DockerUnreachable,
)
from kiln.functions.spec import FunctionSpec


class CallError(Exception):
    """A call failed in a way the caller is told about."""

    status: int = 500
    code: str = "internal"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.status}, {self.code!r}, {self.message!r})"


class NotFound(CallError):
    status = 404
    code = "not_found"


class BodyTooLarge(CallError):
    status = 413
    code = "body_too_large"


class RateLimited(CallError):
    status = 429
    code = "rate_limited"


class Unavailable(CallError):
    """503: queue full, no memory in time, draining, Docker unreachable."""

    status = 503
    code = "unavailable"


class FunctionFailed(CallError):
    """502: the function (or its container) failed."""

    status = 502
    code = "function_error"


class CallTimeout(CallError):
    """504: the function did not answer (or start) in time."""

    status = 504
    code = "timeout"


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
