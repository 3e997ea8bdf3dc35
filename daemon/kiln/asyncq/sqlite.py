"""The SQLite store: one file under ``[daemon] state_dir``, nothing to install.

WAL journal; accepts and cancels commit with ``synchronous=FULL`` (fsynced
before the 202), the dispatcher's own transitions with ``NORMAL`` (a power
loss may forget the last of them, which at worst runs a call again — the
documented at-least-once edge). One daemon owns the file, so the pending count
is kept in memory and claims never need to take over another host's lease.
"""

from __future__ import annotations

import dataclasses
import os
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

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

T = TypeVar("T")

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS calls (
    id TEXT PRIMARY KEY,
    function TEXT NOT NULL,
    body BLOB NOT NULL,
    headers BLOB NOT NULL,
    idem_key TEXT,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    due REAL NOT NULL,
    started REAL,
    finished REAL,
    lease_until REAL,
    host TEXT,
    status INTEGER,
    result_headers BLOB,
    result_body BLOB,
    truncated INTEGER NOT NULL DEFAULT 0,
    error TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS calls_idem ON calls (function, idem_key)
    WHERE idem_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS calls_due ON calls (due) WHERE state = 'queued';
CREATE INDEX IF NOT EXISTS calls_running ON calls (host) WHERE state = 'running';
CREATE INDEX IF NOT EXISTS calls_finished ON calls (finished)
    WHERE state IN ('succeeded', 'failed', 'cancelled');
CREATE INDEX IF NOT EXISTS calls_created ON calls (created);
"""


class SQLiteStore(Store):
    shared = False

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        memory = str(path) == ":memory:"  # tests only
        try:
            if not memory:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                str(self.path), isolation_level=None, check_same_thread=False, timeout=5.0
            )
            if not memory:
                os.chmod(self.path, 0o600)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(SCHEMA)
            self._check_version()
            self._pending = self._count_pending()
        except sqlite3.Error as e:
            raise StoreError(f"async store {self.path}: {e}") from e

    def _check_version(self) -> None:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None:
            self._db.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
        elif int(row[0]) > SCHEMA_VERSION:
            raise StoreError(
                f"async store {self.path} has schema version {row[0]}, newer than this "
                f"kiln's {SCHEMA_VERSION}: upgrade kiln or use another state_dir"
            )

    def _count_pending(self) -> int:
        row = self._db.execute(
            "SELECT count(*) FROM calls WHERE state IN ('queued', 'running')"
        ).fetchone()
        return int(row[0])

    def _tx(self, durable: bool) -> sqlite3.Connection:
        self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        self._db.execute("BEGIN IMMEDIATE")
        return self._db

    def _run(self, durable: bool, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            db = self._tx(durable)
            try:
                out = fn(db)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            return out
        except sqlite3.Error as e:
            raise StoreError(f"async store {self.path}: {e}") from e

    # ---- accept and read ----------------------------------------------------------

    def accept_many(
        self, calls: Sequence[NewCall], *, queue_max: int
    ) -> list[Accepted | QueueFull]:
        added = 0

        def tx(db: sqlite3.Connection) -> list[Accepted | QueueFull]:
            nonlocal added
            added = 0
            out: list[Accepted | QueueFull] = []
            for call in calls:
                if call.idempotency_key is not None:
                    row = db.execute(
                        f"SELECT {COLUMNS} FROM calls WHERE function = ? AND idem_key = ?",
                        (call.function, call.idempotency_key),
                    ).fetchone()
                    if row is not None:
                        out.append(Accepted(row_to_record(row), created=False))
                        continue
                if self._pending + added >= queue_max:
                    out.append(QueueFull())
                    continue
                db.execute(
                    "INSERT INTO calls (id, function, body, headers, idem_key, state, created, due) "
                    "VALUES (?, ?, ?, ?, ?, 'queued', ?, ?)",
                    (
                        call.id,
                        call.function,
                        call.body,
                        pack_headers(call.headers),
                        call.idempotency_key,
                        call.created,
                        call.created,
                    ),
                )
                added += 1
                out.append(Accepted(queued_record(call), created=True))
            return out

        results = self._run(True, tx)
        self._pending += added
        return results

    def get(self, call_id: str) -> CallRecord | None:
        try:
            row = self._db.execute(
                f"SELECT {COLUMNS} FROM calls WHERE id = ?", (call_id,)
            ).fetchone()
        except sqlite3.Error as e:
            raise StoreError(f"async store {self.path}: {e}") from e
        return None if row is None else row_to_record(row)

    def find(self, *, function: str | None, state: State | None, limit: int) -> list[CallRecord]:
        sql, args = find_query(function, state, limit, "?")
        try:
            return [row_to_record(r) for r in self._db.execute(sql, args).fetchall()]
        except sqlite3.Error as e:
            raise StoreError(f"async store {self.path}: {e}") from e

    def cancel(self, call_id: str, *, now: float) -> CallRecord | None:
        def tx(db: sqlite3.Connection) -> tuple[int, CallRecord | None]:
            n = db.execute(
                "UPDATE calls SET state = 'cancelled', finished = ? WHERE id = ? AND state = 'queued'",
                (now, call_id),
            ).rowcount
            row = db.execute(f"SELECT {COLUMNS} FROM calls WHERE id = ?", (call_id,)).fetchone()
            return n, None if row is None else row_to_record(row)

        n, record = self._run(True, tx)
        self._pending -= n
        return record

    # ---- the dispatcher's transitions ------------------------------------------------

    def claim(
        self, *, host: str, now: float, lease: float, exclude: Sequence[str], limit: int
    ) -> list[CallRecord]:
        def tx(db: sqlite3.Connection) -> list[CallRecord]:
            sql = f"SELECT {COLUMNS} FROM calls WHERE state = 'queued' AND due <= ?"
            args: list[Any] = [now]
            if exclude:
                sql += f" AND function NOT IN ({', '.join('?' * len(exclude))})"
                args.extend(exclude)
            sql += " ORDER BY due LIMIT ?"
            args.append(limit)
            out: list[CallRecord] = []
            for row in db.execute(sql, args).fetchall():
                r = row_to_record(row)
                db.execute(
                    "UPDATE calls SET state = 'running', attempts = attempts + 1, host = ?, "
                    "started = ?, lease_until = ? WHERE id = ?",
                    (host, now, now + lease, r.id),
                )
                out.append(
                    dataclasses.replace(
                        r,
                        state="running",
                        attempts=r.attempts + 1,
                        host=host,
                        started=now,
                        lease_until=now + lease,
                    )
                )
            return out

        return self._run(False, tx)

    def finish_many(self, items: Sequence[FinishItem]) -> list[bool]:
        def tx(db: sqlite3.Connection) -> list[bool]:
            out = []
            for it in items:
                status, headers, body, truncated, error = outcome_fields(it.outcome)
                n = db.execute(
                    "UPDATE calls SET state = ?, finished = ?, lease_until = NULL, status = ?, "
                    "result_headers = ?, result_body = ?, truncated = ?, error = ? "
                    "WHERE id = ? AND state = 'running' AND host = ?",
                    (
                        "succeeded" if it.ok else "failed",
                        it.now,
                        status,
                        headers,
                        body,
                        int(truncated),
                        error,
                        it.call_id,
                        it.host,
                    ),
                ).rowcount
                out.append(n == 1)
            return out

        done = self._run(False, tx)
        self._pending -= sum(done)
        return done

    def retry(self, call_id: str, *, host: str, due: float, error: str, status: int) -> bool:
        def tx(db: sqlite3.Connection) -> int:
            return db.execute(
                "UPDATE calls SET state = 'queued', due = ?, lease_until = NULL, error = ?, "
                "status = ? WHERE id = ? AND state = 'running' AND host = ?",
                (due, error, status, call_id, host),
            ).rowcount

        return self._run(False, tx) == 1

    def release(self, call_id: str, *, host: str, now: float) -> bool:
        def tx(db: sqlite3.Connection) -> int:
            return db.execute(
                "UPDATE calls SET state = 'queued', due = ?, lease_until = NULL, "
                "attempts = max(attempts - 1, 0) WHERE id = ? AND state = 'running' AND host = ?",
                (now, call_id, host),
            ).rowcount

        return self._run(False, tx) == 1

    def recover(self, *, host: str, now: float) -> int:
        def tx(db: sqlite3.Connection) -> int:
            return db.execute(
                "UPDATE calls SET state = 'queued', due = ?, lease_until = NULL, "
                "error = 'host_died: the host running it stopped before recording a result' "
                "WHERE state = 'running' AND host = ?",
                (now, host),
            ).rowcount

        return self._run(True, tx)

    def next_due(self, *, exclude: Sequence[str] = ()) -> float | None:
        sql = "SELECT min(due) FROM calls WHERE state = 'queued'"
        if exclude:
            sql += f" AND function NOT IN ({', '.join('?' * len(exclude))})"
        try:
            row = self._db.execute(sql, list(exclude)).fetchone()
        except sqlite3.Error as e:
            raise StoreError(f"async store {self.path}: {e}") from e
        return None if row[0] is None else float(row[0])

    def purge(self, *, before: float) -> int:
        def tx(db: sqlite3.Connection) -> int:
            return db.execute(
                "DELETE FROM calls WHERE state IN ('succeeded', 'failed', 'cancelled') "
                "AND finished <= ?",
                (before,),
            ).rowcount

        return self._run(False, tx)

    def next_expiry(self) -> float | None:
        try:
            row = self._db.execute(
                "SELECT min(finished) FROM calls WHERE state IN ('succeeded', 'failed', 'cancelled')"
            ).fetchone()
        except sqlite3.Error as e:
            raise StoreError(f"async store {self.path}: {e}") from e
        return None if row[0] is None else float(row[0])

    def stats(self, *, now: float) -> QueueStats:
        try:
            rows = self._db.execute(
                "SELECT state, count(*) FROM calls WHERE state IN ('queued', 'running') GROUP BY state"
            ).fetchall()
            oldest = self._db.execute(
                "SELECT min(due) FROM calls WHERE state = 'queued' AND due <= ?", (now,)
            ).fetchone()[0]
        except sqlite3.Error as e:
            raise StoreError(f"async store {self.path}: {e}") from e
        counts = dict(rows)
        return QueueStats(
            queued=int(counts.get("queued", 0)),
            running=int(counts.get("running", 0)),
            oldest_due=None if oldest is None else float(oldest),
        )

    def close(self) -> None:
        self._db.close()
