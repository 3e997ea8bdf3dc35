"""The ``stdio`` call format: one container per call.

Request body → the container's stdin (hijacked attach stream), stdout → the
response body, stderr → the function's log (:mod:`kiln.logs`). Exit 0 → 200; any other exit → 502 with the
exit code and the tail of stderr; OOM-killed → 502 saying to raise ``memory``;
over ``timeout`` → the container is killed and the caller gets 504.

:func:`outcome` is the pure exit-code → HTTP mapping; :func:`run_stdio` does the I/O
through the container runtime (:mod:`kiln.containers.runtime`), which also maps
Docker's failures; :class:`StdioRunner` holds what every stdio call needs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import trio

from kiln.calls.errors import CallError, CallTimeout, FunctionFailed, OutputTooLarge
from kiln.containers.logtail import StderrTail
from kiln.containers.runtime import ContainerRuntime, docker_failures
from kiln.containers.spec import Identity, container_config, container_name
from kiln.docker import STDOUT, DockerUnreachable, Stream
from kiln.fncontract import PLAIN_POST, HttpRequest
from kiln.functions.spec import FunctionSpec
from kiln.logs.service import ContainerLog, Logs
from kiln.trioutil import open_nursery
from kiln.units import format_size

log = logging.getLogger("kiln.stdio")

STDIN_CHUNK = 64 * 1024


@dataclass(frozen=True)
class ExitInfo:
    exit_code: int
    oom_killed: bool
    stderr_tail: str


def outcome(spec: FunctionSpec, info: ExitInfo) -> CallError | None:
    """The pure mapping from how the container ended to what the caller sees."""
    if info.exit_code == 0 and not info.oom_killed:
        return None
    tail = f"; stderr: {info.stderr_tail}" if info.stderr_tail else ""
    if info.oom_killed:
        return FunctionFailed(
            f"function {spec.name!r} ran out of its {format_size(spec.memory)} of memory and was "
            f"OOM-killed: raise `memory` in its config{tail}",
            code="out_of_memory",
        )
    if info.exit_code == 137:
        return FunctionFailed(
            f"function {spec.name!r} was killed (exit 137, SIGKILL), most likely for using more "
            f"than its {format_size(spec.memory)} of memory: raise `memory` in its config{tail}",
            code="out_of_memory",
        )
    return FunctionFailed(
        f"function {spec.name!r} exited with code {info.exit_code}{tail}", code="function_error"
    )


@dataclass(frozen=True)
class StdioOutput:
    """What a successful stdio call produced, and how long its phases took (seconds):
    ``start`` is creating and starting the container, ``run`` the rest."""

    stdout: bytes
    start: float
    run: float


def http_env(http: HttpRequest) -> dict[str, str]:
    """What a ``stdio`` function is told of the caller's request, as environment variables.

    ``KILN_HTTP_METHOD`` (``GET``), ``KILN_HTTP_PATH`` (the path after
    ``/invoke/NAME``, at least ``/``) and ``KILN_HTTP_QUERY`` (without the ``?``;
    empty if none), spelled as the caller sent them. They win over a function
    env entry of the same name.
    """
    return {
        "KILN_HTTP_METHOD": http.method,
        "KILN_HTTP_PATH": http.path,
        "KILN_HTTP_QUERY": http.query,
    }


async def _pump(
    stream: Stream,
    body: bytes,
    max_output: int,
    spec: FunctionSpec,
    call_id: str,
    output: ContainerLog | None = None,
) -> tuple[bytes, StderrTail]:
    stdout = bytearray()
    stderr = StderrTail()

    async def feed_stdin() -> None:
        try:
            for i in range(0, len(body), STDIN_CHUNK):
                await stream.write_in(body[i : i + STDIN_CHUNK])
            await stream.write_eof()
        except DockerUnreachable:
            # The function exited (or closed stdin) without reading all its input:
            # not an error by itself; its exit code says how it went.
            pass

    async with open_nursery() as nursery:
        nursery.start_soon(feed_stdin)
        while (frames := await stream.read_batch()) is not None:
            err_frames = []
            for frame in frames:
                if frame.stream == STDOUT:
                    stdout += frame.data
                    if len(stdout) > max_output:
                        raise OutputTooLarge(
                            f"function {spec.name!r} wrote more than {format_size(max_output)} "
                            "to stdout (the response limit, [daemon] max_response)"
                        )
                else:
                    err_frames.append(frame)
                    lines = stderr.feed(frame.data)
                    if output is None:
                        for line in lines:
                            log.info(
                                "stderr fn=%s call=%s: %s",
                                spec.name,
                                call_id,
                                line.decode("utf-8", "replace"),
                            )
            if output is not None and err_frames:
                output.feed(err_frames)  # stderr → the function's log (stdout is the answer)
    if output is not None:
        output.close()
    return bytes(stdout), stderr


async def run_stdio(
    runtime: ContainerRuntime,
    spec: FunctionSpec,
    identity: Identity,
    call_id: str,
    body: bytes,
    *,
    max_output: int,
    env: Mapping[str, str] | None = None,
    logs: Logs | None = None,
) -> StdioOutput:
    """Run one ``stdio`` call in a fresh container; return its stdout and timings.

    The container is removed on every path — success, failure, timeout, and
    cancellation (by the runtime: shielded, bounded, the janitor as fallback).
    Raises :class:`CallError`.
    """
    name = container_name(identity, spec.name, call_id)
    config = container_config(
        spec, identity, stdio=True, env=env, extra_labels={"kiln.call": call_id}
    )
    t0 = trio.current_time()
    async with runtime.claim(spec, name) as box:
        await runtime.create(box, config)
        async with runtime.attach(box) as stream:
            await runtime.start(box)
            started = trio.current_time()
            with trio.move_on_after(spec.timeout) as scope:
                try:
                    with docker_failures(spec):
                        output = logs.container(spec.name, name) if logs is not None else None
                        if output is not None:
                            output.begin_call(call_id)
                        stdout, stderr = await _pump(
                            stream, body, max_output, spec, call_id, output
                        )
                except OutputTooLarge:
                    await runtime.kill(box)
                    raise
                exit_code = await runtime.wait(box)
            if scope.cancelled_caught:
                await runtime.kill(box)
                raise CallTimeout(
                    f"function {spec.name!r} did not finish within its timeout of "
                    f"{spec.timeout:g} s; its container was killed",
                    code="timeout",
                )
        oom = exit_code != 0 and await runtime.oom_killed(box)
        error = outcome(spec, ExitInfo(exit_code, oom, stderr.text()))
        if error is not None:
            raise error
        return StdioOutput(stdout, started - t0, trio.current_time() - started)


class StdioRunner:
    """Runs stdio calls for the daemon: what every call needs (the container
    runtime, the daemon's identity, the response limit) held once."""

    def __init__(
        self,
        runtime: ContainerRuntime,
        identity: Identity,
        *,
        max_response: int,
        logs: Logs | None = None,
    ) -> None:
        self.runtime = runtime
        self.identity = identity
        self.max_response = max_response
        self.logs = logs

    async def run(
        self, spec: FunctionSpec, call_id: str, body: bytes, http: HttpRequest = PLAIN_POST
    ) -> StdioOutput:
        return await run_stdio(
            self.runtime,
            spec,
            self.identity,
            call_id,
            body,
            max_output=self.max_response,
            env=http_env(http),
            logs=self.logs,
        )
