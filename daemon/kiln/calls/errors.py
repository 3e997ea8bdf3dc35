"""Errors a caller sees (Docker's failures become them in :mod:`kiln.containers.runtime`).

Every failure that reaches an HTTP caller is a :class:`CallError`: an HTTP
status, a short machine-readable ``code`` and a human ``message``, plus an
optional ``retry_after`` (seconds) for 429/503. The API layer turns it into
``{"error": {"code": ..., "message": ...}}``.
"""

from __future__ import annotations


class CallError(Exception):
    """A call failed in a way the caller is told about."""

    status: int = 500
    code: str = "internal"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.status}, {self.code!r}, {self.message!r})"


class NotFound(CallError):
    status = 404
    code = "not_found"


class BodyTooLarge(CallError):
    status = 413
    code = "body_too_large"


class RateLimited(CallError):
    status = 429
    code = "rate_limited"


class Unavailable(CallError):
    """503: queue full, no memory in time, draining, Docker unreachable."""

    status = 503
    code = "unavailable"


class FunctionFailed(CallError):
    """502: the function (or its container) failed."""

    status = 502
    code = "function_error"


class OutputTooLarge(FunctionFailed):
    """502: the function's answer is over ``[daemon] max_response``."""

    code = "output_too_large"


class CallTimeout(CallError):
    """504: the function did not answer (or start) in time."""

    status = 504
    code = "timeout"
