"""kiln.http.listeners: TCP, Unix and inherited listeners; the one stale-socket
rule (shared by ``listen = "unix:..."`` and the control socket); the connection cap."""

from __future__ import annotations

import os
import socket
import stat
import tempfile

import httpx
import pytest
import trio

from kiln.api.control import AnotherKilnRunning, open_control_socket
from kiln.http import Receive, Scope, Send, SocketInUse, bind_unix, open_listeners, serve_asgi
from kiln.http.listeners import FD_RESERVE, default_max_connections
from tests.unit.test_http_server import read_body, respond


async def test_unix_fd_listeners_and_tcp_nodelay() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "s.sock")
        listeners = await open_listeners(f"unix:{path}")
        shutdown = trio.Event()
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(
                lambda task_status: serve_asgi(
                    echo_anywhere, listeners, shutdown=shutdown, grace=1, task_status=task_status
                )
            )
            assert binds == [f"unix:{path}"]
            transport = httpx.AsyncHTTPTransport(uds=path)
            async with httpx.AsyncClient(transport=transport, base_url="http://kiln") as client:
                r = await client.post("/u", content=b"over unix")
                assert r.content == b"over unix"
            shutdown.set()
        # a stale socket file is replaced
        listeners = await open_listeners(f"unix:{path}")
        for listener in listeners:
            await listener.aclose()

    # an inherited socket (as main.py hands the control socket over)
    raw = socket.socket()
    raw.bind(("127.0.0.1", 0))
    raw.listen()
    port = raw.getsockname()[1]
    listeners = await open_listeners(f"fd://{raw.detach()}")
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            lambda task_status: serve_asgi(
                echo_anywhere, listeners, shutdown=shutdown, grace=1, task_status=task_status
            )
        )
        assert binds == [f"http://127.0.0.1:{port}"]
        async with httpx.AsyncClient(base_url=binds[0]) as client:
            r = await client.post("/fd", content=b"inherited")
            assert r.content == b"inherited"
        shutdown.set()

    listeners = await open_listeners("127.0.0.1:0")
    port = listeners[0].socket.getsockname()[1]
    async with listeners[0]:
        client_stream = await trio.open_tcp_stream("127.0.0.1", port)
        accepted = await listeners[0].accept()
        assert accepted.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        await accepted.aclose()
        await client_stream.aclose()


async def echo_anywhere(scope: Scope, receive: Receive, send: Send) -> None:
    await respond(send, 200, await read_body(receive))


def test_bad_bind() -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        trio.run(open_listeners, "localhost")


def test_a_stale_socket_is_replaced_a_live_one_refused() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "s.sock")
        first = bind_unix(path)
        with pytest.raises(SocketInUse, match="listening") as caught:
            bind_unix(path)
        assert caught.value.live
        first.close()  # the file stays: a stale socket, as a killed daemon leaves it
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
        second = bind_unix(path)
        second.close()


def test_a_path_that_is_not_a_socket_is_never_replaced() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "s.sock")
        with open(path, "w") as f:
            f.write("precious")
        with pytest.raises(SocketInUse, match="not a socket") as caught:
            bind_unix(path)
        assert not caught.value.live
        with open(path) as f:
            assert f.read() == "precious"


def test_the_control_socket_uses_the_same_rule() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "run", "control.sock")  # the parent is created
        live = open_control_socket(path, "no-such-group-for-kiln")
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o660
        with pytest.raises(AnotherKilnRunning, match="another kiln is running"):
            open_control_socket(path, "no-such-group-for-kiln")
        live.close()
        open_control_socket(path, "no-such-group-for-kiln").close()  # stale: replaced
        os.unlink(path)
        os.mkdir(path)
        with pytest.raises(AnotherKilnRunning, match="not a socket"):
            open_control_socket(path, "no-such-group-for-kiln")


def test_max_connections_leave_descriptors_for_the_rest() -> None:
    assert default_max_connections(1024) == (1024 - FD_RESERVE) // 2
    assert default_max_connections(100) == (100 - FD_RESERVE) // 2
    assert default_max_connections(10) == 4  # never zero
    assert default_max_connections() >= 4  # from this process's RLIMIT_NOFILE


def test_a_unix_socket_with_a_mode_is_never_more_open() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "s.sock")
        sock = bind_unix(path, mode=0o600)
        try:
            assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
            assert sock.family == socket.AF_UNIX
        finally:
            sock.close()
