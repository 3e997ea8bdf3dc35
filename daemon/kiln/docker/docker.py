"""aiodocker's ``aiodocker.docker`` module, for programs that import from it."""

from kiln.docker.api import Docker
from kiln.docker.host import DockerContextEndpoint

__all__ = ["Docker", "DockerContextEndpoint"]
