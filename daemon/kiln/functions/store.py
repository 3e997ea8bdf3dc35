"""Functions deployed at run time, persisted under ``[daemon] state_dir``.

One JSON file per function in ``state_dir/functions/NAME.json``, written
atomically (temp file in the same dir, fsync, rename), so a crash never leaves
a half-written spec. They are read back at start and merged with the config
file's functions: **a function deployed at run time wins over the config
file's function of the same name** (it is the newer word of an operator).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

from kiln.functions.spec import FunctionSpec, parse_function
from kiln.functions.validate import ConfigError

log = logging.getLogger("kiln.store")


class FunctionStore:
    def __init__(self, state_dir: str | Path) -> None:
        self.dir = Path(state_dir) / "functions"

    def load(self) -> dict[str, FunctionSpec]:
        """Every persisted spec. A file that no longer validates is skipped, loudly."""
        out: dict[str, FunctionSpec] = {}
        if not self.dir.is_dir():
            return out
        for path in sorted(self.dir.glob("*.json")):
            name = path.stem
            try:
                raw = json.loads(path.read_text(encoding="utf-8"))
                out[name] = parse_function(name, raw, f"{path}")
            except (OSError, ValueError, ConfigError) as e:
                log.error("ignoring persisted function %s: %s", path, e)
        return out

    def save(self, spec: FunctionSpec) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        data = json.dumps(spec.to_json(), indent=2, sort_keys=True).encode() + b"\n"
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=f".{spec.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.dir / f"{spec.name}.json")
            dir_fd = os.open(self.dir, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def delete(self, name: str) -> bool:
        try:
            (self.dir / f"{name}.json").unlink()
            return True
        except FileNotFoundError:
            return False

    def names(self) -> set[str]:
        if not self.dir.is_dir():
            return set()
        return {p.stem for p in self.dir.glob("*.json")}
