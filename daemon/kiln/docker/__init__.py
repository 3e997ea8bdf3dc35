"""``kiln.docker``: an aiodocker-compatible Docker Engine client on anyio.

``import kiln.docker as aiodocker`` and a program written for aiodocker runs, under
asyncio or under Trio. Kiln's finer errors (:mod:`kiln.docker.errors`) are subclasses of
:class:`DockerError`.
"""

from kiln.docker.api import Docker, Limiter
from kiln.docker.containers import DockerContainer, DockerContainers
from kiln.docker.errors import (
    DockerAPIError,
    DockerConflict,
    DockerNotConnected,
    DockerNotFound,
    DockerProtocolError,
    DockerTimeout,
    DockerUnreachable,
)
from kiln.docker.events import DockerEvents, EventSubscriber
from kiln.docker.exceptions import (
    DockerContainerError,
    DockerContextInvalidError,
    DockerContextTLSError,
    DockerError,
)
from kiln.docker.execs import Exec
from kiln.docker.frames import STDERR, STDOUT, Frame, FrameDecoder
from kiln.docker.host import DockerContextEndpoint
from kiln.docker.images import DockerImages
from kiln.docker.networks import DockerNetwork, DockerNetworks
from kiln.docker.stream import Message, Stream
from kiln.docker.system import DockerSystem
from kiln.docker.volumes import DockerVolume, DockerVolumes

__all__ = [
    "STDERR",
    "STDOUT",
    "Docker",
    "DockerAPIError",
    "DockerConflict",
    "DockerContainer",
    "DockerContainerError",
    "DockerContainers",
    "DockerContextEndpoint",
    "DockerContextInvalidError",
    "DockerContextTLSError",
    "DockerError",
    "DockerEvents",
    "DockerImages",
    "DockerNetwork",
    "DockerNetworks",
    "DockerNotConnected",
    "DockerNotFound",
    "DockerProtocolError",
    "DockerSystem",
    "DockerTimeout",
    "DockerUnreachable",
    "DockerVolume",
    "DockerVolumes",
    "EventSubscriber",
    "Exec",
    "Frame",
    "FrameDecoder",
    "Limiter",
    "Message",
    "Stream",
]
