"""kiln.http.capacity: the connection cap's bookkeeping, driven by hand."""

from __future__ import annotations

import trio
import trio.testing

from kiln.http.capacity import Capacity


def test_eviction_order_idle_first_then_oldest_reading_never_busy() -> None:
    cap = Capacity(3)
    reading_old, idle, busy = cap.opened(), cap.opened(), cap.opened()
    cap.reading_now(reading_old)
    cap.idle_now(idle)
    cap.busy_now(busy)
    fourth = cap.opened()  # at the cap: the idle one goes first
    assert idle.evicted
    assert not reading_old.evicted
    cap.reading_now(fourth)
    cap.opened()  # then the oldest reading
    assert reading_old.evicted
    assert not fourth.evicted
    assert not busy.evicted
    assert cap.open == 5  # evicted ones count until their tasks close them
    for handle in (idle, reading_old):
        cap.closed(handle)
    assert cap.open == 3


def test_eviction_is_sticky() -> None:
    cap = Capacity(1)
    first = cap.opened()
    cap.idle_now(first)
    cap.opened()
    assert first.evicted
    cap.reading_now(first)  # its head arrived in the read the eviction raced with
    assert first not in cap.reading
    assert not cap.evict_one()


async def test_accepting_waits_while_every_connection_is_busy() -> None:
    cap = Capacity(1)
    only = cap.opened()
    cap.idle_now(only)
    assert not cap.full()
    with cap.accepting() as scope:
        cap.busy_now(only)  # now full: the pending accept is called off
        await trio.sleep_forever()
    assert scope.cancelled_caught
    async with trio.open_nursery() as nursery:
        waited = trio.Event()

        async def wait() -> None:
            await cap.wait_for_room()
            waited.set()

        nursery.start_soon(wait)
        await trio.testing.wait_all_tasks_blocked()
        assert not waited.is_set()
        cap.closed(only)
        await waited.wait()
