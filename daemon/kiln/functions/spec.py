"""The function spec: what a function is (an image plus limits) and how to read one.

The same reader serves the TOML config (``[functions.NAME]``) and JSON specs
from the control API, so both reject the same mistakes with the same words.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from kiln.functions.validate import Table, fail, show
from kiln.units import MiB, format_size

Format = Literal["stdio", "http-stream"]
FORMATS: tuple[Format, ...] = ("stdio", "http-stream")

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
ORIGIN_RE = re.compile(
    r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?$|^https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$"
)

#: Docker refuses memory limits below 6 MiB.
MIN_MEMORY = 6 * MiB

# Upper bounds: each far above any real use and far below what breaks a
# consumer (Docker's int64 fields, the kernel's pid limit, Trio's clock).
MAX_SECONDS = 86400.0  # timeout, start_timeout, idle_timeout: one day
MAX_CONTAINERS = 10_000  # min_warm, max_containers
MAX_RATE = 1_000_000.0  # calls per second
MIN_CPUS = 0.01  # Docker's smallest CPU quota
MAX_CPUS = 1024.0
MAX_PIDS = 4_194_304  # the kernel's PID_MAX_LIMIT

#: Functions run as this user unless their spec says otherwise: never root by default.
DEFAULT_USER = "1000:1000"
_ID = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}"
USER_RE = re.compile(rf"^{_ID}(:{_ID})?$")

IMAGE_RE = re.compile(r"^[!-~]{1,512}$")  # printable ASCII, no spaces

#: Networks every function may use; others only when ``[limits] networks`` lists them.
BUILTIN_NETWORKS = ("none", "bridge")
NETWORK_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class FunctionSpec:
    """A function: an image plus limits. Immutable; a changed spec is a new object."""

    name: str
    image: str
    cmd: tuple[str, ...] | None = None
    format: Format = "stdio"
    memory: int = 128 * MiB
    cpus: float | None = None
    timeout: float = 30.0
    start_timeout: float = 5.0
    idle_timeout: float = 30.0
    min_warm: int = 0
    max_containers: int = 10
    env: Mapping[str, str] = field(default_factory=dict)
    rate: float | None = None
    network: str = "none"
    pids_limit: int = 128
    user: str = DEFAULT_USER
    cors_origins: tuple[str, ...] = ()  # browser origins allowed to call it ("*": any)
    # Async calls (kiln.asyncq): retries after a retryable failure; whether a
    # function error (502) is retried too; how many of its async calls run at
    # once (None: max_containers).
    retries: int = 2
    retry_on_error: bool = False
    async_concurrency: int | None = None

    @property
    def async_limit(self) -> int:
        """How many of this function's async calls may run at once."""
        return self.async_concurrency or self.max_containers

    def to_json(self) -> dict[str, Any]:
        """The spec as a JSON/TOML-shaped table that :func:`parse_function` reads back."""
        out: dict[str, Any] = {
            "image": self.image,
            "format": self.format,
            "memory": self.memory,
            "timeout": self.timeout,
            "start_timeout": self.start_timeout,
            "idle_timeout": self.idle_timeout,
            "min_warm": self.min_warm,
            "max_containers": self.max_containers,
            "env": dict(self.env),
            "network": self.network,
            "pids_limit": self.pids_limit,
            "user": self.user,
        }
        if self.cmd is not None:
            out["cmd"] = list(self.cmd)
        if self.cpus is not None:
            out["cpus"] = self.cpus
        if self.rate is not None:
            out["rate"] = self.rate
        out["retries"] = self.retries
        out["retry_on_error"] = self.retry_on_error
        if self.async_concurrency is not None:
            out["async_concurrency"] = self.async_concurrency
        if self.cors_origins:
            out["cors_origins"] = list(self.cors_origins)
        return out


def never_fits(spec: FunctionSpec, capacity: int) -> str | None:
    """Why ``spec`` can never be admitted in a pool of ``capacity`` bytes, or None."""
    if spec.memory <= capacity:
        return None
    return (
        f"functions.{spec.name}.memory: {format_size(spec.memory)} can never fit: "
        f"Kiln has {format_size(capacity)} for containers on this host ([limits] memory)"
    )


#: The defaults of every optional key, in one place.
DEFAULTS = FunctionSpec(name="", image="")


def check_scale(min_warm: int, max_containers: int, path: str) -> None:
    """``min_warm``/``max_containers`` as any spec must have them (config, deploy, scale)."""
    if min_warm < 0:
        fail(f"{path}.min_warm", f"must be at least 0, got {min_warm}")
    if max_containers < 1:
        fail(f"{path}.max_containers", f"must be at least 1, got {max_containers}")
    if max_containers > MAX_CONTAINERS:
        fail(f"{path}.max_containers", f"must be at most {MAX_CONTAINERS}, got {max_containers}")
    if min_warm > max_containers:
        fail(f"{path}.min_warm", f"({min_warm}) must not exceed max_containers ({max_containers})")


