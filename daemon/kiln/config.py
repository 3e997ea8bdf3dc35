"""The daemon's configuration: TOML → validated, frozen objects.

Every problem is reported as ``ConfigError`` whose text names the key path,
e.g. ``functions.echo.memory: must be at least 6291456 bytes, got "1MiB"``.
Unknown keys are errors: a typo must never be silently ignored.
"""

from __future__ import annotations

import ipaddress
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from kiln.functions.fnyaml import expand_from
from kiln.functions.spec import (
    MAX_SECONDS,
    FunctionSpec,
    network_problem,
    network_refusal,
    parse_function,
)
from kiln.functions.validate import ConfigError, Table, depth_problem, fail, show
from kiln.units import GiB, MiB

#: AF_UNIX paths are at most 107 bytes (108 with the terminating NUL).
MAX_SOCKET_PATH = 107

__all__ = [
    "AsyncConfig",
    "Config",
    "ConfigError",
    "DaemonConfig",
    "DockerConfig",
    "LimitsConfig",
    "LogsConfig",
    "MetricsConfig",
    "load",
    "parse",
]

AUTH_MODES = ("none", "token")
FORWARD_MODES = ("auto", "journal", "stderr", "off")
DOCKER_LOG_DRIVERS = ("none", "json-file", "local")


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
    #: A request body must arrive within this many seconds of its head (else 408).
    body_timeout: float = 60.0
    #: Open invoke connections; 0: derived from RLIMIT_NOFILE.
    max_connections: int = 0
    auth: str = "none"  # "none" | "token": bearer tokens for the invoke API
    allow_unauthenticated: bool = False  # listen beyond loopback without auth
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
    #: User-defined Docker networks functions may join (beside "none" and "bridge").
    networks: tuple[str, ...] = ()
    #: Size of the tmpfs holding hot containers' listener dirs (``run_dir/iofs``).
    iofs_size: int = 64 * MiB


@dataclass(frozen=True)
class AsyncConfig:
    """``[async]``: the durable queue of async calls (kiln.asyncq)."""

    #: "sqlite" (a file under [daemon] state_dir) or a "postgresql://…" URL.
    store: str = "sqlite"
    queue_max: int = 100_000
    #: Seconds finished calls (and their idempotency keys) are kept.
    retention: float = 24 * 3600.0
    #: This host's name in the store ("" = "<hostname>/<daemon id>").
    host: str = ""
    #: A claimed call's lease covers its longest possible run plus this (seconds):
    #: slack for clock skew between hosts. Another host takes it over after that.
    lease_margin: float = 30.0


@dataclass(frozen=True)
class LogsConfig:
    """Function logs: the in-memory ring per function, its flood limit, the file mirror."""

    lines_per_function: int = 10_000
    bytes_per_function: int = 8 * MiB
    max_line: int = 16 * 1024
    rate: float = 1000.0  # lines per second per function
    burst: int = 2000
    mirror: bool = False
    dir: str = ""  # default: state_dir/logs
    file_size: int = 10 * MiB
    file_count: int = 5
    forward: str = "auto"  # function lines in the daemon's log: auto | journal | stderr | off
    docker_driver: str = "none"  # dockerd's own copy: none | json-file | local
    call_frames: bool = True  # ask hot FDKs for Fn's log frames (exact call attribution)


@dataclass(frozen=True)
class MetricsConfig:
    per_function: bool = True  # a `function` label on the call-phase histograms
    require_token: bool = False  # GET /metrics needs a bearer token (auth = "token")


