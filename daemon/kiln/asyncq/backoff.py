"""What happens after an attempt: done, retry (and when), or give up. Pure.

Retryable: the host could not run the call now — 503 (no memory, queue full,
draining, Docker unavailable), 504 (start or call timeout), 429 (rate
limited), a failed container start (502 ``start_failed``), and a host that
died mid-call. A function's own error (any other 502) is retried only with
the function's ``retry_on_error = true``. Everything else (404 for a function
removed since the accept, 413, ...) fails at once.

A call gets ``1 + retries`` attempts. The n-th retry waits
``min(cap, base * 2**(n-1))`` scaled by a jitter factor in ``[1 - jitter, 1]``
("equal-ish" jitter: never longer than the plain exponential, never zero).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

#: First retry after about this many seconds; each later one doubles, up to CAP.
BASE = 1.0
CAP = 300.0
JITTER = 0.5

#: 502 codes that mean "the container did not start" rather than "the function failed".
START_FAILURES = frozenset({"start_failed", "docker_error"})
#: The error a recovered call carries: its host died while it ran.
HOST_DIED = "host_died"


@dataclass(frozen=True)
class Policy:
    retries: int = 2
    retry_on_error: bool = False
    base: float = BASE
    cap: float = CAP
    jitter: float = JITTER


def retryable(status: int, code: str | None, *, retry_on_error: bool) -> bool:
    if status in (429, 503, 504):
        return True
    if status == 502:
        return code in START_FAILURES or code == HOST_DIED or retry_on_error
    return False


def delay(retry: int, policy: Policy, rng: random.Random) -> float:
    """Seconds before retry number ``retry`` (1 = the first retry)."""
    plain: float = min(policy.cap, policy.base * 2.0 ** (retry - 1))
    return plain * (1 - policy.jitter * rng.random())


@dataclass(frozen=True)
class Finish:
    """Record the outcome; the call is done (``succeeded`` when ``ok``)."""

    ok: bool


@dataclass(frozen=True)
class Retry:
    """Put the call back in the queue, due at ``due``."""

    due: float


Decision = Finish | Retry


def decide(
    *,
    ok: bool,
    status: int,
    code: str | None,
    attempts: int,
    policy: Policy,
    now: float,
    rng: random.Random,
) -> Decision:
    """After attempt number ``attempts`` ended (``ok``: the function answered)."""
    if ok:
        return Finish(ok=True)
    if attempts <= policy.retries and retryable(status, code, retry_on_error=policy.retry_on_error):
        return Retry(due=now + delay(attempts, policy, rng))
    return Finish(ok=False)
