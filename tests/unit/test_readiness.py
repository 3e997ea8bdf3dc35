"""Waiting for ``lsnr.sock`` with inotify: woken by events, never polled, fd always closed."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from kiln.hot.readiness import DirWatch, ListenerInvalid, wait_for_listener
from tests.unit.test_fdk import START_TIMEOUT, fn_dir, function_process, iofs

__all__ = ["fn_dir", "iofs"]  # fixtures shared with test_fdk.py


def inotify_fds() -> set[str]:
    fds = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:inotify":
                fds.add(fd)
        except FileNotFoundError:
            pass  # the fd listdir itself used
    return fds


@pytest.fixture
def no_fd_leak() -> Iterator[None]:
    """Every inotify fd opened during the test is closed by its end."""
    before = inotify_fds()
    yield
    assert inotify_fds() - before == set()


async def test_watch_opens_an_inotify_fd(iofs: Path) -> None:
    before = inotify_fds()
    with DirWatch(iofs) as watch:
        assert str(watch.fileno()) in inotify_fds() - before
    assert inotify_fds() == before


@pytest.fixture
def held() -> Iterator[list[socket.socket]]:
    sockets: list[socket.socket] = []
    try:
        yield sockets
    finally:
        for s in sockets:
            s.close()


def fdk_dance(d: Path, held: list[socket.socket], name: str = "phonyabcd.sock") -> Path:
    """What an Fn FDK does: bind + listen the phony socket, chmod it, then symlink (relative)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(d / name))
    s.listen(1)
    held.append(s)
    os.chmod(d / name, 0o666)
    os.symlink(name, d / "lsnr.sock")
    return d / name


