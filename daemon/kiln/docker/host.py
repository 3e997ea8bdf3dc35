"""Where the Docker Engine is: the host resolution rules of the Docker CLI (and aiodocker).

``url=`` beats ``context=``, which beats ``$DOCKER_HOST``, ``$DOCKER_CONTEXT``, the CLI
config's ``currentContext``, and finally the usual socket paths. Everything here is
synchronous: a ``Docker()`` is made without awaiting anything.
"""

from __future__ import annotations

import hashlib
import json
import os
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.docker.exceptions import DockerContextInvalidError, DockerContextTLSError

SOCKET_CANDIDATES = ("/run/docker.sock", "/var/run/docker.sock")


@dataclass(frozen=True)
class DockerContextEndpoint:
    """A Docker context's ``docker`` endpoint: where and how to connect."""

    host: str
    skip_tls_verify: bool = False
    tls_ca: bytes | None = None
    tls_cert: bytes | None = None
    tls_key: bytes | None = None

    @property
    def has_tls(self) -> bool:
        return self.tls_ca is not None or self.tls_cert is not None


@dataclass(frozen=True)
class Endpoint:
    """The resolved connection: a unix socket path, or an HTTP(S) base URL."""

    docker_host: str  # what ``Docker.docker_host`` reports
    uds: str | None  # the socket path, for unix://
    base_url: str  # http://docker for unix sockets, http(s)://host:port otherwise
    ssl_context: ssl.SSLContext | None = None


