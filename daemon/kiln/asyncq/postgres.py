"""The PostgreSQL store: several Kiln hosts sharing one queue.

Claims take due calls with ``SELECT … FOR UPDATE SKIP LOCKED`` so hosts never
block on, nor take, each other's rows; a claimed call carries a lease
(``lease_until``) and a host whose lease expired is taken to be dead: another
host's claim takes the call over, and that host's late ``finish`` is refused
(``WHERE host = me``). Every accept (and retry) sends ``NOTIFY kiln_calls`` on
commit, which wakes the other hosts' dispatchers
(:func:`kiln.asyncq.pgnotify.listen`).

The schema is created at start and migrated forward; a database whose schema
is newer than this Kiln is refused. Times are epoch seconds (double precision)
from the hosts' clocks: keep them NTP-synchronised (leases are tens of seconds,
so small skew only delays a takeover).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import psycopg

from kiln.asyncq.records import CallRecord, NewCall, State, pack_headers
from kiln.asyncq.store import (
    COLUMNS,
    Accepted,
    FinishItem,
    QueueFull,
    QueueStats,
    Store,
    StoreError,
    find_query,
    outcome_fields,
    queued_record,
    row_to_record,
)

log = logging.getLogger("kiln.asyncq")

T = TypeVar("T")

SCHEMA_VERSION = 1
CHANNEL = "kiln_calls"
#: Serialises schema creation between hosts starting at once.
SCHEMA_LOCK = 0x6B696C6E

MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE calls (
        id text PRIMARY KEY,
        function text NOT NULL,
        body bytea NOT NULL,
        headers bytea NOT NULL,
        idem_key text,
        state text NOT NULL,
        attempts integer NOT NULL DEFAULT 0,
        created double precision NOT NULL,
        due double precision NOT NULL,
        started double precision,
        finished double precision,
        lease_until double precision,
        host text,
        status integer,
        result_headers bytea,
        result_body bytea,
        truncated boolean NOT NULL DEFAULT false,
        error text
    );
    CREATE UNIQUE INDEX calls_idem ON calls (function, idem_key) WHERE idem_key IS NOT NULL;
    CREATE INDEX calls_due ON calls (due) WHERE state = 'queued';
    CREATE INDEX calls_lease ON calls (lease_until) WHERE state = 'running';
    CREATE INDEX calls_running ON calls (host) WHERE state = 'running';
    CREATE INDEX calls_finished ON calls (finished)
        WHERE state IN ('succeeded', 'failed', 'cancelled');
    CREATE INDEX calls_created ON calls (created);
    """,
}

#: For the dispatcher's claims and retries: losing the last of them in a
#: database crash only runs a call again (the documented at-least-once edge),
#: so they need not wait for the WAL flush. Accepts and results do.
LAZY_COMMIT = "SET LOCAL synchronous_commit TO OFF"

HOST_DIED = "host_died: the host running it stopped before recording a result"


