"""A Kiln invoke stack wired to the fake Docker engine, for unit tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from kiln.api import InvokeApp
from kiln.config import parse
from kiln.containers import Identity
from kiln.docker import DockerClient
from kiln.functions import FunctionSpec
from kiln.invoke import Invoker
from tests.fakedocker import FakeDocker


def functions(**tables: Mapping[str, Any]) -> dict[str, FunctionSpec]:
    return dict(parse({"functions": dict(tables)}).functions)


@dataclass
class Stack:
    fake: FakeDocker
    docker: DockerClient
    invoker: Invoker
    app: InvokeApp


@asynccontextmanager
async def stack(
    fns: Mapping[str, FunctionSpec], *, max_body: int = 1 << 20, docker_timeout: float = 30.0
) -> AsyncIterator[Stack]:
    async with FakeDocker() as fake:
        async with DockerClient(
            "/fake/docker.sock", timeout=docker_timeout, **fake.client_kwargs()
        ) as docker:
            invoker = Invoker(
                docker=docker, identity=Identity("test"), functions=fns, max_response=1 << 20
            )
            yield Stack(fake, docker, invoker, InvokeApp(invoker, max_body=max_body))
