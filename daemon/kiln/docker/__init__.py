"""Kiln's Docker Engine client (httpx over the Unix socket) and its errors."""

from kiln.docker.client import AttachStream, DockerClient, Limiter, WaitResult
from kiln.docker.errors import (
    DockerAPIError,
    DockerConflict,
    DockerError,
    DockerNotFound,
    DockerProtocolError,
    DockerTimeout,
    DockerUnreachable,
)
from kiln.docker.frames import STDERR, STDOUT, Frame, FrameDecoder

__all__ = [
    "STDERR",
    "STDOUT",
    "AttachStream",
    "DockerAPIError",
    "DockerClient",
    "DockerConflict",
    "DockerError",
    "DockerNotFound",
    "DockerProtocolError",
    "DockerTimeout",
    "DockerUnreachable",
    "Frame",
    "FrameDecoder",
    "Limiter",
    "WaitResult",
]
