"""kiln.http.reader: a connection's background reader, through the server's
disconnect watch (the scope's ``DISCONNECT_WATCH`` extension), over real sockets."""

from __future__ import annotations

import trio
import trio.lowlevel

from kiln.http import Receive, Scope, Send
from kiln.http.asgi import DISCONNECT_WATCH, DisconnectWatch
from tests.unit.test_http_server import read_body, read_responses, respond, running


class SpawnCounter(trio.abc.Instrument):
    def __init__(self) -> None:
        self.spawned = 0

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        self.spawned += 1


def watch_of(scope: Scope) -> DisconnectWatch:
    watch: DisconnectWatch = scope["extensions"][DISCONNECT_WATCH]
    return watch


def request(path: str, body: bytes) -> bytes:
    return b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (
        path.encode(),
        len(body),
        body,
    )


async def test_watched_keep_alive_calls_start_one_reader_for_the_connection() -> None:
    """Watching for the client costs no task per call: the connection's reader is
    started by the first watched call and serves every later one."""
    left: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        body = await read_body(receive)
        watch = watch_of(scope)
        watch.watch(lambda: left.append(scope["path"]))
        await trio.lowlevel.checkpoint()  # the "call"
        watch.unwatch()
        await respond(send, 200, body)

    counter = SpawnCounter()
    async with running(app) as server:
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        async with stream:
            await stream.send_all(request("/first", b"0"))
            (first,) = await read_responses(stream, 1)
            assert first.body == b"0"
            trio.lowlevel.add_instrument(counter)
            try:
                for i in range(1, 20):
                    await stream.send_all(request("/again", b"%d" % i))
                    (r,) = await read_responses(stream, 1)
                    assert (r.status, r.body) == (200, b"%d" % i)
            finally:
                trio.lowlevel.remove_instrument(counter)
    assert counter.spawned == 0
    assert left == []


async def test_a_client_that_leaves_mid_call_is_reported_once() -> None:
    running_call = trio.Event()
    left = trio.Event()
    calls: list[str] = []

    def gone() -> None:
        calls.append("gone")
        left.set()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive)
        watch_of(scope).watch(gone)
        running_call.set()
        with trio.move_on_after(10):
            await left.wait()
        await respond(send, 200, b"nobody reads this")

    async with running(app) as server:
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        await stream.send_all(request("/slow", b"x"))
        await running_call.wait()
        await stream.aclose()
        with trio.fail_after(5):
            await left.wait()
    assert calls == ["gone"]


async def test_watching_after_the_client_left_reports_at_once() -> None:
    """A client that half-closes right after its request is gone by the time the
    app watches: the callback runs from watch() itself."""
    reported = trio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive)
        watch = watch_of(scope)
        watch.watch(reported.set)
        with trio.fail_after(5):
            await reported.wait()
        watch.unwatch()
        await respond(send, 200, b"late")

    async with running(app) as server:
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        async with stream:
            await stream.send_all(request("/x", b"x"))
            await stream.send_eof()
            await read_responses(stream, 1)
    assert reported.is_set()


async def test_a_request_pipelined_during_a_watched_call_is_served_next() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        body = await read_body(receive)
        watch = watch_of(scope)
        watch.watch(lambda: None)
        if scope["path"] == "/watched":
            await trio.sleep(0.2)  # the next request arrives meanwhile, in pieces
        watch.unwatch()
        await respond(send, 200, body, (b"x-path", scope["path"].encode()))

    async with running(app) as server:
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        async with stream:
            await stream.send_all(request("/watched", b"A"))
            await trio.sleep(0.05)
            await stream.send_all(b"POST /next HTTP/1.1\r\nHost: x\r\n")
            await trio.sleep(0.05)
            await stream.send_all(b"Content-Length: 1\r\n\r\nB")
            r1, r2 = await read_responses(stream, 2)
        assert (r1.headers[b"x-path"], r1.body) == (b"/watched", b"A")
        assert (r2.headers[b"x-path"], r2.body) == (b"/next", b"B")
