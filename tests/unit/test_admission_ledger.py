"""The memory budget's books alone, without Trio: who is granted, in what order,
and which idle containers are picked for eviction (the waiting itself:
tests/unit/test_admission.py)."""

from __future__ import annotations

from collections.abc import Sequence

from kiln.admission.ledger import MemoryLedger, Waiter
from kiln.admission.reservation import EvictionCandidate, Reservation


class Flag:
    def __init__(self) -> None:
        self.is_set = False

    def set(self) -> None:
        self.is_set = True


def books(capacity: int = 100, *, async_fraction: float = 0.5) -> MemoryLedger:
    return MemoryLedger(
        capacity, queue_max=10, async_fraction=async_fraction, evictor=None, clock=lambda: 7.0
    )


def hold(
    ledger: MemoryLedger, amount: int, owner: str = "held", is_async: bool = False
) -> Reservation:
    return ledger._make_reservation(amount, owner, is_async, next(ledger._arrivals))


def wait(ledger: MemoryLedger, amount: int, owner: str = "f", is_async: bool = False) -> Waiter:
    waiter = Waiter(amount, owner, is_async, next(ledger._arrivals), 0.0, Flag())
    ledger._enqueue(waiter)
    return waiter


def granted(waiter: Waiter) -> bool:
    assert isinstance(waiter.event, Flag)
    assert waiter.event.is_set == (waiter.reservation is not None)
    return waiter.reservation is not None


def test_a_release_grants_in_arrival_order_and_a_small_waiter_never_overtakes() -> None:
    ledger = books()
    held = hold(ledger, 60)
    big, small = wait(ledger, 50), wait(ledger, 10)
    assert not granted(big)
    assert not granted(small)  # it would fit, but it waits behind the head
    ledger._release(held)
    assert granted(big)
    assert granted(small)
    assert big.reservation is not None
    assert small.reservation is not None
    assert big.reservation.grant_number < small.reservation.grant_number
    assert big.reservation.granted_at == 7.0  # the clock given
    assert ledger.statistics().reserved == 60


def test_an_async_waiter_blocked_by_its_share_lets_sync_waiters_pass() -> None:
    ledger = books(async_fraction=0.5)
    hold(ledger, 40, is_async=True)
    blocked = wait(ledger, 20, is_async=True)
    assert not granted(blocked)  # 60 > the async share of 50, though memory is free
    assert ledger._admissible_now(30, is_async=False)
    assert not ledger._admissible_now(5, is_async=True)  # behind the async head
    passing = wait(ledger, 30)
    assert granted(passing)
    assert [w.arrival for w in ledger.waiters()] == [blocked.arrival]


def test_a_waiter_leaving_re_examines_the_head() -> None:
    ledger = books()
    hold(ledger, 60)
    big, small = wait(ledger, 50), wait(ledger, 10)
    ledger._abandon(big)
    assert granted(small)
    assert not granted(big)
    assert ledger.statistics().waiting == 0


class Evictor:
    def __init__(self, candidates: Sequence[EvictionCandidate]) -> None:
        self.offered = candidates
        self.evicted: list[str] = []

    def candidates(self, exclude_owner: str) -> Sequence[EvictionCandidate]:
        return self.offered


def test_eviction_takes_the_oldest_idle_of_other_functions_only_if_they_cover() -> None:
    ledger = books()
    evictor = Evictor([])
    candidates = [
        EvictionCandidate(hold(ledger, 20, "a"), 3.0, lambda: evictor.evicted.append("a3")),
        EvictionCandidate(hold(ledger, 20, "b"), 1.0, lambda: evictor.evicted.append("b1")),
        EvictionCandidate(hold(ledger, 20, "c"), 2.0, lambda: evictor.evicted.append("c2")),
        EvictionCandidate(hold(ledger, 20, "f"), 0.0, lambda: evictor.evicted.append("own")),
    ]
    evictor.offered = candidates
    ledger.evictor = evictor
    too_big = wait(ledger, 100, owner="f")  # needs 80 more: the others have only 60
    assert evictor.evicted == []
    ledger._abandon(too_big)
    waiter = wait(ledger, 50, owner="f")  # needs 30: the two oldest idle of other functions
    assert evictor.evicted == ["b1", "c2"]
    assert ledger.statistics().evicting_bytes == 40
    assert not granted(waiter)
    ledger._release(candidates[1].reservation)  # an evicted container's memory comes back
    assert not granted(waiter)
    ledger._release(candidates[2].reservation)
    assert granted(waiter)
    assert ledger.statistics().evictions_requested == 2
