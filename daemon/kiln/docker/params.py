"""How calls' arguments become Docker's query parameters, and how its errors read."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

Params = Mapping[str, Any]


def httpize(params: Params | None) -> dict[str, str] | None:
    """Query parameters as Docker reads them: bools as 1/0, dicts and lists as JSON,
    None left out."""
    if params is None:
        return None
    out: dict[str, str] = {}
    for key, value in params.items():
        if value is None:
            continue
        if isinstance(value, bool):
            out[key] = "1" if value else "0"
        elif isinstance(value, (dict, list, tuple)):
            out[key] = json.dumps(value)
        else:
            out[key] = str(value)
    return out


def filters_param(filters: Mapping[str, Any] | None) -> str | None:
    """Docker's ``filters`` JSON: every value a list (scalars are wrapped)."""
    if not filters:
        return None
    return json.dumps(
        {k: list(v) if isinstance(v, (list, tuple, set)) else [v] for k, v in filters.items()}
    )


def error_message(body: bytes) -> str:
    try:
        data = json.loads(body)
        if isinstance(data, dict) and isinstance(data.get("message"), str):
            return str(data["message"])
    except ValueError:
        pass
    return body.decode("utf-8", "replace").strip() or "(no message)"


__all__ = ["Params", "error_message", "filters_param", "httpize"]
