"""What the memory budget hands out and reports: a container's
:class:`Reservation`, an :class:`EvictionCandidate` and the :class:`Evictor`
that offers them, and the snapshots :class:`MemoryStatistics` and
:class:`WaiterInfo`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from kiln.units import format_size

if TYPE_CHECKING:
    from kiln.admission.ledger import MemoryLedger


class Reservation:
    """Memory held for one container. Made only by
    :meth:`~kiln.admission.memory.MemoryBudget.reserve`.

    ``arrival`` numbers requests in the order they reached the pool and
    ``grant_number`` in the order they were granted (both per pool).
    """

    __slots__ = (
        "_evicting",
        "_pool",
        "_released",
        "amount",
        "arrival",
        "grant_number",
        "granted_at",
        "is_async",
        "owner",
    )

    def __init__(
        self,
        pool: MemoryLedger,
        amount: int,
        owner: str,
        is_async: bool,
        arrival: int,
        grant_number: int,
        granted_at: float,
    ) -> None:
        self._pool = pool
        self.amount = amount
        self.owner = owner
        self.is_async = is_async
        self.arrival = arrival
        self.grant_number = grant_number
        self.granted_at = granted_at
        self._released = False
        self._evicting = False

    @property
    def released(self) -> bool:
        return self._released

    @property
    def evicting(self) -> bool:
        """Whether the pool asked for this reservation's container to be evicted."""
        return self._evicting

    def __repr__(self) -> str:
        return (
            f"<Reservation {self.owner!r} {format_size(self.amount)}"
            f"{' async' if self.is_async else ''}{' released' if self._released else ''}>"
        )


@dataclass(frozen=True)
class EvictionCandidate:
    """An idle container that could be evicted to free memory.

    ``reservation`` is the container's memory reservation (it gives ``owner``
    and ``amount``, and lets the pool tell when the evicted memory is back);
    ``idle_since`` is ``trio.current_time()`` when it went idle; ``evict`` asks
    the container's task to remove it. ``evict`` must not block; it should not
    raise (if it does, the error is logged and the candidate is not counted).
    """

    reservation: Reservation
    idle_since: float
    evict: Callable[[], None]

    @property
    def owner(self) -> str:
        return self.reservation.owner

    @property
    def amount(self) -> int:
        return self.reservation.amount


class Evictor(Protocol):
    """What the pool asks for idle containers (implemented by the supervisors)."""

    def candidates(self, exclude_owner: str) -> Sequence[EvictionCandidate]:
        """Idle containers of functions other than ``exclude_owner``. Must not block."""
        ...


@dataclass(frozen=True)
class MemoryStatistics:
    """Snapshot of a :class:`~kiln.admission.memory.MemoryBudget` (for ``/status``, metrics and tests)."""

    capacity: int
    reserved: int
    reserved_async: int
    reservations: int
    waiting: int
    waiting_bytes: int
    evicting_bytes: int
    granted_total: int
    rejected_queue_full: int
    rejected_timeout: int
    async_capacity: int
    evictions_requested: int


@dataclass(frozen=True)
class WaiterInfo:
    """One queued request, for the status page."""

    owner: str
    amount: int
    is_async: bool
    arrival: int
    since: float
