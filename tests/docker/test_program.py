"""A program written for aiodocker (the README's example) runs unchanged but for its
import, under ``asyncio.run`` and under ``trio.run``."""

from __future__ import annotations

import asyncio

import pytest
import trio

import kiln.docker as aiodocker
from tests.docker.conftest import BUSYBOX, LABELS
from tests.docker.helpers import name

pytestmark = pytest.mark.docker


async def readme_example(container_name: str) -> list[str]:
    docker = aiodocker.Docker()
    try:
        container = await docker.containers.create_or_replace(
            config={"Cmd": ["sh", "-c", "echo hello"], "Image": BUSYBOX, "Labels": LABELS},
            name=container_name,
        )
        await container.start()
        await container.wait()
        logs = await container.log(stdout=True)
        await container.delete(force=True)
        return logs
    finally:
        await docker.close()


def test_readme_example_under_asyncio_run() -> None:
    assert asyncio.run(readme_example(name("readme-"))) == ["hello\n"]


def test_readme_example_under_trio_run() -> None:
    assert trio.run(readme_example, name("readme-")) == ["hello\n"]
