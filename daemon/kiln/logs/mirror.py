"""Optional file mirror of function logs: ``DIR/NAME.log`` with size-based rotation.

``NAME.log`` grows to ``max_size`` bytes, then becomes ``NAME.log.1`` (the older
ones shift up to ``NAME.log.{count-1}``, the oldest is deleted). Lines are the
same text the CLI prints. Writes go to a buffered file and are flushed once per
batch of lines (one read of a container's output), so a line costs a memory
copy, not a syscall. Local-disk writes of a few KiB: done synchronously, like
every other small local file operation in Kiln.

A write that fails (disk full, directory gone) is logged once per function and
the mirror of that function stops until it is reopened; calls never fail for it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import BinaryIO

from kiln.logs.lines import LogLine

log = logging.getLogger("kiln.logs")


class _File:
    __slots__ = ("f", "failed", "path", "size")

    def __init__(self, path: Path) -> None:
        self.path = path
        self.f: BinaryIO | None = None
        self.size = 0
        self.failed = False


class FileMirror:
    def __init__(self, directory: str | Path, *, max_size: int, count: int) -> None:
        self.dir = Path(directory)
        self.max_size = max_size
        self.count = max(1, count)
        self._files: dict[str, _File] = {}
        self._dirty: set[_File] = set()

    def path(self, function: str) -> Path:
        return self.dir / f"{function}.log"

    def _open(self, function: str) -> _File:
        mf = _File(self.path(function))
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            mf.f = open(mf.path, "ab")  # noqa: SIM115  # lives as long as the mirror
            mf.size = mf.f.tell()
        except OSError as e:
            mf.failed = True
            log.warning("log mirror for %s stopped: %s", function, e)
        self._files[function] = mf
        return mf

    def write(self, line: LogLine) -> None:
        mf = self._files.get(line.function) or self._open(line.function)
        if mf.failed or mf.f is None:
            return
        data = (line.format_text() + "\n").encode("utf-8", "replace")
        try:
            if mf.size and mf.size + len(data) > self.max_size:
                self._rotate(mf)
                if mf.f is None:
                    return
            mf.f.write(data)
            mf.size += len(data)
            self._dirty.add(mf)
        except OSError as e:
            self._fail(mf, line.function, e)

    def _rotate(self, mf: _File) -> None:
        assert mf.f is not None
        mf.f.close()
        mf.f = None
        self._dirty.discard(mf)
        base = str(mf.path)
        if self.count == 1:
            os.unlink(base)
        else:
            for i in range(self.count - 1, 0, -1):
                src = base if i == 1 else f"{base}.{i - 1}"
                if os.path.exists(src):
                    os.replace(src, f"{base}.{i}")
        mf.f = open(base, "ab")  # noqa: SIM115
        mf.size = 0

    def _fail(self, mf: _File, function: str, e: OSError) -> None:
        mf.failed = True
        log.warning("log mirror for %s stopped: %s", function, e)
        if mf.f is not None:
            with contextlib.suppress(OSError):
                mf.f.close()
            mf.f = None
        self._dirty.discard(mf)

    def flush(self) -> None:
        for mf in self._dirty:
            if mf.f is not None:
                try:
                    mf.f.flush()
                except OSError as e:
                    mf.failed = True
                    log.warning("log mirror %s stopped: %s", mf.path, e)
        self._dirty.clear()

    def forget(self, function: str) -> None:
        """Close a removed function's file (its files stay on disk)."""
        mf = self._files.pop(function, None)
        if mf is not None and mf.f is not None:
            self._dirty.discard(mf)
            with contextlib.suppress(OSError):
                mf.f.close()

    def close(self) -> None:
        for name in list(self._files):
            self.forget(name)