def context_dir_name(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def _docker_config_dir(env: Mapping[str, str]) -> Path:
    if env.get("DOCKER_CONFIG"):
        return Path(env["DOCKER_CONFIG"])
    return Path(env.get("HOME") or os.path.expanduser("~")) / ".docker"


def current_context_name(env: Mapping[str, str]) -> str | None:
    """``currentContext`` from the CLI's ``config.json``, if set."""
    try:
        data = json.loads((_docker_config_dir(env) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    name = data.get("currentContext") if isinstance(data, dict) else None
    return name if isinstance(name, str) and name else None


def _read_optional(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def load_context(name: str, env: Mapping[str, str]) -> DockerContextEndpoint:
    """The ``docker`` endpoint of the named context (from its meta.json and TLS files)."""
    base = _docker_config_dir(env) / "contexts"
    digest = context_dir_name(name)
    try:
        meta: Any = json.loads((base / "meta" / digest / "meta.json").read_text())
        endpoint = meta["Endpoints"]["docker"]
        host = endpoint["Host"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DockerContextInvalidError(name, f"cannot read Docker context {name!r}: {e}") from e
    if not isinstance(host, str) or not host:
        raise DockerContextInvalidError(name, f"Docker context {name!r} has no docker Host")
    tls_dir = base / "tls" / digest / "docker"
    try:
        ca = _read_optional(tls_dir / "ca.pem")
        cert = _read_optional(tls_dir / "cert.pem")
        key = _read_optional(tls_dir / "key.pem")
    except OSError as e:
        raise DockerContextTLSError(name, f"cannot read Docker context {name!r} TLS: {e}") from e
    if (cert is None) != (key is None):
        raise DockerContextTLSError(name, f"Docker context {name!r} has a cert without a key")
    return DockerContextEndpoint(
        host=host,
        skip_tls_verify=bool(endpoint.get("SkipTLSVerify", False)),
        tls_ca=ca,
        tls_cert=cert,
        tls_key=key,
    )


def _context_ssl(ctx: DockerContextEndpoint, name: str) -> ssl.SSLContext:
    try:
        sslctx = ssl.create_default_context(
            cadata=ctx.tls_ca.decode() if ctx.tls_ca is not None else None
        )
        if ctx.skip_tls_verify:
            sslctx.check_hostname = False
            sslctx.verify_mode = ssl.CERT_NONE
        if ctx.tls_cert is not None and ctx.tls_key is not None:
            import tempfile  # load_cert_chain reads files only

            with tempfile.TemporaryDirectory() as tmp:
                cert, key = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
                cert.write_bytes(ctx.tls_cert)
                key.write_bytes(ctx.tls_key)
                sslctx.load_cert_chain(cert, key)
    except (ssl.SSLError, ValueError, OSError) as e:
        raise DockerContextTLSError(name, f"Docker context {name!r}: bad TLS material: {e}") from e
    return sslctx


def _env_ssl(env: Mapping[str, str]) -> ssl.SSLContext | None:
    """``$DOCKER_TLS_VERIFY`` / ``$DOCKER_CERT_PATH`` as the CLI reads them."""
    cert_path = env.get("DOCKER_CERT_PATH")
    verify = bool(env.get("DOCKER_TLS_VERIFY"))
    if not verify and not cert_path:
        return None
    directory = Path(cert_path) if cert_path else _docker_config_dir(env)
    ca = directory / "ca.pem"
    sslctx = ssl.create_default_context(cafile=str(ca) if verify and ca.exists() else None)
    if not verify:
        sslctx.check_hostname = False
        sslctx.verify_mode = ssl.CERT_NONE
    cert, key = directory / "cert.pem", directory / "key.pem"
    if cert.exists() and key.exists():
        sslctx.load_cert_chain(str(cert), str(key))
    return sslctx


def endpoint_for(host: str, ssl_context: ssl.SSLContext | None = None) -> Endpoint:
    """Turn a Docker host URL into how to connect to it."""
    if host.startswith("unix://"):
        path = host[len("unix://") :]
        return Endpoint("unix://localhost", uds=path, base_url="http://docker")
    if host.startswith("/"):
        return Endpoint("unix://localhost", uds=host, base_url="http://docker")
    for prefix in ("tcp://", "http://", "https://"):
        if host.startswith(prefix):
            rest = host[len(prefix) :].rstrip("/")
            scheme = "https" if prefix == "https://" or ssl_context is not None else "http"
            return Endpoint(host, uds=None, base_url=f"{scheme}://{rest}", ssl_context=ssl_context)
    raise ValueError(f"unsupported Docker host {host!r} (use unix://, tcp://, http(s)://)")


def resolve(
    url: str | None,
    context: str | None,
    env: Mapping[str, str],
    *,
    ssl_context: ssl.SSLContext | None = None,
    exists: Callable[[str], bool] = os.path.exists,
) -> Endpoint:
    """The endpoint a ``Docker(url=..., context=...)`` talks to."""
    if url:
        return endpoint_for(url, ssl_context)
    names: list[str | None] = []
    if context is not None:
        names.append(context)
    elif env.get("DOCKER_HOST"):
        return endpoint_for(env["DOCKER_HOST"], ssl_context or _env_ssl(env))
    else:
        names.append(env.get("DOCKER_CONTEXT") or current_context_name(env))
    name = names[0]
    if name and name != "default":
        ctx = load_context(name, env)
        tls = ssl_context or (_context_ssl(ctx, name) if ctx.has_tls else None)
        return endpoint_for(ctx.host, tls)
    if name == "default" and env.get("DOCKER_HOST"):
        return endpoint_for(env["DOCKER_HOST"], ssl_context or _env_ssl(env))
    home = env.get("HOME") or os.path.expanduser("~")
    for candidate in (*SOCKET_CANDIDATES, os.path.join(home, ".docker", "run", "docker.sock")):
        if exists(candidate):
            return endpoint_for("unix://" + candidate, ssl_context)
    raise DockerContextInvalidError(
        "default", "cannot find a Docker Engine: no DOCKER_HOST and no docker.sock"
    )


__all__ = [
    "DockerContextEndpoint",
    "Endpoint",
    "context_dir_name",
    "current_context_name",
    "endpoint_for",
    "load_context",
    "resolve",
]
