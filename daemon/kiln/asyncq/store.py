"""The store's interface: what the accept path, the dispatcher and the readers need.

Implementations (:mod:`kiln.asyncq.sqlite`, :mod:`kiln.asyncq.postgres`) are
blocking; :class:`kiln.asyncq.threaded.ThreadedStore` runs them off the event
loop. Every method is one transaction. ``now`` is passed in (wall-clock
seconds from the dispatcher's clock), never read by the store.

Both are SQL over one ``calls`` table of the same columns: the column list,
a row → :class:`~kiln.asyncq.records.CallRecord`, a just-accepted call's
record and the listing query are here, written once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from kiln.asyncq.records import (
    CallRecord,
    NewCall,
    Outcome,
    State,
    pack_headers,
    unpack_headers,
)


class QueueFull(Exception):
    """``[async] queue_max`` calls are already pending."""


class StoreError(Exception):
    """The store failed (disk, database gone): the caller gets 503, nothing is lost."""


@dataclass(frozen=True)
class Accepted:
    record: CallRecord
    #: False when an earlier call with the same idempotency key was returned.
    created: bool


@dataclass(frozen=True)
class FinishItem:
    """One :meth:`Store.finish`, for :meth:`Store.finish_many`."""

    call_id: str
    host: str
    ok: bool
    outcome: Outcome
    now: float


@dataclass(frozen=True)
class QueueStats:
    queued: int
    running: int
    #: ``due`` of the oldest call that is due now (or None): its age is how far behind we are.
    oldest_due: float | None


class Store(Protocol):
    #: Whether other hosts share this store (and so may wake us with notifications).
    shared: bool

    def accept(self, call: NewCall, *, queue_max: int) -> Accepted:
        """Record a new call durably (committed before returning). Raises QueueFull.

        One accept is a group of one; implementations inherit this."""
        (out,) = self.accept_many([call], queue_max=queue_max)
        if isinstance(out, QueueFull):
            raise out
        return out

    def accept_many(
        self, calls: Sequence[NewCall], *, queue_max: int
    ) -> list[Accepted | QueueFull]:
        """Several accepts in one transaction (one fsync): each call's result in order."""
        ...

    def get(self, call_id: str) -> CallRecord | None: ...

    def find(self, *, function: str | None, state: State | None, limit: int) -> list[CallRecord]:
        """Newest first."""
        ...

    def cancel(self, call_id: str, *, now: float) -> CallRecord | None:
        """Cancel a queued call (no effect in other states); the record after, or None."""
        ...

    def claim(
        self, *, host: str, now: float, lease: float, exclude: Sequence[str], limit: int
    ) -> list[CallRecord]:
        """Take up to ``limit`` due calls, oldest due first, skipping functions in
        ``exclude``: queued calls whose ``due <= now``, and running calls whose lease
        expired (their host died). Each is marked running on ``host`` with one more
        attempt and a lease until ``now + lease``."""
        ...

    def finish(self, call_id: str, *, host: str, ok: bool, outcome: Outcome, now: float) -> bool:
        """Record the result of the running attempt (only if ``host`` still holds it).

        One finish is a group of one; implementations inherit this."""
        (done,) = self.finish_many([FinishItem(call_id, host, ok, outcome, now)])
        return done

    def finish_many(self, items: Sequence[FinishItem]) -> list[bool]:
        """Several finishes in one transaction."""
        ...

    def retry(self, call_id: str, *, host: str, due: float, error: str, status: int) -> bool:
        """Back to queued, due at ``due``, keeping the error of the last attempt."""
        ...

    def release(self, call_id: str, *, host: str, now: float) -> bool:
        """Back to queued at once, the attempt not counted (the host stopped it: drain)."""
        ...

    def recover(self, *, host: str, now: float) -> int:
        """At start: calls left running by ``host`` go back to queued (attempt counted)."""
        ...

    def next_due(self, *, exclude: Sequence[str] = ()) -> float | None:
        """The earliest time a call of a function not in ``exclude`` becomes
        claimable: a queued call's ``due`` or, shared, a running call's lease expiry
        (another host's, which we may take over)."""
        ...

    def purge(self, *, before: float) -> int:
        """Delete calls that finished before ``before``."""
        ...

    def next_expiry(self) -> float | None:
        """The earliest ``finished`` time among finished calls (purge is due a retention later)."""
        ...

    def stats(self, *, now: float) -> QueueStats: ...

    def close(self) -> None: ...


def outcome_fields(outcome: Outcome) -> tuple[int, bytes, bytes, bool, str | None]:
    """An outcome as the columns status, result_headers, result_body, truncated, error."""
    return (
        outcome.status,
        pack_headers(outcome.headers),
        outcome.body,
        outcome.truncated,
        outcome.error,
    )


# ---- what the SQL stores share: the calls table's columns and rows -------------

COLUMNS = (
    "id, function, body, headers, idem_key, state, attempts, created, due, started, finished, "
    "lease_until, host, status, result_headers, result_body, truncated, error"
)


def find_query(
    function: str | None, state: State | None, limit: int, mark: str
) -> tuple[str, list[Any]]:
    """The listing query both stores run, newest first; ``mark`` is the
    driver's parameter placeholder (``?`` for sqlite3, ``%s`` for psycopg)."""
    where: list[str] = []
    args: list[Any] = []
    if function is not None:
        where.append(f"function = {mark}")
        args.append(function)
    if state is not None:
        where.append(f"state = {mark}")
        args.append(state)
    sql = f"SELECT {COLUMNS} FROM calls"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY created DESC, id LIMIT {mark}"
    args.append(limit)
    return sql, args


def row_to_record(row: Sequence[Any]) -> CallRecord:
    (
        id_, function, body, headers, key, state, attempts, created, due, started, finished,
        lease_until, host, status, result_headers, result_body, truncated, error,
    ) = row  # fmt: skip
    return CallRecord(
        id=id_,
        function=function,
        body=bytes(body),
        headers=unpack_headers(bytes(headers)),
        idempotency_key=key,
        state=state,
        attempts=attempts,
        created=created,
        due=due,
        started=started,
        finished=finished,
        lease_until=lease_until,
        host=host,
        status=status,
        result_headers=unpack_headers(bytes(result_headers) if result_headers else None),
        result_body=bytes(result_body) if result_body is not None else None,
        truncated=bool(truncated),
        error=error,
    )


def queued_record(call: NewCall) -> CallRecord:
    """The record a just-accepted call has."""
    return CallRecord(
        id=call.id,
        function=call.function,
        body=call.body,
        headers=call.headers,
        idempotency_key=call.idempotency_key,
        state="queued",
        attempts=0,
        created=call.created,
        due=call.created,
    )
