"""Fn's ``func.yaml``, read as a Kiln function.

An Fn user's file is used as it is (``kiln deploy func.yaml``, or
``from = "func.yaml"`` in a ``[functions.NAME]`` table). What Kiln reads:

=============== ===============================================================
``name``        the function's name (and, with ``version``, its image)
``image``       the image; without it ``name:version`` (what ``fn build`` tags),
                or ``name`` alone when there is no ``version``
``memory``      MiB, as in Fn (``128`` → 128 MiB)
``timeout``     seconds a call may run
``idle_timeout`` seconds an idle hot container is kept
``config``      the function's environment (``KEY: value``)
``format``      ``http-stream`` (the default, as Fn's FDK images expect) or
                ``default`` (Fn's name for one container per call: Kiln's ``stdio``)
``kiln``        a table of Kiln's own keys (``min_warm``, ``max_containers``,
                ``cmd``, ``cpus``, ``rate``, ``network``, ``pids_limit``,
                ``start_timeout``, ``user``)
=============== ===============================================================

Fn fields that only matter to ``fn build`` or Fn's server (:data:`IGNORED`:
``runtime``, ``build_image``, ``build``, ``triggers``, ...) are accepted and
reported back so the user knows they have no effect. Any other key is an
error that names it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kiln.functions.spec import check_name, parse_function
from kiln.functions.validate import ConfigError, Table, depth_problem, fail
from kiln.units import MiB

#: Fn's func.yaml fields that Kiln accepts but does not use, and why.
IGNORED: Mapping[str, str] = {
    "schema_version": "the file's schema version",
    "runtime": "a build hint for fn build",
    "build_image": "a build hint for fn build",
    "run_image": "a build hint for fn build",
    "entrypoint": "a build hint for fn build (the image has it)",
    "cmd": "a build hint for fn build (the image has it; use kiln.cmd to override)",
    "build": "build steps for fn build",
    "expects": "fn's config checks",
    "triggers": "every function is reachable at /invoke/NAME[/path]",
    "annotations": "Fn server annotations",
    "content_type": "the caller's Content-Type is passed to the function",
    "type": "calls are synchronous (sync)",
}

#: Kiln's own keys allowed under ``kiln:`` (those Fn has no field for).
KILN_KEYS: tuple[str, ...] = (
    "cmd",
    "cpus",
    "max_containers",
    "min_warm",
    "network",
    "pids_limit",
    "rate",
    "start_timeout",
    "user",
)

#: The func.yaml fields Kiln reads.
FN_FIELDS: tuple[str, ...] = (
    "name",
    "version",
    "image",
    "memory",
    "timeout",
    "idle_timeout",
    "config",
    "format",
)

#: Docker refuses memory limits below 6 MiB.
MIN_MEMORY_MIB = 6

#: Fn's ``format`` values → Kiln's.
FORMATS: Mapping[str, str] = {"http-stream": "http-stream", "default": "stdio"}


@dataclass(frozen=True)
class FnFunction:
    """A func.yaml read as a Kiln function table (what :func:`parse_function` reads)."""

    name: str
    table: dict[str, Any]
    #: Fn fields present in the file that Kiln does not use, in file order.
    ignored: tuple[str, ...] = ()

    def notes(self) -> list[str]:
        """One line per ignored field, for the user."""
        return [f"{key}: ignored by Kiln ({IGNORED[key]})" for key in self.ignored]


def from_fn(raw: object) -> FnFunction:
    """Read a parsed func.yaml. Raises :class:`ConfigError` naming the bad key."""
    if raw is None:
        fail("", "the file is empty: it needs at least name (and image, or version)")
    t = Table(raw, "")
    name = t.string("name")
    check_name(name, "name")
    version = t.optional_string("version")
    image = t.optional_string("image")
    if image is None:
        image = f"{name}:{version}" if version else name
    if not image.strip():
        fail("image", "must not be empty")
    if isinstance(t.raw.get("memory"), str):
        fail("memory", f"is in MiB, as in Fn: write 128, not {t.raw['memory']!r}")
    memory = t.integer("memory", 128, minimum=MIN_MEMORY_MIB)
    table: dict[str, Any] = {
        "image": image,
        "memory": memory * MiB,
        "timeout": t.number("timeout", 30.0, exclusive_minimum=0),
        "idle_timeout": t.number("idle_timeout", 30.0, minimum=0),
        "format": FORMATS[t.string("format", "http-stream", choices=tuple(FORMATS))],
        "env": t.string_map("config"),
    }
    kiln = t.table("kiln")
    for key in kiln.raw:
        if key not in KILN_KEYS:
            fail(
                kiln.key(key),
                "is Fn's field: set it at the top level"
                if key in FN_FIELDS
                else f"unknown key (Kiln's keys here: {', '.join(KILN_KEYS)})",
            )
    table.update(kiln.raw)
    ignored = tuple(k for k in t.raw if k in IGNORED)
    t.done(allowed_extra=tuple(IGNORED))
    parse_function(name, table, "kiln")  # only kiln.* can still be wrong here
    return FnFunction(name, table, ignored)


def load_fn_yaml(path: str | Path) -> FnFunction:
    """Read a func.yaml file. Raises :class:`ConfigError` (``FILE: key: problem``)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(str(p), f"cannot read: {getattr(e, 'strerror', None) or e}") from e
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(str(p), f"not valid YAML: {e}") from e
    except RecursionError as e:
        raise ConfigError(str(p), "not valid YAML: nested too deeply") from e
    except ValueError as e:  # e.g. an integer of more digits than Python converts
        raise ConfigError(str(p), f"not valid YAML: {e}") from e
    nested = depth_problem(raw)
    if nested is not None:
        raise ConfigError(str(p), nested)
    try:
        return from_fn(raw)
    except ConfigError as e:
        raise ConfigError(str(p), str(e)) from e


def is_fn_yaml(path: str | Path) -> bool:
    """Whether a file name says YAML (``func.yaml``, ``x.yml``)."""
    return Path(path).suffix.lower() in (".yaml", ".yml")


def expand_from(body: object, path: str, base: Path) -> object:
    """A ``[functions.NAME]`` table with ``from = "func.yaml"``: the file's function, then the
    table's own keys, which win (``env`` entries are merged, the table's winning).

    ``from`` is relative to ``base`` (the config file's directory). Any other
    value comes back unchanged. The func.yaml's ``name`` is not used: the
    table's NAME is the function's name.
    """
    if not isinstance(body, Mapping) or "from" not in body:
        return body
    ref = body["from"]
    key = f"{path}.from"
    if not isinstance(ref, str) or not ref.strip():
        fail(key, "must be the path of an Fn func.yaml")
    try:
        fn = load_fn_yaml(base / ref)
    except ConfigError as e:
        raise ConfigError(key, str(e)) from e
    own = {k: v for k, v in body.items() if k != "from"}
    merged: dict[str, Any] = {**fn.table, **own}
    if isinstance(own.get("env"), Mapping):
        merged["env"] = {**fn.table["env"], **own["env"]}
    return merged
