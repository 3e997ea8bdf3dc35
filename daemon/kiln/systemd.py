"""sd_notify over a Trio datagram socket (no systemd-python).

``NOTIFY_SOCKET`` is a filesystem path or an abstract name (``@name``). When it
is not set (not run by systemd), every call is a no-op. The watchdog pinger
sends ``WATCHDOG=1`` every half ``WATCHDOG_USEC`` — the only periodic wake-up in
Kiln, and only when systemd asks for it: a ping proves the event loop runs, so
it is sent from a task of the root nursery, never from a thread.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

import trio

log = logging.getLogger("kiln.systemd")


def _address(value: str) -> str | bytes:
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


class Notifier:
    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.socket_path = env.get("NOTIFY_SOCKET") or None
        usec = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        self.watchdog_interval: float | None = None
        if usec and usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval = int(usec) / 1e6
        self._sock: trio.socket.SocketType | None = None

    @property
    def enabled(self) -> bool:
        return self.socket_path is not None

    async def notify(self, *lines: str) -> None:
        """Send ``KEY=value`` lines in one datagram. Errors are logged, never raised."""
        if self.socket_path is None:
            return
        try:
            if self._sock is None:
                self._sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            await self._sock.sendto("\n".join(lines).encode(), _address(self.socket_path))
        except OSError as e:
            log.warning("sd_notify to %s failed: %s", self.socket_path, e)

    async def ready(self, status: str) -> None:
        await self.notify("READY=1", f"STATUS={status}")

    async def status(self, status: str) -> None:
        await self.notify(f"STATUS={status}")

    async def reloading(self) -> None:
        await self.notify("RELOADING=1")

    async def stopping(self) -> None:
        await self.notify("STOPPING=1")

    async def watchdog(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Ping the watchdog at half its interval, until cancelled (no-op if not asked for)."""
        task_status.started()
        if self.watchdog_interval is None or self.socket_path is None:
            return
        period = self.watchdog_interval / 2
        next_at = trio.current_time()
        while True:
            await self.notify("WATCHDOG=1")
            next_at += period
            await trio.sleep_until(next_at)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
