"""FnConnection: HTTP/1.1 keep-alive over a Unix socket, typed failures, broken on cancel.

Misbehaving functions are small Trio servers in this process; well-behaved ones
are the FDK and the test function scripts as subprocesses.
"""

from __future__ import annotations

import os
import socket
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.testing

from kiln.hot.httpstream import FnConnection, FnProtocolError, RequestNotSent
from tests.unit.test_fdk import fn_dir, headers_for, iofs, running_function

__all__ = ["fn_dir", "iofs"]  # fixtures shared with test_fdk.py

Handler = Callable[[trio.SocketStream], Awaitable[None]]

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nFn-Http-Status: 200\r\n\r\nok"


class Peer:
    """The server side of one connection: reads requests off the stream."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = b""

    async def request(self) -> tuple[bytes, bytes] | None:
        """(head, body) of the next request, or None on EOF."""
        while b"\r\n\r\n" not in self.buf:
            data = await self.stream.receive_some()
            if not data:
                return None
            self.buf += data
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(self.buf) < length:
            data = await self.stream.receive_some()
            if not data:
                return None
            self.buf += data
        body, self.buf = self.buf[:length], self.buf[length:]
        return head, body


@asynccontextmanager
async def fake_function(d: Path, handler: Handler) -> AsyncIterator[Path]:
    """A listening Unix socket in ``d`` whose connections are served by ``handler``."""
    path = d / "fn.sock"
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(str(path))
    sock.listen(8)
    listener = trio.SocketListener(sock)

    async def serve(stream: trio.SocketStream) -> None:
        async with stream:
            await handler(stream)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(trio.serve_listeners, serve, [listener]))
        try:
            yield path
        finally:
            nursery.cancel_scope.cancel()


async def answer_all(stream: trio.SocketStream, reply: bytes = OK) -> None:
    peer = Peer(stream)
    while await peer.request() is not None:
        await stream.send_all(reply)


# ---- the wire ---------------------------------------------------------------------


async def test_request_on_the_wire(iofs: Path) -> None:
    seen: list[tuple[bytes, bytes]] = []

    async def handler(stream: trio.SocketStream) -> None:
        peer = Peer(stream)
        while (req := await peer.request()) is not None:
            seen.append(req)
            await stream.send_all(OK)

    async with fake_function(iofs, handler) as path, await FnConnection.open(path) as conn:
        resp = await conn.call([(b"Fn-Call-Id", b"c1"), (b"X-A", b"1")], b"hello")
        assert (resp.status, resp.body) == (200, b"ok")
        assert resp.headers == [(b"content-length", b"2"), (b"fn-http-status", b"200")]
        await conn.call([], b"")
    (head, body), (head2, body2) = seen
    assert head.split(b"\r\n") == [
        b"POST /call HTTP/1.1",
        b"host: kiln",
        b"content-length: 5",
        b"Fn-Call-Id: c1",
        b"X-A: 1",
    ]
    assert body == b"hello"
    assert b"content-length: 0" in head2
    assert body2 == b""


async def test_keep_alive_uses_one_connection(iofs: Path) -> None:
    connections = 0

    async def handler(stream: trio.SocketStream) -> None:
        nonlocal connections
        connections += 1
        await answer_all(stream)

    async with fake_function(iofs, handler) as path, await FnConnection.open(path) as conn:
        for _ in range(100):
            assert (await conn.call([], b"x")).status == 200
    assert connections == 1


async def test_connection_close_answer_reconnects_next_call(iofs: Path) -> None:
    connections = 0

    async def handler(stream: trio.SocketStream) -> None:
        nonlocal connections
        connections += 1
        if await Peer(stream).request() is not None:
            await stream.send_all(
                b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
            )

    async with fake_function(iofs, handler) as path, await FnConnection.open(path) as conn:
        for _ in range(3):
            resp = await conn.call([], b"x")
            assert (resp.status, resp.body) == (200, b"ok")
            assert not conn.broken
    assert connections == 3


async def test_http_10_answer_without_length_reads_to_eof(iofs: Path) -> None:
    async def handler(stream: trio.SocketStream) -> None:
        if await Peer(stream).request() is not None:
            await stream.send_all(b"HTTP/1.0 200 OK\r\n\r\nuntil eof")

    async with fake_function(iofs, handler) as path, await FnConnection.open(path) as conn:
        resp = await conn.call([], b"x")
        assert resp.body == b"until eof"
        assert (await conn.call([], b"y")).body == b"until eof"  # reconnected


async def test_informational_responses_are_skipped(iofs: Path) -> None:
    reply = b"HTTP/1.1 100 Continue\r\n\r\n" + OK
    handler = partial(answer_all, reply=reply)
    async with fake_function(iofs, handler) as path, await FnConnection.open(path) as conn:
        assert (await conn.call([], b"x")).body == b"ok"
        assert (await conn.call([], b"x")).body == b"ok"


async def test_chunked_answer(iofs: Path) -> None:
    reply = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    handler = partial(answer_all, reply=reply)
    async with fake_function(iofs, handler) as path, await FnConnection.open(path) as conn:
        assert (await conn.call([], b"x")).body == b"abcde"
        assert (await conn.call([], b"x")).body == b"abcde"


async def test_big_bodies_both_ways(iofs: Path) -> None:
    big = os.urandom(5 * 1024 * 1024)

    async def handler(stream: trio.SocketStream) -> None:
        peer = Peer(stream)
        while (req := await peer.request()) is not None:
            body = req[1][::-1]
            await stream.send_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
            )

    async with fake_function(iofs, handler) as path, await FnConnection.open(path) as conn:
        assert (await conn.call([], big)).body == big[::-1]


# ---- failures ------------------------------------------------------------------------


async def expect_broken(conn: FnConnection, match: str) -> None:
    with pytest.raises(FnProtocolError, match=match):
        await conn.call([], b"x")
    assert conn.broken
    with pytest.raises(FnProtocolError, match="unusable"):
        await conn.call([], b"x")


async def test_close_mid_response_is_a_protocol_error(iofs: Path) -> None:
    async def handler(stream: trio.SocketStream) -> None:
        if await Peer(stream).request() is not None:
            await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")

    async with fake_function(iofs, handler) as path, await FnConnection.open(path) as conn:
        await expect_broken(conn, "bad HTTP|closed")


async def test_close_mid_head_is_a_protocol_error(iofs: Path) -> None:
    async def handler(stream: trio.SocketStream) -> None:
        if await Peer(stream).request() is not None:
            await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-")

    async with fake_function(iofs, handler) as path, await FnConnection.open(path) as conn:
        await expect_broken(conn, "bad HTTP|closed")


async def test_close_before_answering_is_a_protocol_error(iofs: Path) -> None:
    async def handler(stream: trio.SocketStream) -> None:
        await Peer(stream).request()

    async with fake_function(iofs, handler) as path, await FnConnection.open(path) as conn:
        await expect_broken(conn, "bad HTTP|closed")


async def test_connection_reset_is_a_protocol_error(iofs: Path) -> None:
    async def handler(stream: trio.SocketStream) -> None:
        await trio.sleep(0.05)  # close with the request unread: the client gets ECONNRESET

    async with fake_function(iofs, handler) as path, await FnConnection.open(path) as conn:
        await expect_broken(conn, "failed|closed|bad HTTP")


async def test_garbage_is_a_protocol_error(iofs: Path) -> None:
    async def handler(stream: trio.SocketStream) -> None:
        if await Peer(stream).request() is not None:
            await stream.send_all(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
            await trio.sleep_forever()

    async with fake_function(iofs, handler) as path, await FnConnection.open(path) as conn:
        await expect_broken(conn, "bad HTTP")


async def test_oversized_answer_is_a_protocol_error(iofs: Path) -> None:
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n" + b"x" * 2000
    handler = partial(answer_all, reply=reply)
    async with (
        fake_function(iofs, handler) as path,
        await FnConnection.open(path, max_response=1000) as conn,
    ):
        await expect_broken(conn, "over 1000 bytes")


async def test_unsendable_header_is_a_protocol_error(iofs: Path) -> None:
    async with fake_function(iofs, answer_all) as path, await FnConnection.open(path) as conn:
        with pytest.raises(FnProtocolError, match="cannot send"):
            await conn.call([(b"X-Bad", b"a\r\nb")], b"")
        assert conn.broken


async def test_cancelled_call_breaks_the_connection(iofs: Path) -> None:
    saw_eof = trio.Event()

    async def handler(stream: trio.SocketStream) -> None:
        peer = Peer(stream)
        await peer.request()  # never answered
        if await peer.request() is None:
            saw_eof.set()

    async with fake_function(iofs, handler) as path, await FnConnection.open(path) as conn:
        with trio.move_on_after(0.05) as scope:
            await conn.call([], b"x")
        assert scope.cancelled_caught
        assert conn.broken
        assert conn.broken_reason == "call interrupted"
        with trio.fail_after(5):
            await saw_eof.wait()  # the socket was closed at once, not left to aclose
        with pytest.raises(FnProtocolError, match="unusable"):
            await conn.call([], b"x")


async def test_cancelled_while_sending_breaks_the_connection(
    autojump_clock: trio.testing.MockClock, iofs: Path
) -> None:
    async def handler(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()  # never reads: the client blocks in send_all

    async with fake_function(iofs, handler) as path, await FnConnection.open(path) as conn:
        with trio.move_on_after(1):
            await conn.call([], b"x" * (16 * 1024 * 1024))
        assert conn.broken


async def test_one_call_at_a_time(iofs: Path) -> None:
    async def handler(stream: trio.SocketStream) -> None:
        await Peer(stream).request()
        await trio.sleep_forever()

    async with (
        fake_function(iofs, handler) as path,
        await FnConnection.open(path) as conn,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(conn.call, [], b"first")
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.BusyResourceError):
            await conn.call([], b"second")
        nursery.cancel_scope.cancel()


async def test_cannot_connect_is_a_protocol_error(iofs: Path) -> None:
    with pytest.raises(FnProtocolError, match="cannot connect"):
        await FnConnection.open(iofs / "nothing.sock")


async def test_aclose_is_idempotent_and_final(iofs: Path) -> None:
    async with fake_function(iofs, answer_all) as path:
        conn = await FnConnection.open(path)
        await conn.call([], b"x")
        await conn.aclose()
        await conn.aclose()
        with pytest.raises(FnProtocolError, match="closed"):
            await conn.call([], b"x")


async def test_socket_path_longer_than_sun_path(iofs: Path) -> None:
    deep = iofs
    while len(str(deep / "fn.sock")) <= 120:
        deep = deep / ("d" * 20)
    deep.mkdir(parents=True)
    # bind through /proc/self/fd as well (a plain bind would be refused: path too long)
    dir_fd = os.open(deep, os.O_PATH | os.O_DIRECTORY)
    try:
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(f"/proc/self/fd/{dir_fd}/fn.sock")
    finally:
        os.close(dir_fd)
    server.listen(1)
    server.setblocking(False)
    listener = trio.SocketListener(trio.socket.from_stdlib_socket(server))
    async with listener, trio.open_nursery() as nursery:
        nursery.start_soon(partial(trio.serve_listeners, answer_all, [listener]))
        async with await FnConnection.open(deep / "fn.sock") as conn:
            assert (await conn.call([], b"x")).body == b"ok"
        nursery.cancel_scope.cancel()


# ---- against the FDK --------------------------------------------------------------------

CONN_PROBE = textwrap.dedent(
    """
    import threading
    import fdk

    local = threading.local()

    def handle(body, headers):
        local.n = getattr(local, "n", 0) + 1
        return "%d:%d" % (threading.get_ident(), local.n)

    fdk.serve(handle)
    """
)


async def test_keep_alive_across_100_calls_to_the_fdk(fn_dir: Path, iofs: Path) -> None:
    (fn_dir / "conn_probe.py").write_text(CONN_PROBE)
    async with running_function(fn_dir, "conn_probe.py", iofs) as conn:
        answers = [(await conn.call(headers_for(), b"")).body for _ in range(100)]
    idents = {a.split(b":")[0] for a in answers}
    counts = [int(a.split(b":")[1]) for a in answers]
    assert len(idents) == 1  # one server thread = one connection ...
    assert counts == list(range(1, 101))  # ... that served all 100 calls in order


async def test_benchmark_call_against_fdk_echo(fn_dir: Path, iofs: Path) -> None:
    """Micro-benchmark, printed not asserted: FnConnection.call vs a blocking raw client."""
    n = 2000
    body = b"x" * 64
    async with running_function(fn_dir, "echo_fdk.py", iofs) as conn:
        headers = headers_for((b"content-type", b"text/plain"))
        for _ in range(200):
            await conn.call(headers, body)
        t0 = time.perf_counter()
        for _ in range(n):
            await conn.call(headers, body)
        per_call = (time.perf_counter() - t0) / n
        assert conn.path.parent == iofs

        request = (
            b"POST /call HTTP/1.1\r\nhost: kiln\r\ncontent-length: %d\r\n" % len(body)
            + b"".join(k + b": " + v + b"\r\n" for k, v in headers)
            + b"\r\n"
            + body
        )

        def raw_client() -> float:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(conn.path))
            f = s.makefile("rb")
            try:
                t = time.perf_counter()
                for _ in range(n):
                    s.sendall(request)
                    length = 0
                    while (line := f.readline()) != b"\r\n":
                        if line.lower().startswith(b"content-length:"):
                            length = int(line.split(b":")[1])
                    f.read(length)
                return (time.perf_counter() - t) / n
            finally:
                f.close()
                s.close()

        raw = await trio.to_thread.run_sync(raw_client)
    print(
        f"\n[bench] FnConnection.call vs FDK echo over a Unix socket: {per_call * 1e6:.0f} µs/call "
        f"(blocking raw-socket client, same FDK: {raw * 1e6:.0f} µs/call; n={n}, 64-byte body)"
    )


# ---- a dead idle connection is told apart from a call that may have run -------------


async def test_stale_tells_an_idle_connection_the_function_closed(iofs: Path) -> None:
    closed = trio.Event()

    async def one_answer_then_close(stream: trio.SocketStream) -> None:
        peer = Peer(stream)
        await peer.request()
        await stream.send_all(OK)
        await stream.aclose()
        closed.set()

    async with fake_function(iofs, one_answer_then_close) as path:
        conn = await FnConnection.open(path)
        async with conn:
            await conn.call(headers_for(), b"x")
            await closed.wait()
            assert conn.stale()


async def test_stale_tells_an_unasked_408(iofs: Path) -> None:
    """What Node's server does to a connection that sent nothing for too long."""
    sent = trio.Event()

    async def times_out(stream: trio.SocketStream) -> None:
        await stream.send_all(
            b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        )
        sent.set()
        await trio.sleep_forever()

    async with fake_function(iofs, times_out) as path, await FnConnection.open(path) as conn:
        await sent.wait()
        assert conn.stale()


async def test_quiet_idle_connection_is_not_stale(iofs: Path) -> None:
    async def answers(stream: trio.SocketStream) -> None:
        peer = Peer(stream)
        while await peer.request() is not None:
            await stream.send_all(OK)

    async with fake_function(iofs, answers) as path, await FnConnection.open(path) as conn:
        assert not conn.stale()
        await conn.call(headers_for(), b"x")
        assert not conn.stale()


async def test_send_on_a_connection_the_function_closed_is_request_not_sent(iofs: Path) -> None:
    closed = trio.Event()

    async def close_at_once(stream: trio.SocketStream) -> None:
        await stream.aclose()
        closed.set()

    async with fake_function(iofs, close_at_once) as path, await FnConnection.open(path) as conn:
        await closed.wait()
        # the peer is gone: the first write fails, nothing reached the function
        with pytest.raises(RequestNotSent):
            await conn.call(headers_for(), b"x")


async def test_cannot_connect_is_request_not_sent(iofs: Path) -> None:
    with pytest.raises(RequestNotSent, match="cannot connect"):
        await FnConnection.open(iofs / "nothing.sock")
