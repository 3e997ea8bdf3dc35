"""Herd control by arithmetic (pure, no I/O).

A function starts a new container only while the calls waiting for one
outnumber the containers that will soon be free for them (idle + starting),
never beyond ``max_containers``, and always enough to keep ``min_warm``
containers around. No first-call lock: a thousand simultaneous first calls to
one function start at most ``max_containers`` containers, and never more than
there are waiting calls.
"""

from __future__ import annotations


def containers_to_start(
    *, waiting: int, idle: int, starting: int, total: int, max_containers: int, min_warm: int
) -> int:
    """How many containers to start now.

    ``total`` counts every live container (starting, idle, busy) of the function.
    """
    room = max_containers - total
    if room <= 0:
        return 0
    for_calls = waiting - idle - starting
    for_warmth = min_warm - total
    return max(0, min(room, max(for_calls, for_warmth)))


def should_retire_idle(*, total: int, min_warm: int) -> bool:
    """An idle container reaching its idle timeout goes, unless that would drop below min_warm."""
    return total > min_warm
