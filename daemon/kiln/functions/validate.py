"""Small, strict readers for config values, each naming the key path it read.

Used by :mod:`kiln.config` (TOML) and by the control API (JSON specs), so a
bad value is reported the same way wherever it comes from:
``functions.echo.memory: must be above 0, got "-5MiB"``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NoReturn

from kiln.units import MAX_SIZE, parse_rate, parse_size

#: The largest integer any key takes unless it sets its own ``maximum``.
MAX_INTEGER = 2**31 - 1
#: How deeply a JSON/TOML document may nest before it is refused unread.
MAX_DEPTH = 32


class ConfigError(ValueError):
    """A configuration value is wrong. ``str()`` names the key path and the problem."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}" if path else problem)
        self.path = path
        self.problem = problem


def fail(path: str, problem: str) -> NoReturn:
    raise ConfigError(path, problem)


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def show(value: object, limit: int = 60) -> str:
    """A value for an error line: scalars by ``repr``, cut to ``limit`` characters.

    Containers are named by type only: their ``repr`` may be huge or nested
    deeper than the interpreter's recursion limit.
    """
    if isinstance(value, (str, int, float, bool)) or value is None:
        if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
            return f"an integer of {value.bit_length()} bits"
        text = repr(value)
        return text if len(text) <= limit else text[: limit - 4] + "...'"
    return _type_name(value)


def depth_problem(value: object, limit: int = MAX_DEPTH) -> str | None:
    """Why a parsed document nests too deeply to be read, or None.

    Iterative (no recursion), and a node shared by several parents (YAML
    aliases) is walked again only when reached deeper, so the walk stays
    linear in the document's size even for a cyclic or heavily shared one.
    """
    deepest: dict[int, int] = {}
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, Mapping):
            children: list[object] = list(item.values())
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth >= limit:
            return f"nested more than {limit} levels deep"
        if deepest.get(id(item), -1) >= depth:
            continue
        deepest[id(item)] = depth
        stack.extend((child, depth + 1) for child in children)
    return None


def check_text(path: str, value: str) -> None:
    """Refuse a string no program can take: NUL ends a C string (argv, env, paths)."""
    if "\x00" in value:
        fail(path, "must not contain a NUL byte")


