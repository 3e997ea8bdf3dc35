"""A Kiln invoke stack wired to the fake Docker engine, for unit tests."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio

from kiln.admission.memory import MemoryBudget
from kiln.api.invoke import InvokeApp
from kiln.calls.lifecycle import Invoker
from kiln.config import parse
from kiln.containers.janitor import Janitor
from kiln.containers.spec import Identity
from kiln.docker import DockerClient
from kiln.functions.spec import FunctionSpec
from kiln.hot.supervisors import Supervisors
from kiln.units import GiB
from tests.fakedocker import FakeDocker, FakeTransport


def functions(**tables: Mapping[str, object]) -> dict[str, FunctionSpec]:
    return dict(parse({"functions": dict(tables)}).functions)


@dataclass
class Stack:
    fake: FakeDocker
    docker: DockerClient
    memory: MemoryBudget
    janitor: Janitor
    invoker: Invoker
    app: InvokeApp
    supervisors: Supervisors


def kiln_tasks() -> list[str]:
    """Names of running tasks whose code is Kiln's (the fake's and the test's excluded)."""
    out: list[str] = []

    def walk(task: trio.lowlevel.Task) -> None:
        code = getattr(task.coro, "cr_code", None)
        if code is not None and "/daemon/kiln/" in code.co_filename:
            out.append(task.name)
        for nursery in task.child_nurseries:
            for child in nursery.child_tasks:
                walk(child)

    root = trio.lowlevel.current_root_task()
    assert root is not None
    walk(root)
    return out


@asynccontextmanager
async def stack(
    fns: Mapping[str, FunctionSpec],
    *,
    max_body: int = 1 << 20,
    docker_timeout: float = 30.0,
    capacity: int = 4 * GiB,
    queue_max: int = 100,
    queue_wait: float = 10.0,
) -> AsyncIterator[Stack]:
    async with (
        FakeDocker() as fake,
        DockerClient("/fake/docker.sock", timeout=docker_timeout, **fake.client_kwargs()) as docker,
    ):
        memory = MemoryBudget(capacity, queue_max=queue_max, queue_wait=queue_wait)
        janitor = Janitor(docker)
        identity = Identity("test")
        supervisors = Supervisors(
            docker=docker,
            memory=memory,
            identity=identity,
            iofs_root=Path(tempfile.mkdtemp(prefix="kiln-iofs-")),
            queue_max=queue_max,
            queue_wait=queue_wait,
            janitor=janitor,
            transport=FakeTransport(fake),
        )
        memory.evictor = supervisors
        invoker = Invoker(
            docker=docker,
            identity=identity,
            functions=fns,
            max_response=1 << 20,
            memory=memory,
            supervisors=supervisors,
            janitor=janitor,
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(janitor.run)
            await nursery.start(supervisors.run, fns)
            yield Stack(
                fake,
                docker,
                memory,
                janitor,
                invoker,
                InvokeApp(invoker, max_body=max_body),
                supervisors,
            )
            nursery.cancel_scope.cancel()
