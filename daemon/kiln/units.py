"""Parsing and formatting of sizes (``"128MiB"``) and rates (``"100/s"``)."""

from __future__ import annotations

import math
import re

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

_SIZE_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": KiB,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": MiB,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": GiB,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1024 * GiB,
}

#: Sizes at or above this are refused everywhere (1 PiB: far above any host, far
#: below the int64 Docker and the kernel take).
MAX_SIZE = 1024**5

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|second|m|min|minute|h|hour)\s*$")
_RATE_PERIODS = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
}


def parse_size(text: str) -> int:
    """``"128MiB"`` → 134217728. Raises ValueError naming what is wrong."""
    m = _SIZE_RE.match(text)
    if not m:
        raise ValueError(f'{_short(text)} is not a size (write e.g. "128MiB", "1GiB", "512MB")')
    number, unit = m.groups()
    factor = _SIZE_UNITS.get(unit.lower())
    if factor is None:
        raise ValueError(
            f"{_short(text)} has an unknown unit {_short(unit)} (use B, KiB, MiB, GiB, KB, MB, GB)"
        )
    size = float(number) * factor
    if not math.isfinite(size) or size >= MAX_SIZE:
        raise ValueError(f"{_short(text)} is too large (the limit is 1 PiB)")
    return int(size)


def format_size(n: int | float) -> str:
    """134217728 → ``"128 MiB"``; 3758096384 → ``"3.5 GiB"``."""
    value = float(n)
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if abs(value) >= size:
            q = value / size
            return f"{q:.0f} {unit}" if q == int(q) else f"{q:.1f} {unit}"
    return f"{int(value)} B"


def parse_rate(text: str) -> float:
    """``"100/s"`` → 100.0 per second; ``"30/min"`` → 0.5. Raises ValueError."""
    m = _RATE_RE.match(text)
    if not m:
        raise ValueError(f'{_short(text)} is not a rate (write e.g. "100/s", "30/min")')
    number, period = m.groups()
    rate = float(number) / _RATE_PERIODS[period]
    if not math.isfinite(rate):
        raise ValueError(f"{_short(text)} is too large")
    if rate <= 0:
        raise ValueError(f"{_short(text)}: a rate must be above zero")
    return rate


def _short(text: str, limit: int = 40) -> str:
    """``repr(text)``, cut to ``limit`` characters so an error line stays a line."""
    shown = repr(text)
    return shown if len(shown) <= limit else shown[: limit - 4] + "...'"
