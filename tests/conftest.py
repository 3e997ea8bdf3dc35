"""Shared fixtures. ``autojump_clock``: pytest-trio runs a test that asks for it on
``MockClock(autojump_threshold=0)``, so virtual time jumps whenever every task waits."""

from __future__ import annotations

import pytest
import trio.testing


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)
