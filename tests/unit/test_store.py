"""The store of deployed functions: one JSON file per function, written atomically."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from kiln.functions.spec import FunctionSpec
from kiln.functions.store import FunctionStore
from kiln.units import MiB

SPEC = FunctionSpec(
    name="echo",
    image="busybox",
    cmd=("cat",),
    memory=64 * MiB,
    cpus=0.5,
    env={"K": "v"},
    rate=5.0,
    format="http-stream",
    min_warm=1,
)


def test_saved_specs_load_back_equal(tmp_path: Path) -> None:
    store = FunctionStore(tmp_path)
    store.save(SPEC)
    store.save(FunctionSpec(name="other", image="x"))
    assert store.load() == {"echo": SPEC, "other": FunctionSpec(name="other", image="x")}
    assert store.names() == {"echo", "other"}


def test_save_replaces_and_leaves_no_temp_file(tmp_path: Path) -> None:
    store = FunctionStore(tmp_path)
    store.save(SPEC)
    store.save(FunctionSpec(name="echo", image="new"))
    assert store.load()["echo"].image == "new"
    assert sorted(p.name for p in store.dir.iterdir()) == ["echo.json"]


def test_delete(tmp_path: Path) -> None:
    store = FunctionStore(tmp_path)
    store.save(SPEC)
    assert store.delete("echo") is True
    assert store.delete("echo") is False
    assert store.load() == {}
    assert store.names() == set()


def test_an_empty_or_missing_dir_loads_nothing(tmp_path: Path) -> None:
    store = FunctionStore(tmp_path / "not-yet")
    assert store.load() == {}
    assert store.names() == set()


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"[1, 2]", json.dumps({"image": "x", "memory": "lots"}).encode(), b"\xff\xfe"],
)
def test_a_file_that_no_longer_validates_is_skipped_loudly(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    store = FunctionStore(tmp_path)
    store.save(SPEC)
    (store.dir / "broken.json").write_bytes(content)
    with caplog.at_level(logging.ERROR, logger="kiln.store"):
        assert store.load() == {"echo": SPEC}
    assert any("broken.json" in r.getMessage() for r in caplog.records)


def test_a_bad_name_on_disk_is_skipped(tmp_path: Path) -> None:
    store = FunctionStore(tmp_path)
    store.dir.mkdir(parents=True)
    (store.dir / "Bad Name.json").write_text(json.dumps({"image": "x"}))
    assert store.load() == {}
