"""Wait for a hot container's listener socket, woken by inotify (never polled).

Linux inotify through libc (ctypes, no dependency): a watch on the container's
``/tmp/iofs`` host dir for IN_CREATE | IN_MOVED_TO | IN_ATTRIB; the fd is
awaited with ``trio.lowlevel.wait_readable``; after each wake-up the dir is
checked with :func:`kiln.fncontract.check_listener`. The dir is checked once
right after the watch is added, so a socket made before the watch is not missed.

Cancellation is clean: the caller bounds the wait with its own cancel scope
(start_timeout), and the inotify fd is closed on every path.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path

import trio

from kiln.fncontract import ListenerKind, check_listener

IN_ATTRIB = 0x00000004
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.inotify_init1.argtypes = [ctypes.c_int]
_libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]


class ListenerInvalid(Exception):
    """lsnr.sock appeared but breaks the contract (absolute link, leaves the dir, not a socket)."""


class _Inotify:
    def __init__(self, directory: Path) -> None:
        fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        self.fd = fd
        wd = _libc.inotify_add_watch(
            fd, os.fsencode(directory), IN_CREATE | IN_MOVED_TO | IN_ATTRIB
        )
        if wd < 0:
            err = ctypes.get_errno()
            os.close(fd)
            raise OSError(err, f"inotify_add_watch {directory}: {os.strerror(err)}")

    async def wait(self) -> None:
        await trio.lowlevel.wait_readable(self.fd)
        try:
            while os.read(self.fd, 65536):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        if self.fd >= 0:
            trio.lowlevel.notify_closing(self.fd)
            os.close(self.fd)
            self.fd = -1


async def wait_for_listener(directory: Path) -> Path:
    """The real socket's path once ``directory/lsnr.sock`` is valid; ListenerInvalid if not."""
    watch = _Inotify(directory)
    try:
        while True:
            state = check_listener(directory)
            if state.kind is ListenerKind.READY:
                assert state.socket is not None
                return state.socket
            if state.kind is ListenerKind.INVALID:
                raise ListenerInvalid(state.reason)
            await watch.wait()
    finally:
        watch.close()
