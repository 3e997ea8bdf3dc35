"""sd_notify: a receiver socket (path and abstract names) sees what Kiln says."""

from __future__ import annotations

import os
import secrets
import socket
from pathlib import Path

import pytest
import trio
import trio.testing

from kiln.systemd import Notifier


async def receiver(address: str | bytes) -> trio.socket.SocketType:
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    await sock.bind(address)
    return sock


@pytest.mark.parametrize("abstract", [False, True])
async def test_ready_status_stopping(tmp_path: Path, abstract: bool) -> None:
    address: str | bytes
    if abstract:
        name = "kiln-test-" + secrets.token_hex(4)
        env, address = {"NOTIFY_SOCKET": "@" + name}, b"\0" + name.encode()
    else:
        path = str(tmp_path / "notify.sock")
        env, address = {"NOTIFY_SOCKET": path}, path
    sock = await receiver(address)
    n = Notifier(env)
    await n.ready("serving 3 functions")
    await n.status("2 calls in flight")
    await n.stopping()
    got = [await sock.recv(4096) for _ in range(3)]
    assert got == [
        b"READY=1\nSTATUS=serving 3 functions",
        b"STATUS=2 calls in flight",
        b"STOPPING=1",
    ]
    n.close()
    sock.close()


async def test_not_under_systemd_is_a_no_op() -> None:
    n = Notifier({})
    assert not n.enabled
    await n.ready("x")
    with trio.fail_after(1):
        await n.watchdog()  # returns at once: nothing to ping


async def test_watchdog_pings_at_half_the_interval(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    path = str(tmp_path / "notify.sock")
    sock = await receiver(path)
    n = Notifier(
        {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "10000000", "WATCHDOG_PID": str(os.getpid())}
    )
    assert n.watchdog_interval == 10.0
    times: list[float] = []
    t0 = trio.current_time()
    async with trio.open_nursery() as nursery:
        await nursery.start(n.watchdog)
        for _ in range(4):
            assert await sock.recv(100) == b"WATCHDOG=1"
            times.append(trio.current_time() - t0)
        nursery.cancel_scope.cancel()
    assert times == [0.0, 5.0, 10.0, 15.0]
    sock.close()


def test_watchdog_for_another_pid_is_ignored() -> None:
    n = Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"})
    assert n.watchdog_interval is None
