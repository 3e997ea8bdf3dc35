"""The function table without supervisors: lookups, rate limiters, apply/retire/rescale."""

from __future__ import annotations

import dataclasses

import pytest
import trio
import trio.testing

from kiln.calls.errors import NotFound
from kiln.functions.registry import FunctionRegistry
from kiln.functions.spec import FunctionSpec
from kiln.functions.validate import ConfigError

ECHO = FunctionSpec(name="echo", image="busybox")
LIMITED = FunctionSpec(name="limited", image="busybox", rate=2.0)


def test_lookup() -> None:
    registry = FunctionRegistry({"echo": ECHO})
    assert registry.get("echo").spec is ECHO
    assert registry.spec("echo") is ECHO
    assert "echo" in registry
    assert len(registry) == 1
    assert [fn.name for fn in registry] == ["echo"]
    assert registry.supervisor("echo") is None
    with pytest.raises(NotFound) as e:
        registry.get("nope")
    assert e.value.status == 404
    assert e.value.code == "unknown_function"


def test_only_functions_with_a_rate_have_a_limiter() -> None:
    registry = FunctionRegistry({"echo": ECHO, "limited": LIMITED})
    assert registry.get("echo").rate is None
    assert registry.get("limited").rate is not None
    assert set(registry.rate_statistics()) == {"limited"}


async def test_apply_adds_and_replaces(autojump_clock: trio.testing.MockClock) -> None:
    registry = FunctionRegistry({})
    await registry.apply(LIMITED)
    limiter = registry.get("limited").rate
    await registry.apply(LIMITED)  # the same spec: nothing changes, the limiter keeps its count
    assert registry.get("limited").rate is limiter
    faster = dataclasses.replace(LIMITED, rate=10.0)
    await registry.apply(faster)
    assert registry.spec("limited") == faster
    new_limiter = registry.get("limited").rate
    assert new_limiter is not None
    assert new_limiter is not limiter
    assert new_limiter.statistics().rate == 10.0
    assert registry.specs() == {"limited": faster}


async def test_retire_forgets(autojump_clock: trio.testing.MockClock) -> None:
    registry = FunctionRegistry({"echo": ECHO})
    registry.retire("echo", "removed")
    assert "echo" not in registry
    registry.retire("echo", "removed")  # retiring twice is harmless


def test_rescale_checks_and_keeps_the_rest_of_the_spec() -> None:
    registry = FunctionRegistry({"limited": LIMITED})
    limiter = registry.get("limited").rate
    new = registry.rescale("limited", min_warm=2, max_containers=None)
    assert new == dataclasses.replace(LIMITED, min_warm=2)
    assert registry.get("limited").rate is limiter
    with pytest.raises(ConfigError, match="must not exceed max_containers"):
        registry.rescale("limited", min_warm=None, max_containers=1)
    with pytest.raises(ConfigError, match="at least 0"):
        registry.rescale("limited", min_warm=-1, max_containers=None)
    assert registry.spec("limited") == new
    with pytest.raises(NotFound):
        registry.rescale("nope", min_warm=1, max_containers=None)
