"""The PostgreSQL store's notifications: another host (or this one) accepted or
requeued a call, so the dispatcher should look for work now, not at its next
deadline. The store sends ``NOTIFY kiln_calls`` on commit
(:mod:`kiln.asyncq.postgres`); :func:`listen` is the Trio task that hears it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import psycopg
import trio

from kiln.asyncq.postgres import CHANNEL

log = logging.getLogger("kiln.asyncq")


async def listen(dsn: str, wake: Callable[[], None], *, retry_after: float = 5.0) -> None:
    """Call ``wake()`` whenever another host (or this one) notifies ``kiln_calls``.

    Runs forever in the dispatcher's nursery on a connection of its own: it
    sleeps on the socket becoming readable (no polling), then drains what
    arrived without blocking. A lost connection is retried after
    ``retry_after`` seconds (meanwhile the dispatcher's deadlines still run it).
    """
    while True:
        try:
            conn = await trio.to_thread.run_sync(
                lambda: psycopg.connect(dsn, autocommit=True, connect_timeout=10)
            )
        except psycopg.Error as e:
            log.warning("async store: cannot listen for notifications: %s", e)
            await trio.sleep(retry_after)
            continue
        try:
            conn.execute(f"LISTEN {CHANNEL}")
            wake()  # whatever was notified while we were not listening
            pg = conn.pgconn
            while True:
                await trio.lowlevel.wait_readable(pg.socket)
                pg.consume_input()
                got = False
                while pg.notifies() is not None:
                    got = True
                if got:
                    wake()
                if pg.status != psycopg.pq.ConnStatus.OK:
                    raise psycopg.OperationalError("notification connection lost")
        except psycopg.Error as e:
            log.warning("async store: notification connection failed: %s", e)
        finally:
            conn.close()
        await trio.sleep(retry_after)