@dataclass(frozen=True)
class Config:
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    docker: DockerConfig = field(default_factory=DockerConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    async_: AsyncConfig = field(default_factory=AsyncConfig)
    logs: LogsConfig = field(default_factory=LogsConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
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


def _socket_path(t: Table, key: str, default: str) -> str:
    value = t.string(key, default)
    if not value:
        fail(t.key(key), "must not be empty")
    if len(value.encode()) > MAX_SOCKET_PATH:
        fail(
            t.key(key), f"a Unix socket path is at most {MAX_SOCKET_PATH} bytes, got {show(value)}"
        )
    return value


def _dir(t: Table, key: str, default: str) -> str:
    value = t.string(key, default, max_length=1024)
    if not value:
        fail(t.key(key), "must not be empty")
    return value


def _daemon(t: Table) -> DaemonConfig:
    d = DaemonConfig()
    out = DaemonConfig(
        listen=_listen(t, "listen", d.listen),
        id=t.string("id", d.id, max_length=32),
        max_body=t.size("max_body", d.max_body, minimum=0, maximum=4 * GiB),
        max_response=t.size("max_response", d.max_response, minimum=1, maximum=4 * GiB),
        log_level=t.string("log_level", d.log_level, choices=LOG_LEVELS),
        drain_timeout=t.number("drain_timeout", d.drain_timeout, minimum=0, maximum=MAX_SECONDS),
        control_socket=_socket_path(t, "control_socket", d.control_socket),
        control_group=t.string("control_group", d.control_group, max_length=256),
        state_dir=_dir(t, "state_dir", d.state_dir),
        run_dir=_dir(t, "run_dir", d.run_dir),
        body_timeout=t.number("body_timeout", d.body_timeout, exclusive_minimum=0, maximum=3600),
        max_connections=t.integer("max_connections", d.max_connections, minimum=0, maximum=1 << 20),
        auth=t.string("auth", d.auth, choices=AUTH_MODES),
        allow_unauthenticated=t.boolean("allow_unauthenticated", d.allow_unauthenticated),
        hot_connection_idle=t.number(
            "hot_connection_idle", d.hot_connection_idle, exclusive_minimum=0, maximum=3600
        ),
    )
    if out.auth == "none" and not out.allow_unauthenticated and not is_local_listen(out.listen):
        fail(
            t.key("listen"),
            f"{out.listen} is reachable beyond this host and the invoke API has no "
            'authentication: set [daemon] auth = "token" (and create tokens with '
            "`kiln token create`), listen on 127.0.0.1, or set "
            "[daemon] allow_unauthenticated = true to accept anyone who can reach it",
        )
    if not out.id or not all(c.isascii() and (c.isalnum() or c in "-_.") for c in out.id):
        fail(t.key("id"), f"must be letters, digits, - _ . only, got {show(out.id)}")
    t.done()
    return out


def is_local_listen(listen: str) -> bool:
    """A Unix socket or a loopback address (``localhost``, 127.0.0.0/8, ``[::1]``)."""
    if listen.startswith("unix:"):
        return True
    host = listen.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def _logs(t: Table) -> LogsConfig:
    d = LogsConfig()
    out = LogsConfig(
        lines_per_function=t.integer("lines_per_function", d.lines_per_function, minimum=1),
        bytes_per_function=t.size("bytes_per_function", d.bytes_per_function, minimum=1024),
        max_line=t.size("max_line", d.max_line, minimum=80),
        rate=t.number("rate", d.rate, exclusive_minimum=0, maximum=1e9),
        burst=t.integer("burst", d.burst, minimum=1),
        mirror=t.boolean("mirror", d.mirror),
        dir=t.string("dir", d.dir, max_length=1024),
        file_size=t.size("file_size", d.file_size, minimum=4096),
        file_count=t.integer("file_count", d.file_count, minimum=1),
        forward=t.string("forward", d.forward, choices=FORWARD_MODES),
        docker_driver=t.string("docker_driver", d.docker_driver, choices=DOCKER_LOG_DRIVERS),
        call_frames=t.boolean("call_frames", d.call_frames),
    )
    t.done()
    return out


def _metrics(t: Table) -> MetricsConfig:
    d = MetricsConfig()
    out = MetricsConfig(
        per_function=t.boolean("per_function", d.per_function),
        require_token=t.boolean("require_token", d.require_token),
    )
    t.done()
    return out


def _docker(t: Table) -> DockerConfig:
    d = DockerConfig()
    out = DockerConfig(
        socket=_socket_path(t, "socket", d.socket),
        timeout=t.number("timeout", d.timeout, exclusive_minimum=0, maximum=3600),
        create_rate=t.number("create_rate", d.create_rate, exclusive_minimum=0, maximum=10_000),
        create_burst=t.integer("create_burst", d.create_burst, minimum=1, maximum=10_000),
        max_inflight=t.integer("max_inflight", d.max_inflight, minimum=1, maximum=1024),
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
        queue_max=t.integer("queue_max", d.queue_max, minimum=0, maximum=1_000_000),
        queue_wait=t.number("queue_wait", d.queue_wait, minimum=0, maximum=MAX_SECONDS),
        async_fraction=t.number("async_fraction", d.async_fraction, minimum=0, maximum=1),
        networks=_networks(t),
        iofs_size=t.size("iofs_size", d.iofs_size, minimum=MiB, maximum=64 * GiB),
    )
    t.done()
    return out


def _async(t: Table) -> AsyncConfig:
    d = AsyncConfig()
    store = t.string("store", d.store)
    if store != "sqlite" and not store.startswith(("postgresql://", "postgres://")):
        fail(t.key("store"), f'must be "sqlite" or a postgresql:// URL, got {store!r}')
    out = AsyncConfig(
        store=store,
        queue_max=t.integer("queue_max", d.queue_max, minimum=0),
        retention=t.number("retention", d.retention, minimum=0),
        host=t.string("host", d.host),
        lease_margin=t.number("lease_margin", d.lease_margin, minimum=0),
    )
    t.done()
    return out


def _networks(t: Table) -> tuple[str, ...]:
    names = t.string_list("networks", max_items=256, allow_empty=True)
    if names is None:
        return ()
    for i, name in enumerate(names):
        refusal = network_refusal(name)
        if refusal is not None:
            fail(f"{t.key('networks')}[{i}]", refusal)
    return tuple(names)


def parse(
    raw: Mapping[str, object], source: str = "<config>", base_dir: Path | None = None
) -> Config:
    """Validate a parsed TOML document. ``from`` paths are relative to ``base_dir`` (else cwd)."""
    problem = depth_problem(raw)
    if problem is not None:
        fail("", f"{source}: {problem}")
    base = base_dir if base_dir is not None else Path(".")
    top = Table(raw, "")
    daemon = _daemon(top.table("daemon"))
    docker = _docker(top.table("docker"))
    limits = _limits(top.table("limits"))
    async_ = _async(top.table("async"))
    logs = _logs(top.table("logs"))
    metrics = _metrics(top.table("metrics"))
    if metrics.require_token and daemon.auth != "token":
        fail("metrics.require_token", 'needs [daemon] auth = "token"')
    fns_table = top.table("functions")
    functions = {
        name: parse_function(
            name, expand_from(body, fns_table.key(name), base), fns_table.key(name)
        )
        for name, body in fns_table.raw.items()
    }
    for spec in functions.values():
        refused = network_problem(spec, limits.networks)
        if refused is not None:
            fail("", refused)
    top.done()
    return Config(
        daemon=daemon,
        docker=docker,
        limits=limits,
        async_=async_,
        logs=logs,
        metrics=metrics,
        functions=functions,
        source=source,
    )


def load(path: str | Path) -> Config:
    """Read and validate a TOML file. Raises ConfigError (also for I/O and TOML syntax)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError("", f"cannot read config {p}: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise ConfigError("", f"{p}: not UTF-8 text: {e.reason} at byte {e.start}") from e
    return parse(read_toml(text, str(p)), source=str(p), base_dir=p.parent)


def read_toml(text: str, source: str) -> dict[str, object]:
    """Parse TOML text; every way it can fail is a ConfigError naming ``source``."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("", f"{source}: not valid TOML: {e}") from e
    except RecursionError as e:
        raise ConfigError("", f"{source}: not valid TOML: nested too deeply") from e
    except ValueError as e:  # e.g. an integer of more digits than Python converts
        raise ConfigError("", f"{source}: not valid TOML: {e}") from e
