"""The store contract, for every implementation (SQLite always; PostgreSQL with a
real server started by the test: see tests/pgserver.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln.asyncq.records import NewCall, Outcome, new_call_id
from kiln.asyncq.sqlite import SQLiteStore
from kiln.asyncq.store import COLUMNS, QueueFull, Store, StoreError, find_query


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        s: Store = SQLiteStore(tmp_path / "async.db")
    else:
        from kiln.asyncq.postgres import PostgresStore
        from tests.pgserver import fresh_database

        dsn = fresh_database()
        s = PostgresStore(dsn)
    try:
        yield s
    finally:
        s.close()


def new(fn: str = "f", *, at: float = 1000.0, key: str | None = None, body: bytes = b"x") -> NewCall:
    return NewCall(
        id=new_call_id(),
        function=fn,
        body=body,
        headers=((b"content-type", b"text/plain"),),
        idempotency_key=key,
        created=at,
    )


OK = Outcome(status=200, headers=((b"a", b"b"),), body=b"out", truncated=False, error=None)


def test_accept_get_round_trip(store: Store) -> None:
    call = new(body=b"\x00\xffbody")
    acc = store.accept(call, queue_max=10)
    assert acc.created
    rec = store.get(call.id)
    assert rec is not None
    assert rec.state == "queued"
    assert rec.body == b"\x00\xffbody"
    assert rec.headers == ((b"content-type", b"text/plain"),)
    assert rec.attempts == 0
    assert rec.due == 1000.0
    assert store.get(new_call_id()) is None


def test_idempotency_key_returns_the_first_call(store: Store) -> None:
    a = store.accept(new(key="k1"), queue_max=10)
    b = store.accept(new(key="k1"), queue_max=10)
    assert not b.created
    assert b.record.id == a.record.id
    other_fn = store.accept(new("g", key="k1"), queue_max=10)
    assert other_fn.created
    assert store.stats(now=2000.0).queued == 2


def test_queue_full(store: Store) -> None:
    store.accept(new(), queue_max=2)
    store.accept(new(), queue_max=2)
    with pytest.raises(QueueFull):
        store.accept(new(), queue_max=2)
    # a finished call frees its place
    (c,) = store.claim(host="h", now=2000.0, lease=30, exclude=(), limit=1)
    assert store.finish(c.id, host="h", ok=True, outcome=OK, now=2001.0)
    store.accept(new(), queue_max=2)


def test_claim_oldest_due_first_skipping_excluded(store: Store) -> None:
    a = new("f", at=3.0)
    b = new("g", at=1.0)
    c = new("f", at=2.0)
    future = new("f", at=50.0)
    for x in (a, b, c, future):
        store.accept(x, queue_max=10)
    got = store.claim(host="h", now=10.0, lease=30, exclude=("g",), limit=5)
    assert [r.id for r in got] == [c.id, a.id]
    assert all(r.state == "running" and r.attempts == 1 and r.host == "h" for r in got)
    assert store.get(c.id).state == "running"  # type: ignore[union-attr]
    got = store.claim(host="h", now=10.0, lease=30, exclude=(), limit=5)
    assert [r.id for r in got] == [b.id]
    assert store.claim(host="h", now=10.0, lease=30, exclude=(), limit=5) == []
    # a shared store also wakes for the leases it could take over (they end at 40)
    assert store.next_due() == (40.0 if store.shared else 50.0)


def test_finish_retry_release(store: Store) -> None:
    x = new()
    store.accept(x, queue_max=10)
    store.claim(host="h", now=1000.0, lease=30, exclude=(), limit=1)
    assert not store.finish(x.id, host="other", ok=True, outcome=OK, now=1001.0)
    assert store.retry(x.id, host="h", due=1005.0, error="503 no_memory", status=503)
    rec = store.get(x.id)
    assert rec is not None
    assert rec.state == "queued"
    assert rec.due == 1005.0
    assert rec.attempts == 1
    assert store.claim(host="h", now=1004.0, lease=30, exclude=(), limit=1) == []
    (r,) = store.claim(host="h", now=1005.0, lease=30, exclude=(), limit=1)
    assert r.attempts == 2
    assert store.release(x.id, host="h", now=1006.0)
    rec = store.get(x.id)
    assert rec is not None
    assert rec.state == "queued"
    assert rec.attempts == 1
    store.claim(host="h", now=1006.0, lease=30, exclude=(), limit=1)
    assert store.finish(x.id, host="h", ok=True, outcome=OK, now=1007.0)
    rec = store.get(x.id)
    assert rec is not None
    assert rec.state == "succeeded"
    assert rec.result_body == b"out"
    assert rec.result_headers == ((b"a", b"b"),)
    assert rec.status == 200
    assert rec.finished == 1007.0


def test_cancel_only_queued(store: Store) -> None:
    x, y = new(), new()
    store.accept(x, queue_max=10)
    store.accept(y, queue_max=10)
    rec = store.cancel(x.id, now=1001.0)
    assert rec is not None
    assert rec.state == "cancelled"
    (r,) = store.claim(host="h", now=1001.0, lease=30, exclude=(), limit=5)
    assert r.id == y.id
    rec = store.cancel(y.id, now=1001.0)
    assert rec is not None
    assert rec.state == "running"
    assert store.cancel(new_call_id(), now=1.0) is None


def test_recover_own_running_calls(store: Store) -> None:
    x = new()
    store.accept(x, queue_max=10)
    store.claim(host="h1", now=1000.0, lease=30, exclude=(), limit=1)
    assert store.recover(host="h2", now=1001.0) == 0
    assert store.recover(host="h1", now=1001.0) == 1
    rec = store.get(x.id)
    assert rec is not None
    assert rec.state == "queued"
    assert rec.attempts == 1
    assert rec.error is not None
    assert rec.error.startswith("host_died")


def test_purge_and_listing(store: Store) -> None:
    calls = [new("f" if i % 2 else "g", at=1000.0 + i) for i in range(6)]
    for c in calls:
        store.accept(c, queue_max=10)
    done = store.claim(host="h", now=2000.0, lease=30, exclude=(), limit=2)
    for i, r in enumerate(done):
        store.finish(r.id, host="h", ok=True, outcome=OK, now=3000.0 + i)
    assert store.next_expiry() == 3000.0
    listed = store.find(function=None, state=None, limit=100)
    assert [r.id for r in listed] == [c.id for c in reversed(calls)]
    assert {r.function for r in store.find(function="f", state=None, limit=100)} == {"f"}
    assert len(store.find(function=None, state="succeeded", limit=100)) == 2
    assert len(store.find(function=None, state=None, limit=3)) == 3
    assert store.purge(before=3000.5) == 1
    assert store.purge(before=4000.0) == 1
    assert store.next_expiry() is None
    assert store.get(done[0].id) is None
    st = store.stats(now=1002.5)
    assert (st.queued, st.running, st.oldest_due) == (4, 0, 1002.0)


def test_sqlite_refuses_a_newer_schema(tmp_path: Path) -> None:
    s = SQLiteStore(tmp_path / "a.db")
    s._db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    s.close()
    with pytest.raises(StoreError, match="schema version 99"):
        SQLiteStore(tmp_path / "a.db")


def test_sqlite_survives_reopen(tmp_path: Path) -> None:
    s = SQLiteStore(tmp_path / "a.db")
    x = new()
    s.accept(x, queue_max=10)
    s.close()
    s = SQLiteStore(tmp_path / "a.db")
    assert s.get(x.id) is not None
    assert s.stats(now=2000.0).queued == 1
    s.close()


def test_expired_lease_is_taken_over_by_another_host() -> None:
    # Only a shared store (PostgreSQL) has other hosts.
    from kiln.asyncq.postgres import PostgresStore
    from tests.pgserver import fresh_database

    store = PostgresStore(fresh_database())
    x = new()
    store.accept(x, queue_max=10)
    store.claim(host="h1", now=1000.0, lease=30, exclude=(), limit=1)
    assert store.claim(host="h2", now=1029.0, lease=30, exclude=(), limit=1) == []
    (r,) = store.claim(host="h2", now=1030.0, lease=30, exclude=(), limit=1)
    assert r.host == "h2"
    assert r.attempts == 2
    assert r.error is not None
    assert r.error.startswith("host_died")
    # the first host's late result is refused: the call is h2's now
    assert not store.finish(x.id, host="h1", ok=True, outcome=OK, now=1031.0)
    assert store.finish(x.id, host="h2", ok=True, outcome=OK, now=1032.0)
    store.close()


def test_postgres_schema_version_check() -> None:
    import psycopg

    from kiln.asyncq.postgres import PostgresStore
    from tests.pgserver import fresh_database

    dsn = fresh_database()
    PostgresStore(dsn).close()
    PostgresStore(dsn).close()  # a second start finds the schema in place
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("UPDATE kiln_meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match="schema version 99"):
        PostgresStore(dsn)


def test_accept_many_and_finish_many(store: Store) -> None:
    from kiln.asyncq.store import Accepted, FinishItem

    a, b, c = new(key="same"), new(key="same"), new()
    out = store.accept_many([a, b, c], queue_max=2)
    assert isinstance(out[0], Accepted)
    assert out[0].created
    assert isinstance(out[1], Accepted)
    assert not out[1].created  # the same key inside one group: the first call
    assert out[1].record.id == a.id
    assert isinstance(out[2], Accepted)
    assert out[2].created
    claimed = store.claim(host="h", now=2000.0, lease=30, exclude=(), limit=5)
    assert {r.id for r in claimed} == {a.id, c.id}
    done = store.finish_many(
        [
            FinishItem(a.id, "h", True, OK, 2001.0),
            FinishItem(c.id, "other", True, OK, 2001.0),  # not this host's: refused
        ]
    )
    assert done == [True, False]
    assert store.stats(now=2002.0).running == 1


def test_the_listing_query_filters_what_it_is_given_with_the_drivers_placeholder() -> None:
    sql, args = find_query("f", "queued", 5, "%s")
    assert sql == (
        f"SELECT {COLUMNS} FROM calls WHERE function = %s AND state = %s"
        " ORDER BY created DESC, id LIMIT %s"
    )
    assert args == ["f", "queued", 5]
    assert find_query(None, None, 7, "?") == (
        f"SELECT {COLUMNS} FROM calls ORDER BY created DESC, id LIMIT ?",
        [7],
    )