class Waiter:
    """wait_for_listener running in the background; ``done`` is set when it returns or raises."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.result: Path | ListenerInvalid | None = None

    async def run(self, d: Path) -> None:
        try:
            self.result = await wait_for_listener(d)
        except ListenerInvalid as e:
            self.result = e
        self.done.set()

    async def wait(self, seconds: float = 5) -> Path | ListenerInvalid | None:
        with trio.fail_after(seconds):
            await self.done.wait()
        return self.result


async def wait_in_background(nursery: trio.Nursery, d: Path) -> Waiter:
    waiter = Waiter()
    nursery.start_soon(waiter.run, d)
    await trio.testing.wait_all_tasks_blocked()
    return waiter


async def test_listener_made_before_the_watch_is_seen(
    iofs: Path, held: list[socket.socket], no_fd_leak: None
) -> None:
    real = fdk_dance(iofs, held)
    with trio.fail_after(5):
        assert await wait_for_listener(iofs) == real


async def test_symlink_appearing_later_wakes_the_waiter(
    iofs: Path, held: list[socket.socket], no_fd_leak: None
) -> None:
    async with trio.open_nursery() as nursery:
        waiter = await wait_in_background(nursery, iofs)
        assert not waiter.done.is_set()
        (iofs / "unrelated.txt").write_text("x")  # an event, but not the listener: keeps waiting
        await trio.testing.wait_all_tasks_blocked()
        assert not waiter.done.is_set()
        real = fdk_dance(iofs, held)
        assert await waiter.wait() == real


async def test_waiting_makes_no_timer_wakeups(
    autojump_clock: trio.testing.MockClock, iofs: Path, held: list[socket.socket]
) -> None:
    """On the autojump clock a sleep loop would advance virtual time; the inotify wait cannot."""
    async with trio.open_nursery() as nursery:
        t0 = trio.current_time()
        waiter = await wait_in_background(nursery, iofs)
        for _ in range(10):
            await trio.testing.wait_all_tasks_blocked()
        assert trio.current_time() == t0
        assert not waiter.done.is_set()
        real = fdk_dance(iofs, held)  # the event is queued before the run loop polls again
        await waiter.done.wait()
        assert trio.current_time() == t0
    assert waiter.result == real


async def test_link_renamed_into_place_is_seen(
    iofs: Path, held: list[socket.socket], no_fd_leak: None
) -> None:
    async with trio.open_nursery() as nursery:
        waiter = await wait_in_background(nursery, iofs)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(str(iofs / "phony.sock"))
        s.listen(1)
        held.append(s)
        os.symlink("phony.sock", iofs / "tmp-link")
        await trio.testing.wait_all_tasks_blocked()
        assert not waiter.done.is_set()
        os.rename(iofs / "tmp-link", iofs / "lsnr.sock")  # IN_MOVED_TO
        assert await waiter.wait() == iofs / "phony.sock"


async def test_real_socket_named_lsnr_is_ready(iofs: Path, held: list[socket.socket]) -> None:
    async with trio.open_nursery() as nursery:
        waiter = await wait_in_background(nursery, iofs)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(str(iofs / "lsnr.sock"))
        held.append(s)
        assert await waiter.wait() == iofs / "lsnr.sock"


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda d: os.symlink(d / "phony.sock", d / "lsnr.sock"), "absolute"),
        (lambda d: os.symlink("phony-missing.sock", d / "lsnr.sock"), "dangling"),
        (lambda d: os.symlink("../etc/passwd", d / "lsnr.sock"), "same directory"),
        (lambda d: (d / "lsnr.sock").write_text("x"), "regular file"),
    ],
)
async def test_invalid_listener_appearing_later_raises(
    iofs: Path,
    held: list[socket.socket],
    no_fd_leak: None,
    make: Callable[[Path], object],
    words: str,
) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(iofs / "phony.sock"))
    held.append(s)
    async with trio.open_nursery() as nursery:
        waiter = await wait_in_background(nursery, iofs)
        make(iofs)
        error = await waiter.wait()
    assert isinstance(error, ListenerInvalid)
    assert words in error.reason


async def test_invalid_listener_already_there_raises(iofs: Path, no_fd_leak: None) -> None:
    os.symlink("/tmp/iofs/phony.sock", iofs / "lsnr.sock")
    with pytest.raises(ListenerInvalid, match="absolute"):
        await wait_for_listener(iofs)


async def test_cancellation_is_clean(iofs: Path, no_fd_leak: None) -> None:
    with trio.move_on_after(0.05) as scope:
        await wait_for_listener(iofs)
    assert scope.cancelled_caught


async def test_fail_after_bounds_it(
    autojump_clock: trio.testing.MockClock, iofs: Path, no_fd_leak: None
) -> None:
    with pytest.raises(trio.TooSlowError):
        with trio.fail_after(30):
            await wait_for_listener(iofs)


async def test_missing_dir_is_an_os_error(iofs: Path, no_fd_leak: None) -> None:
    with pytest.raises(FileNotFoundError):
        await wait_for_listener(iofs / "nope")
    (iofs / "file").write_text("")
    with pytest.raises(NotADirectoryError):
        await wait_for_listener(iofs / "file")


async def test_dir_watch_close_is_idempotent(iofs: Path, no_fd_leak: None) -> None:
    watch = DirWatch(iofs)
    watch.close()
    watch.close()
    with pytest.raises(trio.ClosedResourceError):
        await watch.wait()


async def test_events_before_wait_are_not_lost(iofs: Path, no_fd_leak: None) -> None:
    with DirWatch(iofs) as watch:
        (iofs / "a").write_text("x")
        with trio.fail_after(5):
            await watch.wait()  # returns at once: the event is queued on the fd


async def test_sees_the_fdk_subprocess(fn_dir: Path, iofs: Path, no_fd_leak: None) -> None:
    async with trio.open_nursery() as nursery:
        waiter = await wait_in_background(nursery, iofs)  # watching before the process starts
        async with function_process(fn_dir, "echo_fdk.py", iofs):
            real = await waiter.wait(START_TIMEOUT)
            assert isinstance(real, Path)
            assert real.parent == iofs
            assert real.name.startswith("phony")
            stream = await trio.open_unix_socket(str(real))
            await stream.aclose()
