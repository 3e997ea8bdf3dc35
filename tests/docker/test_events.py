"""Events: subscribe() starts listening at once (no nursery, no asyncio loop needed), one
container's events come in order, stop() and close() end the listener."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from kiln.docker import Docker
from tests.docker.conftest import LABEL
from tests.docker.helpers import create, name

pytestmark = [pytest.mark.anyio, pytest.mark.docker]


async def _drain(subscriber: Any, container_id: str) -> list[str]:
    """Read until 0.2 s pass quietly; the actions of one container."""
    actions: list[str] = []
    while True:
        event = None
        with anyio.move_on_after(0.2):
            event = await subscriber.get()
        if event is None:
            return actions
        if event.get("Actor", {}).get("ID") == container_id:
            actions.append(event["Action"])


async def test_one_containers_events_in_order() -> None:
    async with Docker() as docker:
        assert docker.events.task is None
        assert docker.events.json_stream is None
        label = name("events-")
        subscriber = docker.events.subscribe(filters={"label": f"{LABEL}-events={label}"})
        assert docker.events.task is not None
        container = await create(docker, "true", Labels={f"{LABEL}-events": label})
        await container.start()
        await container.wait()
        await container.delete()
        actions = await _drain(subscriber, container.id)
        assert [a for a in actions if a != "kill"] == ["create", "start", "die", "destroy"]
    assert docker.events.task is None
    assert docker.events.json_stream is None


async def test_events_reach_every_subscriber_and_stop_restarts() -> None:
    async with Docker() as docker:
        label = name("events-")
        filters = {"label": f"{LABEL}-events={label}"}
        first = docker.events.subscribe(filters=filters)
        second = docker.events.subscribe(filters=filters)
        container = await create(docker, "true", Labels={f"{LABEL}-events": label})
        await container.delete()
        assert await _drain(first, container.id) == ["create", "destroy"]
        assert await _drain(second, container.id) == ["create", "destroy"]
        await docker.events.stop()
        assert docker.events.task is None
        assert await first.get() is None  # stopping ends every subscriber's stream

        third = docker.events.subscribe(filters=filters)
        assert docker.events.task is not None
        container = await create(docker, "true", Labels={f"{LABEL}-events": label})
        await container.delete()
        assert await _drain(third, container.id) == ["create", "destroy"]


async def test_subscribe_without_a_task_and_run_in_a_task_of_ones_own() -> None:
    async with Docker() as docker:
        label = name("events-")
        subscriber = docker.events.subscribe(create_task=False)
        assert docker.events.task is None
        async with anyio.create_task_group() as tg:
            tg.start_soon(docker.events.run)
            container = await create(docker, "true", Labels={f"{LABEL}-events": label})
            await container.delete()
            actions = await _drain(subscriber, container.id)
            tg.cancel_scope.cancel()
        assert actions == ["create", "destroy"]