def network_refusal(network: str) -> str | None:
    """Why ``network`` may never be given to a function, whatever the config lists, or None."""
    if network == "host":
        return '"host" is refused: it would share the host\'s network namespace'
    if network.startswith("container:"):
        return f"{show(network)} is refused: it would join another container's namespace"
    if not NETWORK_RE.match(network):
        return f"{show(network)} is not a network name"
    return None


def network_problem(spec: FunctionSpec, allowed: frozenset[str] | tuple[str, ...]) -> str | None:
    """Why this host will not give ``spec`` its network, or None.

    Only ``none``, ``bridge`` and the user networks the operator lists in
    ``[limits] networks`` are given to functions.
    """
    path = f"functions.{spec.name}.network"
    refusal = network_refusal(spec.network)
    if refusal is not None:
        return f"{path}: {refusal}"
    if spec.network in BUILTIN_NETWORKS or spec.network in allowed:
        return None
    listed = ", ".join(repr(n) for n in (*BUILTIN_NETWORKS, *sorted(allowed)))
    return (
        f"{path}: {show(spec.network)} is not allowed (allowed: {listed}; "
        "the operator lists user networks in [limits] networks)"
    )


def check_name(name: object, path: str) -> None:
    if not isinstance(name, str) or not NAME_RE.match(name):
        fail(
            path,
            f"function name {show(name)} must be 1-63 of a-z 0-9 _ - "
            "(starting with a letter or digit)",
        )


def parse_function(name: str, raw: object, path: str) -> FunctionSpec:
    """Read one function table. Raises :class:`kiln.validate.ConfigError` naming the key."""
    check_name(name, path)
    t = Table(raw, path)
    image = t.string("image")
    if not image.strip():
        fail(t.key("image"), "must not be empty")
    if not IMAGE_RE.match(image):
        fail(t.key("image"), f"must be an image reference without spaces, got {show(image)}")
    cmd = t.string_list("cmd")
    d = DEFAULTS
    fmt = t.string("format", d.format, choices=FORMATS)
    memory = t.size("memory", d.memory, minimum=MIN_MEMORY)
    cpus = t.optional_number("cpus", exclusive_minimum=0, maximum=MAX_CPUS)
    if cpus is not None and cpus < MIN_CPUS:
        fail(t.key("cpus"), f"must be at least {MIN_CPUS:g}, got {show(cpus)}")
    timeout = t.number("timeout", d.timeout, exclusive_minimum=0, maximum=MAX_SECONDS)
    start_timeout = t.number(
        "start_timeout", d.start_timeout, exclusive_minimum=0, maximum=MAX_SECONDS
    )
    idle_timeout = t.number("idle_timeout", d.idle_timeout, minimum=0, maximum=MAX_SECONDS)
    min_warm = t.integer("min_warm", d.min_warm, maximum=MAX_CONTAINERS)
    max_containers = t.integer("max_containers", d.max_containers, maximum=MAX_CONTAINERS)
    check_scale(min_warm, max_containers, path)
    env = t.string_map("env")
    rate = t.rate("rate", maximum=MAX_RATE)
    network = t.string("network", d.network)
    refusal = network_refusal(network)
    if refusal is not None:
        fail(t.key("network"), refusal)
    pids_limit = t.integer("pids_limit", d.pids_limit, minimum=1, maximum=MAX_PIDS)
    user = t.string("user", d.user)
    if not USER_RE.match(user):
        fail(
            t.key("user"),
            f'must be "UID", "UID:GID", "NAME" or "NAME:GROUP", got {show(user)}',
        )
    retries = t.integer("retries", d.retries, minimum=0)
    retry_on_error = t.boolean("retry_on_error", d.retry_on_error)
    async_concurrency = (
        t.integer("async_concurrency", 1, minimum=1) if t.has("async_concurrency") else None
    )
    cors_origins = _origins(t, "cors_origins")
    t.done()
    return FunctionSpec(
        name=name,
        image=image,
        cmd=cmd,
        format=fmt,  # type: ignore[arg-type]  # checked by choices
        memory=memory,
        cpus=cpus,
        timeout=timeout,
        start_timeout=start_timeout,
        idle_timeout=idle_timeout,
        min_warm=min_warm,
        max_containers=max_containers,
        env=env,
        rate=rate,
        network=network,
        pids_limit=pids_limit,
        retries=retries,
        retry_on_error=retry_on_error,
        async_concurrency=async_concurrency,
        user=user,
        cors_origins=cors_origins,
    )


def _origins(t: Table, key: str) -> tuple[str, ...]:
    """Browser origins: ``"*"`` or ``scheme://host[:port]`` (no path, no trailing slash)."""
    if t.raw.get(key) == []:
        t._get(key)  # an empty list: no origins (marks the key as read)
        return ()
    value = t.string_list(key) or ()
    for origin in value:
        if origin != "*" and not ORIGIN_RE.match(origin):
            fail(
                t.key(key),
                f'{show(origin)} is not an origin: give "*" or scheme://host[:port] '
                '(like "https://app.example"), no path',
            )
    return value
