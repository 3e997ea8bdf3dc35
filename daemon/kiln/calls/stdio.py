"""The ``stdio`` call format: one container per call.

Request body → the container's stdin (hijacked attach stream), stdout → the
response body, stderr → the function's log (:mod:`kiln.logs`). Exit 0 → 200; any other exit → 502 with the
exit code and the tail of stderr; OOM-killed → 502 saying to raise ``memory``;
over ``timeout`` → the container is killed and the caller gets 504.

:func:`outcome` is the pure exit-code → HTTP mapping; :func:`run_stdio` does the I/O;
:class:`StdioRunner` holds what every stdio call needs and maps Docker's failures.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

import trio

from kiln.calls.errors import CallError, CallTimeout, FunctionFailed, docker_call_error
from kiln.containers.janitor import Janitor
from kiln.containers.spec import Identity, container_config, container_name
from kiln.docker import (
    STDOUT,
    AttachStream,
    DockerClient,
    DockerError,
    DockerUnreachable,
)
from kiln.fncontract import PLAIN_POST, HttpRequest
from kiln.functions.spec import FunctionSpec
from kiln.logs.service import ContainerLog, Logs
from kiln.trioutil import open_nursery
from kiln.units import format_size

log = logging.getLogger("kiln.stdio")

STDIN_CHUNK = 64 * 1024
STDERR_TAIL_LINES = 20
STDERR_TAIL_BYTES = 4096
#: How long cleanup (kill/remove) may take once the call is over or cancelled.
CLEANUP_TIMEOUT = 30.0


class StderrTail:
    """Keeps the last lines of a stream that arrives in arbitrary pieces."""

    def __init__(self, max_lines: int = STDERR_TAIL_LINES, max_bytes: int = STDERR_TAIL_BYTES):
        self._lines: deque[bytes] = deque(maxlen=max_lines)
        self._partial = b""
        self._max_bytes = max_bytes

    def feed(self, data: bytes) -> list[bytes]:
        """Add data; returns the lines completed by it (for logging)."""
        parts = (self._partial + data).split(b"\n")
        self._partial = parts.pop()[-self._max_bytes :]
        done = [p[-self._max_bytes :] for p in parts]
        self._lines.extend(done)
        return done

    def text(self) -> str:
        lines = list(self._lines)
        if self._partial:
            lines.append(self._partial)
        text = b"\n".join(lines)[-self._max_bytes :]
        return text.decode("utf-8", "replace").strip()


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


class OutputTooLarge(FunctionFailed):
    code = "output_too_large"


async def _pump(
    stream: AttachStream,
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
                await stream.send_all(body[i : i + STDIN_CHUNK])
            await stream.send_eof()
        except DockerUnreachable:
            # The function exited (or closed stdin) without reading all its input:
            # not an error by itself; its exit code says how it went.
            pass

    async with open_nursery() as nursery:
        nursery.start_soon(feed_stdin)
        while (frames := await stream.receive()) is not None:
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
    docker: DockerClient,
    spec: FunctionSpec,
    identity: Identity,
    call_id: str,
    body: bytes,
    *,
    max_output: int,
    janitor: Janitor | None = None,
    env: Mapping[str, str] | None = None,
    logs: Logs | None = None,
) -> StdioOutput:
    """Run one ``stdio`` call in a fresh container; return its stdout and timings.

    The container is removed on every path — success, failure, timeout, and
    cancellation (the removal runs shielded and bounded by CLEANUP_TIMEOUT).
    Raises :class:`CallError` for function failures and DockerError for Docker's.
    """
    name = container_name(identity, spec.name, call_id)
    config = container_config(
        spec, identity, stdio=True, env=env, extra_labels={"kiln.call": call_id}
    )
    # Until create returns, the container may or may not exist (a create that timed
    # out or whose caller was cancelled may still have made it): its name is
    # deterministic, so cleanup removes it by name.
    cid: str | None = name
    t0 = trio.current_time()
    try:
        cid = await docker.create_container(config, name=name)
        async with docker.attach(cid) as stream:
            await docker.start(cid)
            started = trio.current_time()
            with trio.move_on_after(spec.timeout) as scope:
                try:
                    output = logs.container(spec.name, name) if logs is not None else None
                    if output is not None:
                        output.begin_call(call_id)
                    stdout, stderr = await _pump(stream, body, max_output, spec, call_id, output)
                except OutputTooLarge:
                    await docker.kill(cid)
                    raise
                result = await docker.wait(cid)
            if scope.cancelled_caught:
                await docker.kill(cid)
                raise CallTimeout(
                    f"function {spec.name!r} did not finish within its timeout of "
                    f"{spec.timeout:g} s; its container was killed",
                    code="timeout",
                )
        oom = False
        if result.status_code != 0:
            state = (await docker.inspect(cid)).get("State", {})
            oom = bool(state.get("OOMKilled"))
        error = outcome(spec, ExitInfo(result.status_code, oom, stderr.text()))
        if error is not None:
            raise error
        return StdioOutput(stdout, started - t0, trio.current_time() - started)
    finally:
        if cid is not None:
            await remove_container(docker, cid, spec.name, janitor)


async def remove_container(
    docker: DockerClient, cid: str, function: str, janitor: Janitor | None = None
) -> None:
    """Remove a container, shielded from cancellation and bounded in time. Never raises.

    If Docker cannot remove it now, the janitor (if given) keeps trying later.
    """
    with trio.CancelScope(shield=True):
        removed = False
        with trio.move_on_after(CLEANUP_TIMEOUT):
            try:
                await docker.remove(cid, force=True)
                removed = True
            except DockerError as e:
                log.error("could not remove container %s of %s: %s", cid[:12], function, e)
        if not removed:
            if janitor is not None:
                janitor.remove_later(cid, function)
            else:
                log.error("container %s of %s was not removed", cid[:12], function)


class StdioRunner:
    """Runs stdio calls for the daemon: what every call needs (Docker, the daemon's
    identity, the response limit, the janitor) held once. Docker's failures become
    :class:`CallError` here."""

    def __init__(
        self,
        docker: DockerClient,
        identity: Identity,
        *,
        max_response: int,
        janitor: Janitor | None = None,
        logs: Logs | None = None,
    ) -> None:
        self.docker = docker
        self.identity = identity
        self.max_response = max_response
        self.janitor = janitor
        self.logs = logs

    async def run(
        self, spec: FunctionSpec, call_id: str, body: bytes, http: HttpRequest = PLAIN_POST
    ) -> StdioOutput:
        try:
            return await run_stdio(
                self.docker,
                spec,
                self.identity,
                call_id,
                body,
                max_output=self.max_response,
                janitor=self.janitor,
                env=http_env(http),
                logs=self.logs,
            )
        except DockerError as e:
            raise docker_call_error(e, spec) from e
