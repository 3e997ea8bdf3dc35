"""Small, strict readers for config values, each naming the key path it read.

Used by :mod:`kiln.config` (TOML) and by the control API (JSON specs), so a
bad value is reported the same way wherever it comes from:
``functions.echo.memory: must be above 0, got "-5MiB"``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NoReturn

from kiln.units import parse_rate, parse_size


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


def _type_name(value: object) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)


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

    def string(self, key: str, default: str | None = None, *, choices: tuple[str, ...] = ()) -> str:
        value = self._get(key)
        if value is None:
            if default is None:
                fail(self.key(key), "is required")
            return default
        if not isinstance(value, str):
            fail(self.key(key), f"must be a string, got {_type_name(value)}")
        if choices and value not in choices:
            fail(self.key(key), f"must be one of {', '.join(map(repr, choices))}, got {value!r}")
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
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fail(self.key(key), f"must be a number, got {_type_name(value)}")
        number = float(value)
        if minimum is not None and number < minimum:
            fail(self.key(key), f"must be at least {minimum:g}, got {value!r}")
        if exclusive_minimum is not None and number <= exclusive_minimum:
            fail(self.key(key), f"must be above {exclusive_minimum:g}, got {value!r}")
        if maximum is not None and number > maximum:
            fail(self.key(key), f"must be at most {maximum:g}, got {value!r}")
        return number

    def optional_number(self, key: str, *, exclusive_minimum: float = 0) -> float | None:
        if self.raw.get(key) is None:
            self._seen.add(key)
            return None
        return self.number(key, 0.0, exclusive_minimum=exclusive_minimum)

    def integer(self, key: str, default: int, *, minimum: int | None = None) -> int:
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            fail(self.key(key), f"must be an integer, got {_type_name(value)}")
        if minimum is not None and value < minimum:
            fail(self.key(key), f"must be at least {minimum}, got {value!r}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            fail(self.key(key), f"must be true or false, got {_type_name(value)}")
        return value

    def size(self, key: str, default: int, *, minimum: int = 1) -> int:
        """A size: ``"128MiB"`` or a plain integer number of bytes."""
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            fail(self.key(key), f'must be a size like "128MiB", got {_type_name(value)}')
        if isinstance(value, int):
            size = value
        else:
            if value.strip().startswith("-"):
                fail(self.key(key), f"must not be negative, got {value!r}")
            try:
                size = parse_size(value)
            except ValueError as e:
                fail(self.key(key), str(e))
        if size < minimum:
            fail(self.key(key), f"must be at least {minimum} bytes, got {value!r}")
        return size

    def rate(self, key: str) -> float | None:
        value = self._get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            fail(self.key(key), f'must be a rate like "100/s", got {_type_name(value)}')
        if isinstance(value, str):
            try:
                return parse_rate(value)
            except ValueError as e:
                fail(self.key(key), str(e))
        if value <= 0:
            fail(self.key(key), f"must be above 0, got {value!r}")
        return float(value)

    def string_list(self, key: str) -> tuple[str, ...] | None:
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
        if not value:
            fail(self.key(key), "must not be empty (leave it out to use the image's own command)")
        return tuple(value)

    def string_map(self, key: str) -> dict[str, str]:
        value = self._get(key)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            fail(self.key(key), f"must be a table of strings, got {_type_name(value)}")
        out: dict[str, str] = {}
        for k, v in value.items():
            if not isinstance(v, (str, int, float)) or isinstance(v, bool):
                fail(join(self.key(key), k), f"must be a string, got {_type_name(v)}")
            if "=" in k or not k:
                fail(join(self.key(key), k), "is not a valid environment variable name")
            out[k] = str(v)
        return out

    def done(self, allowed_extra: tuple[str, ...] = ()) -> None:
        """Reject keys that were never read: a typo must not be silently ignored."""
        unknown = [k for k in self.raw if k not in self._seen and k not in allowed_extra]
        if unknown:
            known = sorted(self._seen)
            fail(
                self.key(unknown[0]),
                f"unknown key (known keys here: {', '.join(known)})" if known else "unknown key",
            )
