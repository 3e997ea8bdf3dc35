"""Wait for a hot container's listener socket, woken by inotify (never polled).

A container is ready when ``lsnr.sock`` appears in its ``/tmp/iofs`` host dir
(see :func:`kiln.fncontract.check_listener` for what counts). Linux inotify,
through libc with ctypes (no dependency): a watch on that dir for
``IN_CREATE | IN_MOVED_TO | IN_ATTRIB``, whose fd is awaited with
``trio.lowlevel.wait_readable``. Every wake-up drains the fd and re-checks the
dir; events are not parsed, so a queue overflow (``IN_Q_OVERFLOW``) is just
one more wake-up. The dir is also checked once right after the watch is added,
so a socket made before the watch is not missed.

Why those events: an Fn FDK binds ``phony<random>.sock`` (IN_CREATE), chmods it
0666 (IN_ATTRIB), then symlinks ``lsnr.sock`` to it (IN_CREATE) — or renames a
link into place (IN_MOVED_TO). Since the socket is made *before* the link, the
link's target exists by the time the link is seen, so a dangling link is a
failed start, not "not yet".

Inotify works across the bind mount: the events are on the host inode, whoever
(the container's processes) changes it.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from types import TracebackType

import trio

from kiln.fncontract import Invalid, Ready, check_listener

IN_ATTRIB = 0x00000004
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

WATCH_MASK = IN_CREATE | IN_MOVED_TO | IN_ATTRIB | IN_ONLYDIR

_READ_SIZE = 16 * 1024

# The libc symbols already loaded into this process (no ldconfig lookup at import).
_libc = ctypes.CDLL(None, use_errno=True)
_inotify_init1 = _libc.inotify_init1
_inotify_init1.argtypes = [ctypes.c_int]
_inotify_init1.restype = ctypes.c_int
_inotify_add_watch = _libc.inotify_add_watch
_inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
_inotify_add_watch.restype = ctypes.c_int


class ListenerInvalid(Exception):
    """``lsnr.sock`` appeared but breaks the contract: the container failed to start.

    ``reason`` says how (absolute symlink, leaves the dir, dangling, not a socket).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DirWatch:
    """An inotify fd watching one directory; a context manager that always closes the fd."""

    def __init__(self, directory: Path, mask: int = WATCH_MASK) -> None:
        fd: int = _inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        self._fd = fd
        if _inotify_add_watch(fd, os.fsencode(directory), mask) < 0:
            err = ctypes.get_errno()
            self.close()
            raise OSError(
                err, f"inotify_add_watch({directory}): {os.strerror(err)}", str(directory)
            )

    def fileno(self) -> int:
        return self._fd

    async def wait(self) -> None:
        """Sleep until at least one event arrived, then drain them all.

        Cancellation: nothing is lost — unread events wake the next ``wait``.
        """
        if self._fd < 0:
            raise trio.ClosedResourceError("the inotify watch is closed")
        await trio.lowlevel.wait_readable(self._fd)
        try:
            while os.read(self._fd, _READ_SIZE):
                pass
        except BlockingIOError:
            pass  # drained

    def close(self) -> None:
        """Close the fd (idempotent), waking any task still waiting on it."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            trio.lowlevel.notify_closing(fd)
            os.close(fd)

    def __enter__(self) -> DirWatch:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


async def wait_for_listener(dir: Path) -> Path:
    """Wait until ``dir/lsnr.sock`` is valid; return the real socket's path.

    Raises :class:`ListenerInvalid` as soon as ``lsnr.sock`` is there but
    breaks the contract, and ``OSError`` if ``dir`` cannot be watched (it does
    not exist, or is not a directory).

    There is no timeout here: the caller bounds the wait with its own cancel
    scope (``trio.fail_after(start_timeout)``, or a race against the container's
    exit). Cancellation is clean — the task sleeps in ``wait_readable`` on the
    inotify fd, and that fd is closed on every path out (return, error,
    cancellation). Idle, it makes no wake-ups at all.
    """
    with DirWatch(dir) as watch:
        while True:
            state = check_listener(dir)
            if isinstance(state, Ready):
                return state.socket
            if isinstance(state, Invalid):
                raise ListenerInvalid(state.reason)
            await watch.wait()
