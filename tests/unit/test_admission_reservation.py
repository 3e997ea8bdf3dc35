"""What the memory budget hands out: a reservation and an eviction candidate."""

from __future__ import annotations

from kiln.admission.memory import MemoryBudget
from kiln.admission.reservation import EvictionCandidate, Reservation
from kiln.units import MiB


def test_a_reservation_says_what_it_holds_and_a_candidate_whose_it_is() -> None:
    pool = MemoryBudget(1024 * MiB)
    res = Reservation(pool, 128 * MiB, "hello", True, 0, 1, 0.0)
    assert repr(res) == "<Reservation 'hello' 128 MiB async>"
    assert not res.released
    assert not res.evicting
    candidate = EvictionCandidate(res, 5.0, lambda: None)
    assert (candidate.owner, candidate.amount) == ("hello", 128 * MiB)