def _type_name(value: object) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def check_number(
    path: str,
    value: object,
    *,
    minimum: float | None = None,
    exclusive_minimum: float | None = None,
    maximum: float | None = None,
) -> float:
    """A finite number within bounds. NaN and infinities are refused whatever the bounds."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        fail(path, f"must be a number, got {_type_name(value)}")
    try:
        number = float(value)
    except OverflowError:
        fail(path, f"is too large, got {show(value)}")
    if not math.isfinite(number):
        fail(path, f"must be a finite number, got {show(value)}")
    if minimum is not None and number < minimum:
        fail(path, f"must be at least {minimum:g}, got {show(value)}")
    if exclusive_minimum is not None and number <= exclusive_minimum:
        fail(path, f"must be above {exclusive_minimum:g}, got {show(value)}")
    if maximum is not None and number > maximum:
        fail(path, f"must be at most {maximum:g}, got {show(value)}")
    return number


class Table:
    """Reads keys out of one TOML/JSON table; :meth:`done` rejects keys nobody read."""

    def __init__(self, raw: object, path: str) -> None:
        if not isinstance(raw, Mapping):
            fail(path, f"must be a table, got {_type_name(raw)}")
        self.raw: Mapping[str, Any] = raw
        self.path = path
        self._seen: set[str] = set()

    def has(self, key: str) -> bool:
        return key in self.raw

    def _get(self, key: str) -> Any:
        self._seen.add(key)
        return self.raw.get(key)

    def key(self, key: str) -> str:
        return join(self.path, key)

    def table(self, key: str) -> Table:
        value = self._get(key)
        return Table({} if value is None else value, self.key(key))

    def string(
        self,
        key: str,
        default: str | None = None,
        *,
        choices: tuple[str, ...] = (),
        max_length: int = 4096,
    ) -> str:
        value = self._get(key)
        if value is None:
            if default is None:
                fail(self.key(key), "is required")
            return default
        if not isinstance(value, str):
            fail(self.key(key), f"must be a string, got {_type_name(value)}")
        if choices and value not in choices:
            fail(
                self.key(key), f"must be one of {', '.join(map(repr, choices))}, got {show(value)}"
            )
        check_text(self.key(key), value)
        if len(value) > max_length:
            fail(self.key(key), f"must be at most {max_length} characters, got {len(value)}")
        return value

    def optional_string(self, key: str) -> str | None:
        if self.raw.get(key) is None:
            self._seen.add(key)
            return None
        return self.string(key)

    def number(
        self,
        key: str,
        default: float,
        *,
        minimum: float | None = None,
        exclusive_minimum: float | None = None,
        maximum: float | None = None,
    ) -> float:
        value = self._get(key)
        if value is None:
            return default
        return check_number(
            self.key(key),
            value,
            minimum=minimum,
            exclusive_minimum=exclusive_minimum,
            maximum=maximum,
        )

    def optional_number(
        self, key: str, *, exclusive_minimum: float = 0, maximum: float
    ) -> float | None:
        if self.raw.get(key) is None:
            self._seen.add(key)
            return None
        return self.number(key, 0.0, exclusive_minimum=exclusive_minimum, maximum=maximum)

    def integer(
        self, key: str, default: int, *, minimum: int | None = None, maximum: int = MAX_INTEGER
    ) -> int:
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            fail(self.key(key), f"must be an integer, got {_type_name(value)}")
        if minimum is not None and value < minimum:
            fail(self.key(key), f"must be at least {minimum}, got {show(value)}")
        if value > maximum:
            fail(self.key(key), f"must be at most {maximum}, got {show(value)}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            fail(self.key(key), f"must be true or false, got {_type_name(value)}")
        return value

    def size(self, key: str, default: int, *, minimum: int = 1, maximum: int = MAX_SIZE - 1) -> int:
        """A size: ``"128MiB"`` or a plain integer number of bytes."""
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            fail(self.key(key), f'must be a size like "128MiB", got {_type_name(value)}')
        if isinstance(value, int):
            size = value
        else:
            check_text(self.key(key), value)
            if value.strip().startswith("-"):
                fail(self.key(key), f"must not be negative, got {show(value)}")
            try:
                size = parse_size(value)
            except ValueError as e:
                fail(self.key(key), str(e))
        if size < minimum:
            fail(self.key(key), f"must be at least {minimum} bytes, got {show(value)}")
        if size > maximum:
            fail(self.key(key), f"must be at most {maximum} bytes, got {show(value)}")
        return size

    def rate(self, key: str, *, maximum: float) -> float | None:
        """Calls per second: ``"100/s"``, ``"30/min"`` or a plain number per second."""
        value = self._get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            fail(self.key(key), f'must be a rate like "100/s", got {_type_name(value)}')
        if not isinstance(value, str):
            return check_number(self.key(key), value, exclusive_minimum=0, maximum=maximum)
        check_text(self.key(key), value)
        try:
            rate = parse_rate(value)
        except ValueError as e:
            fail(self.key(key), str(e))
        if rate > maximum:
            fail(self.key(key), f"must be at most {maximum:g}/s, got {show(value)}")
        return rate

    def string_list(
        self, key: str, *, max_items: int = 4096, allow_empty: bool = False
    ) -> tuple[str, ...] | None:
        value = self._get(key)
        if value is None:
            return None
        if isinstance(value, str):
            fail(
                self.key(key),
                f'must be a list of strings like ["sh", "-c", "..."], got a string {value!r}',
            )
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            fail(self.key(key), "must be a list of strings")
        if not value and not allow_empty:
            fail(self.key(key), "must not be empty (leave it out to use the image's own command)")
        if len(value) > max_items:
            fail(self.key(key), f"must have at most {max_items} items, got {len(value)}")
        for i, item in enumerate(value):
            check_text(f"{self.key(key)}[{i}]", item)
        return tuple(value)

    def string_map(self, key: str, *, max_items: int = 4096) -> dict[str, str]:
        value = self._get(key)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            fail(self.key(key), f"must be a table of strings, got {_type_name(value)}")
        if len(value) > max_items:
            fail(self.key(key), f"must have at most {max_items} entries, got {len(value)}")
        out: dict[str, str] = {}
        for k, v in value.items():
            if not isinstance(k, str) or "=" in k or "\x00" in k or not k:
                fail(join(self.key(key), show(k)), "is not a valid environment variable name")
            if not isinstance(v, (str, int, float)) or isinstance(v, bool):
                fail(join(self.key(key), k), f"must be a string, got {_type_name(v)}")
            if isinstance(v, str):
                check_text(join(self.key(key), k), v)
                out[k] = v
            else:
                check_number(join(self.key(key), k), v)
                out[k] = str(v)
        return out

    def done(self, allowed_extra: tuple[str, ...] = ()) -> None:
        """Reject keys that were never read: a typo must not be silently ignored."""
        unknown = [k for k in self.raw if k not in self._seen and k not in allowed_extra]
        if unknown:
            known = sorted(self._seen)
            first = unknown[0]
            fail(
                self.key(first if isinstance(first, str) and len(first) <= 60 else show(first)),
                f"unknown key (known keys here: {', '.join(known)})" if known else "unknown key",
            )
