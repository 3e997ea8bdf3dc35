"""The Docker client's exceptions, in one place.

::

    DockerError                  anything that went wrong talking to Docker
    ├── DockerUnreachable        no socket, connection refused/reset: Docker is down
    ├── DockerTimeout            Docker accepted the call but did not answer in time
    ├── DockerProtocolError      Docker answered something we cannot parse
    └── DockerAPIError           Docker answered with an error status (carries status + message)
        ├── DockerNotFound       404: no such container / image
        └── DockerConflict       409: name in use, container not running, removal in progress
"""

from __future__ import annotations


class DockerError(Exception):
    """Base class of every error raised by :class:`kiln.docker.DockerClient`."""


class DockerUnreachable(DockerError):
    """The Docker socket is missing, refuses connections, or dropped the connection."""


class DockerTimeout(DockerError):
    """Docker did not answer within the configured timeout."""


class DockerProtocolError(DockerError):
    """Docker's answer could not be understood (bad JSON, bad frame, bad upgrade)."""


class DockerAPIError(DockerError):
    """Docker answered with an HTTP error status; ``message`` is Docker's own text."""

    def __init__(self, status: int, message: str, *, operation: str = "") -> None:
        self.status = status
        self.message = message
        self.operation = operation
        prefix = f"{operation}: " if operation else ""
        super().__init__(f"{prefix}Docker answered {status}: {message}")


class DockerNotFound(DockerAPIError):
    """404 — the container or image does not exist."""


class DockerConflict(DockerAPIError):
    """409 — e.g. the name is in use or the container is not running."""
