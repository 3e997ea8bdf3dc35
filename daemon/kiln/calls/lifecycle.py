"""One call, start to finish: the one path every call takes.

:meth:`Calls.call` looks the function up (once), reads the body, refuses while
draining, applies the function's invoke rate, runs the call (``stdio``: memory
admission, then a fresh container; ``http-stream``: the function's
supervisor), cancels it when the caller leaves, and records the outcome: the
call's metrics and its one log line. It returns a :class:`CallResult` for every
outcome, errors included, with the call's timings in it, so the invoke API, the
control API's invoke and a background dispatcher only translate the result to
their protocol.

Cancellation: cancelling the task that runs :meth:`Calls.call` cancels the
call; a container it started is still removed (shielded and bounded; the
janitor takes over when Docker is down).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from kiln.admission.memory import MemoryBudget
from kiln.calls.errors import CallError, Unavailable
from kiln.calls.stdio import StdioRunner
from kiln.fncontract import PLAIN_POST, HttpRequest
from kiln.functions.registry import Function, FunctionRegistry

if TYPE_CHECKING:
    from kiln.http.asgi import DisconnectWatch
    from kiln.logs.service import Logs
    from kiln.metrics import Metrics

log = logging.getLogger("kiln.calls")

Headers = list[tuple[bytes, bytes]]
#: The request body, or how to read it: called once, after the function is found,
#: so a call to an unknown function is refused before its body is read.
BodySource = bytes | Callable[[], Awaitable[bytes]]

#: nginx's "client closed request": a call's status in the log and the metrics
#: when its caller left before the answer. No response is sent for it.
CALLER_GONE = 499


class CallerGone(Exception):
    """The caller left before its call was answered (a body reader raises it)."""


@dataclass
class Timings:
    """Phase durations of one call, in seconds: waiting (for memory or a
    container), starting a container, running the call. ``cold``: the call
    started a container."""

    queue: float = 0.0
    start: float = 0.0
    run: float = 0.0
    cold: bool = False

    def header(self) -> bytes:
        """The ``Kiln-Timing`` header value (milliseconds)."""
        return (
            f"queue={self.queue * 1000:.1f};start={self.start * 1000:.1f};run={self.run * 1000:.1f}"
        ).encode()


@dataclass
class CallResult:
    """How a call ended. ``error`` is set when it failed (``status`` is then the
    error's); ``status`` is :data:`CALLER_GONE` when the caller left first."""

    status: int
    body: bytes = b""
    headers: Headers = field(default_factory=list)
    timings: Timings = field(default_factory=Timings)
    error: CallError | None = None

    @property
    def caller_gone(self) -> bool:
        return self.status == CALLER_GONE


@dataclass(frozen=True, slots=True)
class Request:
    """What a call carries besides its body: the caller's headers and HTTP request."""

    headers: Headers
    http: HttpRequest


class Calls:
    """Runs calls. Owns no tasks: each call runs in its caller's task."""

    def __init__(
        self,
        *,
        registry: FunctionRegistry,
        stdio: StdioRunner,
        memory: MemoryBudget,
        metrics: Metrics | None = None,
        logs: Logs | None = None,
    ) -> None:
        self.registry = registry
        self.stdio = stdio
        self.memory = memory
        self.metrics = metrics
        self.logs = logs
        self.draining = False
        self.inflight = 0
        self._idle = trio.Event()
        self._idle.set()

    def drain(self) -> None:
        """Refuse new calls from now on (503 ``draining``); calls in flight go on."""
        self.draining = True

    async def wait_idle(self) -> None:
        """Return once no call is in flight (for the drain)."""
        await self._idle.wait()

    async def call(
        self,
        name: str,
        body: BodySource,
        *,
        call_id: str,
        headers: Iterable[tuple[bytes, bytes]] = (),
        disconnect: DisconnectWatch | None = None,
        is_async: bool = False,
        http: HttpRequest | None = None,
        client: str = "-",
    ) -> CallResult:
        """Run one call of function ``name``. Never raises for the call's own
        failures: they come back as a result with ``error`` set.

        ``http`` is the caller's method and URL as the function sees them
        (None: a plain ``POST /``, for a call with no HTTP request behind it).

        ``disconnect``, if given, tells when the caller has left (the server's
        :class:`~kiln.http.asgi.DisconnectWatch`, watched once the body is read);
        the call is then cancelled and the result's status is
        :data:`CALLER_GONE`. Without it (a call with no one waiting on a
        connection) the call runs to its end unless the calling task is
        cancelled. ``client`` (who called: an address, with ``X-Forwarded-For``
        when a proxy sent it) goes into the call's log line. ``is_async``: an
        async call (the dispatcher's), whose ``stdio`` memory counts toward the
        async share.
        """
        t0 = trio.current_time()
        fn: Function | None = None
        timings = Timings()
        try:
            fn = self.registry.get(name)
            if not isinstance(body, bytes):
                body = await body()
            if self.draining:
                raise Unavailable(
                    "kiln is draining: not taking new calls", code="draining", retry_after=5
                )
            if fn.rate is not None:
                fn.rate.check()
            request = Request(list(headers), http or PLAIN_POST)
            result = await self._run_watched(
                fn, body, call_id, request, disconnect, timings, is_async
            )
        except CallerGone:
            result = CallResult(CALLER_GONE, timings=timings)
        except CallError as e:
            result = CallResult(
                e.status, timings=timings, error=self._with_output(name, call_id, e)
            )
        except trio.Cancelled:
            self._record(name, fn, call_id, CallResult(CALLER_GONE, timings=timings), t0, client)
            raise
        except Exception as e:
            log.exception("call %s of %s failed unexpectedly", call_id, name)
            error = CallError(f"internal error: {type(e).__name__}: {e}")
            result = CallResult(error.status, timings=timings, error=error)
        self._record(name, fn, call_id, result, t0, client)
        return result

    def _with_output(self, name: str, call_id: str, error: CallError) -> CallError:
        """A function's failure (502) quotes the last lines the call wrote, unless
        its message already does."""
        if self.logs is None or error.status != 502 or "output: " in error.message:
            return error
        if "stderr: " in error.message:
            return error
        tail = self.logs.call_tail(name, call_id)
        if tail:
            error.message = f"{error.message}; its last output: {tail}"
        return error

    async def _run_watched(
        self,
        fn: Function,
        body: bytes,
        call_id: str,
        request: Request,
        disconnect: DisconnectWatch | None,
        timings: Timings,
        is_async: bool = False,
    ) -> CallResult:
        self.inflight += 1
        if self._idle.is_set():
            self._idle = trio.Event()
        try:
            if disconnect is None:
                return await self._run(fn, body, call_id, request, timings, is_async)
            # No task of its own: the server calls back, and only then is anything cancelled.
            with trio.CancelScope() as scope:
                disconnect.watch(scope.cancel)
                try:
                    return await self._run(fn, body, call_id, request, timings, is_async)
                finally:
                    disconnect.unwatch()
            return CallResult(CALLER_GONE, timings=timings)
        finally:
            self.inflight -= 1
            if self.inflight == 0:
                self._idle.set()

    async def _run(
        self,
        fn: Function,
        body: bytes,
        call_id: str,
        request: Request,
        timings: Timings,
        is_async: bool = False,
    ) -> CallResult:
        """Run the call; ``timings`` holds what is known so far if it raises."""
        spec = fn.spec
        if spec.format == "http-stream":
            supervisor = self.registry.supervisor(spec.name)
            if supervisor is None:
                raise Unavailable(
                    f"function {spec.name!r} has no supervisor running", retry_after=1
                )
            hot = await supervisor.invoke(call_id, body, request.headers, request.http)
            done = Timings(hot.queue, hot.start, hot.run, hot.cold)
            if hot.error is not None:
                return CallResult(hot.error.status, timings=done, error=hot.error)
            return CallResult(hot.status, hot.body, hot.headers, done)
        t0 = trio.current_time()
        async with self.memory.reserve(spec.memory, owner=spec.name, is_async=is_async):
            admitted = trio.current_time()
            timings.queue = admitted - t0
            timings.cold = True
            try:
                out = await self.stdio.run(spec, call_id, body, request.http)
            finally:
                timings.run = trio.current_time() - admitted
        done = Timings(timings.queue, out.start, out.run, cold=True)
        return CallResult(200, out.stdout, [(b"content-type", b"application/octet-stream")], done)

    def _record(
        self,
        name: str,
        fn: Function | None,
        call_id: str,
        result: CallResult,
        t0: float,
        client: str = "-",
    ) -> None:
        t = result.timings
        total = trio.current_time() - t0
        if self.metrics is not None and fn is not None:
            self.metrics.observe_call(
                name, result.status, t.queue, t.start, t.run, t.cold, total=total
            )
        log.info(
            "call fn=%s id=%s status=%s client=%s total_ms=%.1f queue_ms=%.1f start_ms=%.1f "
            "run_ms=%.1f",
            name,
            call_id,
            result.status,
            client,
            total * 1000,
            t.queue * 1000,
            t.start * 1000,
            t.run * 1000,
        )
