"""Listening sockets: TCP, Unix (the invoke API's ``listen`` and the control
socket alike) and inherited ones, with one rule for a socket file already there.

The stale-socket rule (:func:`bind_unix`): binding a Unix socket whose path exists
replaces the file only when it is a socket *and* connecting to it is refused
(its daemon died without removing it). A socket something still listens on is
refused (:class:`SocketInUse`), and so is a path that is not a socket, or one
whose state cannot be told (e.g. no permission to connect): nothing that might
be in use is ever unlinked.
"""

from __future__ import annotations

import errno
import grp
import logging
import os
import resource
import socket
import stat

import trio

log = logging.getLogger("kiln.http")

__all__ = [
    "SocketInUse",
    "bind_unix",
    "default_max_connections",
    "format_bind",
    "open_listeners",
]


class SocketInUse(OSError):
    """The Unix socket path is taken: ``live`` when something listens on it, else
    it is not a socket or could not be probed."""

    def __init__(self, message: str, *, live: bool = False) -> None:
        super().__init__(errno.EADDRINUSE, message)
        self.message = message
        self.live = live

    def __str__(self) -> str:
        return self.message


#: File descriptors kept out of the invoke connections' share: the Docker
#: client's connections, log and state files, the control socket, Python's own.
FD_RESERVE = 64


def default_max_connections(nofile: int | None = None) -> int:
    """A cap on open invoke connections that leaves file descriptors for
    everything else: half of what ``RLIMIT_NOFILE`` leaves after
    :data:`FD_RESERVE` (the other half is for the calls those connections run:
    their containers' sockets and Docker streams). At least 4."""
    if nofile is None:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        nofile = soft if soft != resource.RLIM_INFINITY else 1 << 20
    return max(4, (nofile - FD_RESERVE) // 2)


def format_bind(listener: trio.abc.Listener[trio.abc.Stream]) -> str:
    """``http://HOST:PORT`` or ``unix:/path`` for a socket listener; else its repr."""
    if not isinstance(listener, trio.SocketListener):
        return repr(listener)
    sock = listener.socket
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return f"unix:{name}"
    host, port = name[0], name[1]
    if sock.family == socket.AF_INET6:
        host = f"[{host}]"
    return f"http://{host}:{port}"


async def open_listeners(bind: str, *, backlog: int | None = None) -> list[trio.SocketListener]:
    """Listeners for ``"HOST:PORT"`` (``"[::1]:8080"``; an empty host or ``*``: every
    address), ``"unix:/path"`` (see :func:`bind_unix`) or ``"fd://N"`` (an
    inherited, bound socket).

    Accepted TCP streams have TCP_NODELAY set (``trio.SocketStream`` does it)."""
    if bind.startswith("unix:"):
        sock = bind_unix(bind[len("unix:") :], backlog=backlog)
        return [trio.SocketListener(trio.socket.from_stdlib_socket(sock))]
    if bind.startswith("fd://"):
        sock = socket.socket(fileno=int(bind[len("fd://") :]))
        sock.setblocking(False)
        sock.listen(backlog or socket.SOMAXCONN)
        return [trio.SocketListener(trio.socket.from_stdlib_socket(sock))]
    host, sep, port = bind.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"bind {bind!r}: expected HOST:PORT, unix:/path or fd://N")
    host = host.strip("[]")
    return await trio.open_tcp_listeners(
        int(port), host=None if host in ("", "*") else host, backlog=backlog
    )


def bind_unix(
    path: str,
    *,
    backlog: int | None = None,
    mode: int | None = None,
    group: str | None = None,
) -> socket.socket:
    """A listening, non-blocking Unix socket at ``path`` (parent directories are
    created). A stale socket file is replaced; a live one, or a path that is not
    a socket, raises :class:`SocketInUse`.

    ``mode`` is applied without a window where the socket is more open than that
    (the umask is narrowed around ``bind``); ``group`` (a name) is given the
    socket when it exists and we may, else a warning is logged."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            _bind(sock, path, mode)
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                raise
            _check_stale(path)
            os.unlink(path)
            _bind(sock, path, mode)
        if mode is not None:
            os.chmod(path, mode)
        if group is not None:
            _give_group(path, group)
        sock.setblocking(False)
        sock.listen(backlog or socket.SOMAXCONN)
    except BaseException:
        sock.close()
        raise
    return sock


def _bind(sock: socket.socket, path: str, mode: int | None) -> None:
    if mode is None:
        sock.bind(path)
        return
    old_umask = os.umask(0o777 & ~mode)
    try:
        sock.bind(path)
    finally:
        os.umask(old_umask)


def _check_stale(path: str) -> None:
    """Return if ``path`` is a socket file nobody listens on; else raise SocketInUse."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return  # gone meanwhile: binding again will tell
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketInUse(f"{path} exists and is not a socket; refusing to replace it")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            return  # stale: nobody listens
        except OSError as e:
            raise SocketInUse(
                f"{path} exists and cannot be probed ({e.strerror or e}); refusing to replace it"
            ) from e
    raise SocketInUse(f"something is listening on {path}", live=True)


def _give_group(path: str, group: str) -> None:
    try:
        gid = grp.getgrnam(group).gr_gid
        os.chown(path, -1, gid)
    except KeyError:
        log.warning("group %r does not exist; %s stays owned by our group", group, path)
    except PermissionError as e:
        log.warning("cannot give %s to group %r: %s", path, group, e)
