"""The errors of the aiodocker-compatible layer.

``DockerError`` is what every failed call raises: ``status`` is the HTTP status Docker
answered with (900 when the failure happened on the client's side, e.g. the socket is
missing), ``message`` is Docker's own text. Kiln's finer kinds (unreachable, not
answering, not found, conflict) are subclasses, in :mod:`kiln.docker.errors`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

CLIENT_SIDE = 900


class DockerError(Exception):
    """Docker answered with an error status, or could not be talked to."""

    def __init__(self, status: int, message: str | Mapping[str, Any], *args: Any) -> None:
        if isinstance(message, Mapping):
            message = str(message.get("message", ""))
        super().__init__(status, message, *args)
        self.status = status
        self.message = message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.status}, {self.message!r})"

    def __str__(self) -> str:
        return f"DockerError({self.status}, '{self.message}')"


class DockerContainerError(DockerError):
    """A container was created but could not be started; it is left in place."""

    def __init__(
        self, status: int, message: str | Mapping[str, Any], container_id: str, *args: Any
    ) -> None:
        super().__init__(status, message, container_id, *args)
        self.container_id = container_id

    def __str__(self) -> str:
        return f"DockerContainerError({self.status}, '{self.message}', {self.container_id!r})"


class DockerContextInvalidError(DockerError):
    """The named Docker context does not exist or its metadata cannot be read."""

    def __init__(self, context_name: str, message: str = "") -> None:
        super().__init__(CLIENT_SIDE, message or f"Docker context {context_name!r} is not valid")
        self.context_name = context_name


class DockerContextTLSError(DockerError):
    """The Docker context's TLS material is missing or unusable."""

    def __init__(self, context_name: str, message: str = "") -> None:
        super().__init__(
            CLIENT_SIDE, message or f"Docker context {context_name!r} has unusable TLS material"
        )
        self.context_name = context_name


__all__ = [
    "CLIENT_SIDE",
    "DockerContainerError",
    "DockerContextInvalidError",
    "DockerContextTLSError",
    "DockerError",
]
