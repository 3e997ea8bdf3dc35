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
from collections.abc import Callable
from pathlib import Path

from kiln.functions.spec import FunctionSpec, parse_function
from kiln.functions.validate import ConfigError, depth_problem

log = logging.getLogger("kiln.store")


class FunctionStore:
    def __init__(self, state_dir: str | Path) -> None:
        self.dir = Path(state_dir) / "functions"

    def load(
        self, problem: Callable[[FunctionSpec], str | None] | None = None
    ) -> dict[str, FunctionSpec]:
        """Every persisted spec that still validates (and that ``problem`` finds no fault in).

        A file that no longer does — written by an older version, edited by
        hand, or refused by this host's policy — is skipped with one ERROR
        line naming the file and the reason. It never stops the daemon, and
        the file is left where it is for the operator to mend or remove.
        """
        out: dict[str, FunctionSpec] = {}
        try:
            paths = sorted(self.dir.glob("*.json")) if self.dir.is_dir() else []
        except OSError as e:
            log.error("cannot list persisted functions in %s: %s", self.dir, e)
            return out
        for path in paths:
            reason = None
            try:
                spec = self._read(path)
            except (OSError, ValueError, RecursionError) as e:  # ConfigError is a ValueError
                reason = str(e)
            else:
                reason = problem(spec) if problem is not None else None
            if reason is not None:
                log.error("skipping persisted function %s: %s", path, reason)
                continue
            out[spec.name] = spec
        return out

    @staticmethod
    def _read(path: Path) -> FunctionSpec:
        raw = json.loads(path.read_text(encoding="utf-8"))
        nested = depth_problem(raw)
        if nested is not None:
            raise ConfigError(str(path), nested)
        return parse_function(path.stem, raw, str(path))

    def save(self, spec: FunctionSpec) -> None:
        self._write(
            spec.name, json.dumps(spec.to_json(), indent=2, sort_keys=True).encode() + b"\n"
        )

    def read_bytes(self, name: str) -> bytes | None:
        """The persisted file of ``name`` as it is, or None: what :meth:`restore` puts back."""
        try:
            return (self.dir / f"{name}.json").read_bytes()
        except FileNotFoundError:
            return None

    def restore(self, name: str, data: bytes | None) -> None:
        """Put back what :meth:`read_bytes` returned (None: no file)."""
        if data is None:
            self.delete(name)
        else:
            self._write(name, data)

    def _write(self, name: str, data: bytes) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=f".{name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.dir / f"{name}.json")
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
