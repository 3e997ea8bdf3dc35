"""The daemon's configuration: TOML → validated, frozen objects.

Every problem is reported as ``ConfigError`` whose text names the key path,
e.g. ``functions.echo.memory: must be at least 6291456 bytes, got "1MiB"``.
Unknown keys are errors: a typo must never be silently ignored.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from kiln.functions.fnyaml import expand_from
from kiln.functions.spec import FunctionSpec, parse_function
from kiln.functions.validate import ConfigError, Table, fail
from kiln.units import MiB

__all__ = ["Config", "ConfigError", "DaemonConfig", "DockerConfig", "LimitsConfig", "load", "parse"]


@dataclass(frozen=True)
class DaemonConfig:
    listen: str = "127.0.0.1:8080"
    id: str = "default"
    max_body: int = 6 * MiB
    max_response: int = 6 * MiB
    log_level: str = "info"
    drain_timeout: float = 30.0
    control_socket: str = "/run/kiln/control.sock"
    control_group: str = "kiln"
    state_dir: str = "/var/lib/kiln"
    run_dir: str = "/run/kiln"
    #: Seconds a connection to a hot container may sit idle before Kiln closes it (as Fn).
    hot_connection_idle: float = 1.0


@dataclass(frozen=True)
class DockerConfig:
    socket: str = "/var/run/docker.sock"
    timeout: float = 30.0
    create_rate: float = 10.0
    create_burst: int = 20
    max_inflight: int = 32


@dataclass(frozen=True)
class LimitsConfig:
    memory: int | None = None  # None = "auto"
    queue_max: int = 100
    queue_wait: float = 10.0
    async_fraction: float = 0.5


@dataclass(frozen=True)
class Config:
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    docker: DockerConfig = field(default_factory=DockerConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    functions: Mapping[str, FunctionSpec] = field(default_factory=dict)
    source: str = "<defaults>"


LOG_LEVELS = ("debug", "info", "warning", "error")


def _listen(t: Table, key: str, default: str) -> str:
    value = t.string(key, default)
    if value.startswith("unix:"):
        if len(value) <= len("unix:"):
            fail(t.key(key), "unix: needs a socket path")
        return value
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        fail(t.key(key), f"must be HOST:PORT or unix:PATH, got {value!r}")
    return value


def _daemon(t: Table) -> DaemonConfig:
    d = DaemonConfig()
    out = DaemonConfig(
        listen=_listen(t, "listen", d.listen),
        id=t.string("id", d.id),
        max_body=t.size("max_body", d.max_body, minimum=0),
        max_response=t.size("max_response", d.max_response, minimum=1),
        log_level=t.string("log_level", d.log_level, choices=LOG_LEVELS),
        drain_timeout=t.number("drain_timeout", d.drain_timeout, minimum=0),
        control_socket=t.string("control_socket", d.control_socket),
        control_group=t.string("control_group", d.control_group),
        state_dir=t.string("state_dir", d.state_dir),
        run_dir=t.string("run_dir", d.run_dir),
        hot_connection_idle=t.number(
            "hot_connection_idle", d.hot_connection_idle, exclusive_minimum=0, maximum=3600
        ),
    )
    if not out.id or not all(c.isalnum() or c in "-_." for c in out.id):
        fail(t.key("id"), f"must be letters, digits, - _ . only, got {out.id!r}")
    t.done()
    return out


def _docker(t: Table) -> DockerConfig:
    d = DockerConfig()
    out = DockerConfig(
        socket=t.string("socket", d.socket),
        timeout=t.number("timeout", d.timeout, exclusive_minimum=0),
        create_rate=t.number("create_rate", d.create_rate, exclusive_minimum=0),
        create_burst=t.integer("create_burst", d.create_burst, minimum=1),
        max_inflight=t.integer("max_inflight", d.max_inflight, minimum=1),
    )
    t.done()
    return out


def _limits(t: Table) -> LimitsConfig:
    d = LimitsConfig()
    memory: int | None = None
    if t.has("memory") and t.raw["memory"] == "auto":
        t.string("memory")
    else:
        memory = t.size("memory", 0, minimum=MiB) if t.has("memory") else None
    out = LimitsConfig(
        memory=memory,
        queue_max=t.integer("queue_max", d.queue_max, minimum=0),
        queue_wait=t.number("queue_wait", d.queue_wait, minimum=0),
        async_fraction=t.number("async_fraction", d.async_fraction, minimum=0, maximum=1),
    )
    t.done()
    return out


def parse(
    raw: Mapping[str, object], source: str = "<config>", base_dir: Path | None = None
) -> Config:
    """Validate a parsed TOML document. ``from`` paths are relative to ``base_dir`` (else cwd)."""
    base = base_dir if base_dir is not None else Path(".")
    top = Table(raw, "")
    daemon = _daemon(top.table("daemon"))
    docker = _docker(top.table("docker"))
    limits = _limits(top.table("limits"))
    fns_table = top.table("functions")
    functions = {
        name: parse_function(
            name, expand_from(body, fns_table.key(name), base), fns_table.key(name)
        )
        for name, body in fns_table.raw.items()
    }
    top.done()
    return Config(daemon=daemon, docker=docker, limits=limits, functions=functions, source=source)


def load(path: str | Path) -> Config:
    """Read and validate a TOML file. Raises ConfigError (also for I/O and TOML syntax)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError("", f"cannot read config {p}: {e.strerror or e}") from e
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("", f"{p}: not valid TOML: {e}") from e
    return parse(raw, source=str(p), base_dir=p.parent)
