"""The janitor: removals that failed are retried later, on a backoff, until done."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

import kiln.containers.janitor as janitor_module
from kiln.containers.janitor import BACKOFF_MAX, BACKOFF_START, Janitor, JanitorStatistics
from kiln.docker import Docker, DockerUnreachable
from tests.fakedocker import FakeDocker


@asynccontextmanager
async def janitor() -> AsyncIterator[tuple[FakeDocker, Janitor]]:
    async with (
        FakeDocker() as fake,
        Docker(**fake.client_kwargs()) as docker,
        trio.open_nursery() as nursery,
    ):
        j = Janitor(docker)
        await nursery.start(j.run)
        yield fake, j
        nursery.cancel_scope.cancel()


async def make_container(fake: FakeDocker) -> str:
    async with Docker(**fake.client_kwargs()) as docker:
        return (await docker.containers.create({"Image": "busybox", "Cmd": ["sleep"]})).id


def removes(fake: FakeDocker) -> int:
    return sum(1 for op, _ in fake.calls if op == "remove")


async def test_idle_janitor_asks_docker_nothing(autojump_clock: trio.testing.MockClock) -> None:
    async with janitor() as (fake, j):
        await trio.sleep(3600)
        assert fake.calls == []
        assert j.statistics() == JanitorStatistics(0, 0, 0)


async def test_removes_what_it_is_given(autojump_clock: trio.testing.MockClock) -> None:
    async with janitor() as (fake, j):
        cid = await make_container(fake)
        j.remove_later(cid, "echo")
        assert j.pending == 1
        await j.wait_empty()
        assert cid not in fake.containers
        assert j.statistics() == JanitorStatistics(pending=0, removed_total=1, attempts_total=1)


async def test_a_container_already_gone_counts_as_removed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with janitor() as (_fake, j):
        j.remove_later("f" * 64, "echo")
        await j.wait_empty()
        assert j.statistics().removed_total == 1


async def test_retries_on_a_doubling_backoff_until_docker_is_back(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with janitor() as (fake, j):
        cid = await make_container(fake)
        attempts: list[float] = []
        enough = trio.Event()
        real_remove = janitor_module.remove_container  # type: ignore[attr-defined]

        async def remove(docker: Docker, target: str, **kwargs: Any) -> bool:
            attempts.append(trio.current_time())
            if len(attempts) == 9:
                enough.set()
            if not enough.is_set():
                raise DockerUnreachable("connection refused")
            return await real_remove(docker, target, **kwargs)

        monkeypatch.setattr(janitor_module, "remove_container", remove)
        j.remove_later(cid, "echo")
        await enough.wait()
        gaps = [b - a for a, b in itertools.pairwise(attempts)]
        expected = [min(BACKOFF_START * 2**i, BACKOFF_MAX) for i in range(len(gaps))]
        assert gaps == pytest.approx(expected)
        await j.wait_empty()
        assert cid not in fake.containers
        assert j.statistics() == JanitorStatistics(pending=0, removed_total=1, attempts_total=9)


async def test_wait_empty_returns_at_once_when_nothing_is_pending(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with janitor() as (_fake, j):
        with trio.fail_after(0.001):
            await j.wait_empty()


@pytest.mark.parametrize("n", [1, 5])
async def test_one_failure_does_not_lose_the_others(
    autojump_clock: trio.testing.MockClock, n: int
) -> None:
    async with janitor() as (fake, j):
        cids = [await make_container(fake) for _ in range(n)]
        fake.fail["remove"] = (500, "device or resource busy")
        for cid in cids:
            j.remove_later(cid, "echo")
        await trio.sleep(BACKOFF_START * 3)
        assert j.pending == n
        del fake.fail["remove"]
        await j.wait_empty()
        assert not set(cids) & set(fake.containers)
        assert removes(fake) >= n
