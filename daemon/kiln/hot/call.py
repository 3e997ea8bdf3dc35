"""One call on a hot container, and what the caller is told about how it went.

:func:`run_call` sends the request on the container's connection within the
function's timeout and reads the Fn contract's verdict. It returns an
:class:`Outcome` instead of raising, so the supervisor always learns whether
the container may serve again (``broken`` is None) or must be killed.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

import trio

from kiln.calls.errors import CallError, CallTimeout, FunctionFailed, OutputTooLarge
from kiln.fncontract import HttpRequest, Verdict, call_request_headers, interpret_response
from kiln.functions.spec import FunctionSpec
from kiln.hot.container import HotContainer
from kiln.hot.dialer import Undelivered
from kiln.hot.httpstream import FnProtocolError, ResponseTooLarge
from kiln.units import format_size


@dataclass(frozen=True)
class Answer:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


@dataclass(frozen=True)
class Outcome:
    """How one call went: an answer or an error, and whether the container broke."""

    answer: Answer | None = None
    error: CallError | None = None
    broken: str | None = None
    #: The connection broke mid-call: the container may have died (e.g. OOM-killed).
    lost: bool = False
    #: The call never reached the function (its listener could not be reached), so it
    #: may go to another container.
    undelivered: bool = False


#: How long a call that lost its connection waits to learn the container's exit code.
EXIT_GRACE = 2.0


async def run_call(
    spec: FunctionSpec,
    c: HotContainer,
    call_id: str,
    body: bytes,
    headers: Iterable[tuple[bytes, bytes]],
    http: HttpRequest | None = None,
    *,
    max_response: int,
) -> Outcome:
    """Run one call on ``c``, bounded by the function's timeout; ``max_response`` is
    the limit ``c``'s connection enforces (named in the error)."""
    conn = c.conn
    assert conn is not None
    deadline_unix = time.time() + spec.timeout
    request_headers = call_request_headers(call_id, deadline_unix, headers, http)
    try:
        with trio.move_on_after(spec.timeout) as scope:
            response = await conn.call(request_headers, body)
    except Undelivered as e:
        return Outcome(
            error=FunctionFailed(
                f"function {spec.name!r}: cannot reach its container's listener: {e}",
                code="function_error",
            ),
            broken=f"listener unreachable: {e}",
            undelivered=True,
        )
    except ResponseTooLarge as e:
        return Outcome(
            error=OutputTooLarge(
                f"function {spec.name!r} answered more than {format_size(max_response)} "
                "(the response limit, [daemon] max_response); its container was killed"
            ),
            broken=str(e),
        )
    except FnProtocolError as e:
        return Outcome(
            error=await _lost(spec, c, call_id, e), broken=f"protocol error: {e}", lost=True
        )
    if scope.cancelled_caught:
        return Outcome(
            error=CallTimeout(
                f"function {spec.name!r} did not answer within its timeout of "
                f"{spec.timeout:g} s; its container was killed",
                code="timeout",
            ),
            broken="call timed out",
        )
    outcome = interpret_response(response.status, response.headers)
    if outcome.verdict is Verdict.BROKEN:
        return Outcome(
            error=FunctionFailed(
                f"function {spec.name!r} broke the call contract (HTTP {response.status}); "
                "its container was killed",
                code="function_error",
            ),
            broken=f"function answered HTTP {response.status}",
        )
    if outcome.verdict is Verdict.REJECTED:
        return Outcome(
            error=CallError(
                f"function {spec.name!r} refused the request as sent (HTTP {response.status} "
                "from its FDK): too many or too large headers, or a body it cannot take",
                status=response.status,
                code="request_rejected",
            )
        )
    if outcome.verdict is Verdict.FUNCTION_ERROR:
        return Outcome(
            error=FunctionFailed(
                f"function {spec.name!r} failed: {response.body[:500].decode('utf-8', 'replace')}",
                code="function_error",
            )
        )
    if outcome.verdict is Verdict.TIMEOUT:
        return Outcome(
            error=CallTimeout(f"function {spec.name!r} reported a timeout", code="timeout")
        )
    return Outcome(answer=Answer(outcome.status, list(outcome.headers), response.body))


async def _lost(
    spec: FunctionSpec, c: HotContainer, call_id: str, e: FnProtocolError
) -> FunctionFailed:
    """The error for a call whose connection broke: the container's exit code when it
    died (waiting briefly for Docker to say so), and only this call's output."""
    with trio.move_on_after(EXIT_GRACE):
        await c.exited.wait()
    if c.exited.is_set():
        with trio.move_on_after(EXIT_GRACE):
            await c.output_done.wait()  # its last words, read to the end
    output = c.output_tail(call_id)
    last = f"; last output: {output}" if output else ""
    if c.exit_code is not None:
        message = f"function {spec.name!r} exited with code {c.exit_code} during the call{last}"
    else:
        message = f"function {spec.name!r} broke its connection during the call ({e}){last}"
    return FunctionFailed(message, code="function_error")
