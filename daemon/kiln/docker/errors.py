"""Kiln's finer kinds of :class:`~kiln.docker.exceptions.DockerError`, in one place.

::

    DockerError(status, message)   anything that went wrong talking to Docker
    ├── DockerUnreachable        no socket, connection refused/reset: Docker is down
    │   └── DockerNotConnected   no connection was made: the request never reached Docker
    ├── DockerTimeout            Docker did not answer in time (also a ``TimeoutError``)
    ├── DockerProtocolError      Docker answered something we cannot parse
    └── DockerAPIError           Docker answered with an error status
        ├── DockerNotFound       404: no such container / image
        └── DockerConflict       409: name in use, container not running, removal in progress

The client-side kinds carry status 900 (no answer from Docker).
"""

from __future__ import annotations

from kiln.docker.exceptions import CLIENT_SIDE, DockerError


class _ClientSide(DockerError):
    def __init__(self, message: str) -> None:
        super().__init__(CLIENT_SIDE, message)

    def __str__(self) -> str:
        return self.message


class DockerUnreachable(_ClientSide):
    """The Docker socket is missing, refuses connections, or dropped the connection."""


class DockerNotConnected(DockerUnreachable):
    """No connection to Docker could be made, so the request was never sent: a
    create that fails so created nothing (unlike one whose answer was lost)."""


class DockerTimeout(_ClientSide, TimeoutError):
    """Docker did not answer within the configured timeout."""


class DockerProtocolError(_ClientSide):
    """Docker's answer could not be understood (bad JSON, bad frame, bad upgrade)."""


class DockerAPIError(DockerError):
    """Docker answered with an HTTP error status; ``message`` is Docker's own text."""

    def __init__(self, status: int, message: str, *, operation: str = "") -> None:
        super().__init__(status, message)
        self.operation = operation

    def __str__(self) -> str:
        prefix = f"{self.operation}: " if self.operation else ""
        return f"{prefix}Docker answered {self.status}: {self.message}"


class DockerNotFound(DockerAPIError):
    """404 — the container or image does not exist."""


class DockerConflict(DockerAPIError):
    """409 — e.g. the name is in use or the container is not running."""


def api_error(status: int, message: str, operation: str = "") -> DockerAPIError:
    """The most precise error for Docker's error answer."""
    cls = {404: DockerNotFound, 409: DockerConflict}.get(status, DockerAPIError)
    return cls(status, message, operation=operation)


__all__ = [
    "DockerAPIError",
    "DockerConflict",
    "DockerError",
    "DockerNotConnected",
    "DockerNotFound",
    "DockerProtocolError",
    "DockerTimeout",
    "DockerUnreachable",
    "api_error",
]