class PostgresStore(Store):
    shared = True

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._db: psycopg.Connection[Any] | None = None
        try:
            self._migrate(self._conn())
        except psycopg.Error as e:
            raise StoreError(f"async store (PostgreSQL): {e}") from e

    def _conn(self) -> psycopg.Connection[Any]:
        if self._db is None or self._db.closed or self._db.broken:
            self._db = psycopg.connect(self.dsn, autocommit=False, connect_timeout=10)
        return self._db

    def _migrate(self, db: psycopg.Connection[Any]) -> None:
        with db.transaction():
            db.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            db.execute(
                "CREATE TABLE IF NOT EXISTS kiln_meta (key text PRIMARY KEY, value text NOT NULL)"
            )
            row = db.execute("SELECT value FROM kiln_meta WHERE key = 'schema_version'").fetchone()
            have = int(row[0]) if row else 0
            if have > SCHEMA_VERSION:
                raise StoreError(
                    f"async store: the database's schema version {have} is newer than this "
                    f"kiln's {SCHEMA_VERSION}: upgrade kiln"
                )
            for version in range(have + 1, SCHEMA_VERSION + 1):
                log.info("async store: migrating the schema to version %d", version)
                db.execute(MIGRATIONS[version])
            db.execute(
                "INSERT INTO kiln_meta (key, value) VALUES ('schema_version', %s) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(SCHEMA_VERSION),),
            )
        db.commit()

    def _run(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        try:
            db = self._conn()
            with db.transaction():
                out = fn(db)
            db.commit()
            return out
        except psycopg.Error as e:
            raise StoreError(f"async store (PostgreSQL): {e}") from e

    # ---- accept and read ------------------------------------------------------------

    def accept_many(
        self, calls: Sequence[NewCall], *, queue_max: int
    ) -> list[Accepted | QueueFull]:
        def tx(db: psycopg.Connection[Any]) -> list[Accepted | QueueFull]:
            (pending,) = db.execute(
                "SELECT count(*) FROM calls WHERE state IN ('queued', 'running')"
            ).fetchone() or (0,)
            out: list[Accepted | QueueFull] = []
            for call in calls:
                if call.idempotency_key is not None:
                    row = db.execute(
                        f"SELECT {COLUMNS} FROM calls WHERE function = %s AND idem_key = %s",
                        (call.function, call.idempotency_key),
                    ).fetchone()
                    if row is not None:
                        out.append(Accepted(row_to_record(row), created=False))
                        continue
                if pending >= queue_max:
                    out.append(QueueFull())
                    continue
                row = db.execute(
                    "INSERT INTO calls (id, function, body, headers, idem_key, state, created, due) "
                    "VALUES (%s, %s, %s, %s, %s, 'queued', %s, %s) "
                    "ON CONFLICT (function, idem_key) WHERE idem_key IS NOT NULL DO NOTHING "
                    "RETURNING id",
                    (
                        call.id,
                        call.function,
                        call.body,
                        pack_headers(call.headers),
                        call.idempotency_key,
                        call.created,
                        call.created,
                    ),
                ).fetchone()
                if row is None:  # another host accepted the same key a moment ago
                    row = db.execute(
                        f"SELECT {COLUMNS} FROM calls WHERE function = %s AND idem_key = %s",
                        (call.function, call.idempotency_key),
                    ).fetchone()
                    assert row is not None
                    out.append(Accepted(row_to_record(row), created=False))
                    continue
                pending += 1
                out.append(Accepted(queued_record(call), created=True))
            if any(isinstance(x, Accepted) and x.created for x in out):
                db.execute(f"NOTIFY {CHANNEL}")
            return out

        return self._run(tx)

    def get(self, call_id: str) -> CallRecord | None:
        def tx(db: psycopg.Connection[Any]) -> CallRecord | None:
            row = db.execute(f"SELECT {COLUMNS} FROM calls WHERE id = %s", (call_id,)).fetchone()
            return None if row is None else row_to_record(row)

        return self._run(tx)

    def find(self, *, function: str | None, state: State | None, limit: int) -> list[CallRecord]:
        sql, args = find_query(function, state, limit, "%s")
        return self._run(lambda db: [row_to_record(r) for r in db.execute(sql, args).fetchall()])

    def cancel(self, call_id: str, *, now: float) -> CallRecord | None:
        def tx(db: psycopg.Connection[Any]) -> CallRecord | None:
            db.execute(
                "UPDATE calls SET state = 'cancelled', finished = %s "
                "WHERE id = %s AND state = 'queued'",
                (now, call_id),
            )
            row = db.execute(f"SELECT {COLUMNS} FROM calls WHERE id = %s", (call_id,)).fetchone()
            return None if row is None else row_to_record(row)

        return self._run(tx)

    # ---- the dispatcher's transitions --------------------------------------------------

    def claim(
        self, *, host: str, now: float, lease: float, exclude: Sequence[str], limit: int
    ) -> list[CallRecord]:
        cols = ", ".join(f"calls.{c.strip()}" for c in COLUMNS.split(","))

        def take(db: psycopg.Connection[Any], where: str, order: str, n: int) -> list[Any]:
            return db.execute(
                "WITH due_calls AS ("
                f"  SELECT id FROM calls WHERE {where} AND NOT (function = ANY(%(exclude)s))"
                f"  ORDER BY {order} LIMIT %(limit)s FOR UPDATE SKIP LOCKED"
                ") "
                "UPDATE calls SET state = 'running', attempts = calls.attempts + 1, "
                "  host = %(host)s, started = %(now)s, lease_until = %(lease_until)s, "
                "  error = CASE WHEN calls.state = 'running' THEN %(died)s ELSE calls.error END "
                f"FROM due_calls WHERE calls.id = due_calls.id RETURNING {cols}",
                {
                    "now": now,
                    "exclude": list(exclude),
                    "limit": n,
                    "host": host,
                    "lease_until": now + lease,
                    "died": HOST_DIED,
                },
            ).fetchall()

        def tx(db: psycopg.Connection[Any]) -> list[CallRecord]:
            db.execute(LAZY_COMMIT)
            # Calls whose host died first (they are older), then due queued calls;
            # each query walks its own partial index in order.
            rows = take(db, "state = 'running' AND lease_until <= %(now)s", "lease_until", limit)
            if len(rows) < limit:
                rows += take(db, "state = 'queued' AND due <= %(now)s", "due", limit - len(rows))
            return [row_to_record(r) for r in rows]

        return self._run(tx)

    def finish_many(self, items: Sequence[FinishItem]) -> list[bool]:
        def tx(db: psycopg.Connection[Any]) -> list[bool]:
            out = []
            for it in items:
                status, headers, body, truncated, error = outcome_fields(it.outcome)
                n = db.execute(
                    "UPDATE calls SET state = %s, finished = %s, lease_until = NULL, "
                    "status = %s, result_headers = %s, result_body = %s, truncated = %s, "
                    "error = %s WHERE id = %s AND state = 'running' AND host = %s",
                    (
                        "succeeded" if it.ok else "failed",
                        it.now,
                        status,
                        headers,
                        body,
                        truncated,
                        error,
                        it.call_id,
                        it.host,
                    ),
                ).rowcount
                out.append(n == 1)
            return out

        return self._run(tx)

    def retry(self, call_id: str, *, host: str, due: float, error: str, status: int) -> bool:
        def tx(db: psycopg.Connection[Any]) -> int:
            db.execute(LAZY_COMMIT)
            n = db.execute(
                "UPDATE calls SET state = 'queued', due = %s, lease_until = NULL, error = %s, "
                "status = %s WHERE id = %s AND state = 'running' AND host = %s",
                (due, error, status, call_id, host),
            ).rowcount
            db.execute(f"NOTIFY {CHANNEL}")
            return n

        return self._run(tx) == 1

    def release(self, call_id: str, *, host: str, now: float) -> bool:
        def tx(db: psycopg.Connection[Any]) -> int:
            n = db.execute(
                "UPDATE calls SET state = 'queued', due = %s, lease_until = NULL, "
                "attempts = greatest(attempts - 1, 0) "
                "WHERE id = %s AND state = 'running' AND host = %s",
                (now, call_id, host),
            ).rowcount
            db.execute(f"NOTIFY {CHANNEL}")
            return n

        return self._run(tx) == 1

    def recover(self, *, host: str, now: float) -> int:
        def tx(db: psycopg.Connection[Any]) -> int:
            return db.execute(
                "UPDATE calls SET state = 'queued', due = %s, lease_until = NULL, error = %s "
                "WHERE state = 'running' AND host = %s",
                (now, HOST_DIED, host),
            ).rowcount

        return self._run(tx)

    def next_due(self, *, exclude: Sequence[str] = ()) -> float | None:
        def tx(db: psycopg.Connection[Any]) -> float | None:
            row = db.execute(
                "SELECT least("
                "  (SELECT min(due) FROM calls WHERE state = 'queued'"
                "     AND NOT (function = ANY(%(x)s))),"
                "  (SELECT min(lease_until) FROM calls WHERE state = 'running'"
                "     AND NOT (function = ANY(%(x)s))))",
                {"x": list(exclude)},
            ).fetchone()
            return None if row is None or row[0] is None else float(row[0])

        return self._run(tx)

    def purge(self, *, before: float) -> int:
        return self._run(
            lambda db: (
                db.execute(
                    "DELETE FROM calls WHERE state IN ('succeeded', 'failed', 'cancelled') "
                    "AND finished <= %s",
                    (before,),
                ).rowcount
            )
        )

    def next_expiry(self) -> float | None:
        def tx(db: psycopg.Connection[Any]) -> float | None:
            row = db.execute(
                "SELECT min(finished) FROM calls "
                "WHERE state IN ('succeeded', 'failed', 'cancelled')"
            ).fetchone()
            return None if row is None or row[0] is None else float(row[0])

        return self._run(tx)

    def stats(self, *, now: float) -> QueueStats:
        def tx(db: psycopg.Connection[Any]) -> QueueStats:
            counts = dict(
                db.execute(
                    "SELECT state, count(*) FROM calls "
                    "WHERE state IN ('queued', 'running') GROUP BY state"
                ).fetchall()
            )
            row = db.execute(
                "SELECT min(due) FROM calls WHERE state = 'queued' AND due <= %s", (now,)
            ).fetchone()
            oldest = None if row is None or row[0] is None else float(row[0])
            return QueueStats(
                queued=int(counts.get("queued", 0)),
                running=int(counts.get("running", 0)),
                oldest_due=oldest,
            )

        return self._run(tx)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
