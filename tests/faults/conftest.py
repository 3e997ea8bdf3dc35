"""Fault tests run real ``kiln daemon`` processes with the integration fixtures
(real Docker; fail, not skip, under CI)."""

from __future__ import annotations

from tests.integration.conftest import docker, start_daemon

__all__ = ["docker", "start_daemon"]
