"""The files ``kiln deploy`` reads: Kiln's TOML, or Fn's ``func.yaml``."""

from __future__ import annotations

import sys
from typing import Any

from kiln.cli.output import CliError
from kiln.config import ConfigError, read_toml
from kiln.functions.fnyaml import is_fn_yaml, load_fn_yaml
from kiln.functions.spec import parse_function


def read_deploy_file(path: str) -> dict[str, dict[str, Any]]:
    """A TOML file with ``[functions.NAME]`` tables, or one function with ``name = "..."``;
    or Fn's ``func.yaml`` (a ``.yaml``/``.yml`` file)."""
    if is_fn_yaml(path):
        try:
            fn = load_fn_yaml(path)  # the daemon checks again
        except ConfigError as e:
            raise CliError(str(e)) from e
        for note in fn.notes():
            print(f"kiln: {path}: {note}", file=sys.stderr)
        return {fn.name: fn.table}
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
        raw = read_toml(text, path)
    except OSError as e:
        raise CliError(f"cannot read {path}: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise CliError(f"{path}: not UTF-8 text: {e.reason} at byte {e.start}") from e
    except ConfigError as e:
        raise CliError(str(e)) from e
    if "functions" in raw:
        fns = raw["functions"]
        if not isinstance(fns, dict) or set(raw) != {"functions"}:
            raise CliError(f"{path}: put functions under [functions.NAME] and nothing else")
        out = dict(fns)
    else:
        name = raw.pop("name", None)
        if not isinstance(name, str):
            raise CliError(
                f'{path}: give the function a name (name = "...") or use [functions.NAME]'
            )
        out = {name: raw}
    for name, spec in out.items():
        try:
            parse_function(name, spec, f"functions.{name}")  # the daemon checks again
        except ConfigError as e:
            raise CliError(f"{path}: {e}") from e
    return out
