"""One call, start to finish: look the function up, rate-limit, admit, run.

This is where Docker's failures become what a caller sees (DESIGN.md, "Errors a
caller sees"): Docker down or not answering → 503; the image missing → 502
naming it; any other Docker refusal → 502 with Docker's message.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from kiln.admission.memory import MemoryBudget
from kiln.admission.ratelimit import InvokeRateLimiter
from kiln.calls.errors import NotFound, Unavailable, docker_call_error
from kiln.calls.stdio import run_stdio
from kiln.containers.janitor import Janitor
from kiln.containers.spec import Identity
from kiln.docker import DockerClient, DockerError
from kiln.functions.spec import FunctionSpec

if TYPE_CHECKING:
    from kiln.hot.supervisors import Supervisors

log = logging.getLogger("kiln.calls")


@dataclass
class CallResult:
    status: int
    body: bytes
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


@dataclass
class Timings:
    """Phase durations of one call, in seconds (queue = waiting for memory)."""

    queue: float = 0.0
    start: float = 0.0
    run: float = 0.0
    cold: bool = False

    def header(self) -> bytes:
        return (
            f"queue={self.queue * 1000:.1f};start={self.start * 1000:.1f};run={self.run * 1000:.1f}"
        ).encode()


class Invoker:
    """Runs calls. Owns no tasks: each call runs in its caller's task."""

    def __init__(
        self,
        *,
        docker: DockerClient,
        identity: Identity,
        functions: Mapping[str, FunctionSpec],
        max_response: int,
        memory: MemoryBudget | None = None,
        supervisors: Supervisors | None = None,
        janitor: Janitor | None = None,
    ) -> None:
        self.janitor = janitor
        self.docker = docker
        self.identity = identity
        self.functions: dict[str, FunctionSpec] = dict(functions)
        self.max_response = max_response
        self.memory = memory or MemoryBudget(2**62)
        self.supervisors = supervisors
        self.draining = False
        self.inflight = 0
        self._idle = trio.Event()
        self._idle.set()
        self.rates: dict[str, InvokeRateLimiter] = {}
        for spec in self.functions.values():
            self.set_rate(spec)

    def set_rate(self, spec: FunctionSpec) -> None:
        if spec.rate is None:
            self.rates.pop(spec.name, None)
        else:
            self.rates[spec.name] = InvokeRateLimiter(spec.rate, name=spec.name)

    def lookup(self, name: str) -> FunctionSpec:
        spec = self.functions.get(name)
        if spec is None:
            raise NotFound(f"no function named {name!r}", code="unknown_function")
        return spec

    async def invoke(
        self,
        name: str,
        body: bytes,
        call_id: str,
        timings: Timings,
        headers: Iterable[tuple[bytes, bytes]] = (),
    ) -> CallResult:
        """Run one call. Raises :class:`CallError` with the status the caller gets."""
        spec = self.lookup(name)
        if self.draining:
            raise Unavailable(
                "kiln is draining: not taking new calls", code="draining", retry_after=5
            )
        limiter = self.rates.get(name)
        if limiter is not None:
            limiter.check()
        self.inflight += 1
        if self._idle.is_set():
            self._idle = trio.Event()
        try:
            if spec.format == "http-stream":
                return await self._invoke_hot(spec, body, call_id, timings, headers)
            return await self._invoke_stdio(spec, body, call_id, timings)
        finally:
            self.inflight -= 1
            if self.inflight == 0:
                self._idle.set()

    async def wait_idle(self) -> None:
        """Return once no call is in flight (for the drain)."""
        await self._idle.wait()

    async def _invoke_stdio(
        self, spec: FunctionSpec, body: bytes, call_id: str, timings: Timings
    ) -> CallResult:
        t0 = trio.current_time()
        async with self.memory.reserve(spec.memory, owner=spec.name):
            t1 = trio.current_time()
            timings.queue = t1 - t0
            timings.cold = True
            try:
                output = await run_stdio(
                    self.docker,
                    spec,
                    self.identity,
                    call_id,
                    body,
                    max_output=self.max_response,
                    janitor=self.janitor,
                )
            except DockerError as e:
                raise docker_call_error(e, spec) from e
            finally:
                timings.run = trio.current_time() - t1
        return CallResult(200, output, [(b"content-type", b"application/octet-stream")])

    async def _invoke_hot(
        self,
        spec: FunctionSpec,
        body: bytes,
        call_id: str,
        timings: Timings,
        headers: Iterable[tuple[bytes, bytes]],
    ) -> CallResult:
        supervisor = self.supervisors.get(spec.name) if self.supervisors else None
        if supervisor is None:
            raise Unavailable(f"function {spec.name!r} has no supervisor running", retry_after=1)
        result = await supervisor.invoke(call_id, body, headers)
        timings.queue = result.queue
        timings.start = result.start
        timings.run = result.run
        timings.cold = result.cold
        return CallResult(result.status, result.body, result.headers)
