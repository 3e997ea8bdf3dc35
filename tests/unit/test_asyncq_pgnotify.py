"""PostgreSQL notifications: a call accepted on another connection wakes the listener
(a real server started by the test: see tests/pgserver.py)."""

from __future__ import annotations

import trio

from kiln.asyncq.records import NewCall, new_call_id


async def test_an_accept_wakes_the_listener() -> None:
    from kiln.asyncq.pgnotify import listen
    from kiln.asyncq.postgres import PostgresStore
    from tests.pgserver import fresh_database

    dsn = fresh_database()
    store = PostgresStore(dsn)
    send, wakes = trio.open_memory_channel[None](100)
    call = NewCall(
        id=new_call_id(), function="f", body=b"x", headers=(), idempotency_key=None, created=1.0
    )
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(listen, dsn, lambda: send.send_nowait(None))
            await wakes.receive()  # listening: it wakes once for what it may have missed
            await trio.to_thread.run_sync(lambda: store.accept(call, queue_max=10))
            await wakes.receive()
            nursery.cancel_scope.cancel()
    finally:
        store.close()
