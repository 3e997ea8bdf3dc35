"""Small Trio helpers used across Kiln."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio


@asynccontextmanager
async def open_nursery() -> AsyncIterator[trio.Nursery]:
    """A nursery that re-raises a lone exception as itself, not wrapped in a group.

    Trio wraps every error leaving a nursery in an ExceptionGroup. Where a
    nursery only runs a helper beside the main work (a stdin feeder, a
    disconnect watcher), callers want the one real error — a CallError, a
    DockerError — so they can map it to a status. Two or more errors stay a group.
    """
    try:
        async with trio.open_nursery() as nursery:
            yield nursery
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1 and not isinstance(group.exceptions[0], BaseExceptionGroup):
            raise group.exceptions[0] from group.exceptions[0].__cause__
        raise
