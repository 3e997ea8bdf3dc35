"""The herd decision, as plain arithmetic."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from kiln.herd import containers_to_start, should_retire_idle


def start(**kw: int) -> int:
    args = {"waiting": 0, "idle": 0, "starting": 0, "total": 0, "max_containers": 10, "min_warm": 0}
    args.update(kw)
    return containers_to_start(**args)


def test_first_calls_start_one_each_up_to_max() -> None:
    assert start(waiting=1) == 1
    assert start(waiting=3) == 3
    assert start(waiting=1000) == 10


def test_idle_and_starting_containers_count_as_coming() -> None:
    assert start(waiting=3, idle=1, total=1) == 2
    assert start(waiting=3, starting=3, total=3) == 0
    assert start(waiting=5, starting=2, total=4) == 3


def test_never_beyond_max() -> None:
    assert start(waiting=50, total=10) == 0
    assert start(waiting=50, total=9, starting=1) == 1


def test_min_warm_prewarms_without_calls() -> None:
    assert start(min_warm=2) == 2
    assert start(min_warm=2, total=1, idle=1) == 1
    assert start(min_warm=2, total=2, idle=2) == 0


def test_retire_keeps_min_warm() -> None:
    assert should_retire_idle(total=3, min_warm=2)
    assert not should_retire_idle(total=2, min_warm=2)


@given(
    st.integers(0, 2000),
    st.integers(0, 20),
    st.integers(0, 20),
    st.integers(0, 20),
    st.integers(1, 20),
    st.integers(0, 20),
)
def test_invariants(
    waiting: int, idle: int, starting: int, busy: int, max_c: int, warm: int
) -> None:
    total = idle + starting + busy
    n = containers_to_start(
        waiting=waiting,
        idle=idle,
        starting=starting,
        total=total,
        max_containers=max_c,
        min_warm=min(warm, max_c),
    )
    assert n >= 0
    assert total + n <= max(total, max_c)  # never beyond max_containers
    # never more starting than the waiting calls need, unless keeping min_warm
    assert starting + n <= max(waiting - idle, starting, min(warm, max_c) - total + starting)
