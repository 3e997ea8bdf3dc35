"""kiln.http.server: the lean HTTP/1.1 ASGI server, over real sockets on 127.0.0.1
(real clock: the waits are I/O, so no autojump)."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx
import pytest
import trio

from kiln.http import (
    ASGIApp,
    Limits,
    Message,
    Receive,
    Scope,
    Send,
    open_listeners,
    serve_asgi,
)
from tests.harness import functions, stack

# ------------------------------------------------------------------ helpers


@dataclass
class Server:
    port: int
    shutdown: trio.Event
    binds: list[str]
    stopped: trio.Event = field(default_factory=trio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@asynccontextmanager
async def running(
    app: ASGIApp, *, grace: float = 5.0, keep_alive_timeout: float = 75.0
) -> AsyncIterator[Server]:
    listeners = await open_listeners("127.0.0.1:0")
    port = listeners[0].socket.getsockname()[1]
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:

        async def serve(task_status: trio.TaskStatus[list[str]]) -> None:
            await serve_asgi(
                app,
                listeners,
                shutdown=shutdown,
                grace=grace,
                limits=Limits(keep_alive_timeout=keep_alive_timeout),
                task_status=task_status,
            )
            server.stopped.set()

        server = Server(port, shutdown, [])
        server.binds = await nursery.start(serve)
        with trio.fail_after(10):
            yield server
        shutdown.set()


async def respond(send: Send, status: int, body: bytes, *extra: tuple[bytes, bytes]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-length", str(len(body)).encode()), *extra],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        assert message["type"] == "http.request"
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def echo(scope: Scope, receive: Receive, send: Send) -> None:
    """Echoes the body; headers say what the request was."""
    body = await read_body(receive)
    await respond(
        send,
        200,
        body,
        (b"x-method", scope["method"].encode()),
        (b"x-path", scope["path"].encode()),
        (b"x-raw-path", scope["raw_path"]),
        (b"x-query", scope["query_string"]),
        (b"x-client-port", str(scope["client"][1]).encode()),
    )


@dataclass
class RawResponse:
    status: int
    headers: dict[bytes, bytes]
    body: bytes


def parse_responses(data: bytes) -> tuple[list[RawResponse], bytes]:
    """Complete Content-Length / chunked responses in ``data`` (and the rest)."""
    out: list[RawResponse] = []
    while b"\r\n\r\n" in data:
        head, rest = data.split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ")[1])
        headers = {}
        for line in lines[1:]:
            k, v = line.split(b":", 1)
            headers[k.strip().lower()] = v.strip()
        if status == 100:
            out.append(RawResponse(status, headers, b""))
            data = rest
            continue
        if headers.get(b"transfer-encoding") == b"chunked":
            body = b""
            while True:
                if b"\r\n" not in rest:
                    return out, data
                size_line, tail = rest.split(b"\r\n", 1)
                size = int(size_line, 16)
                if len(tail) < size + 2:
                    return out, data
                body += tail[:size]
                rest = tail[size + 2 :]
                if size == 0:
                    break
        else:
            n = int(headers.get(b"content-length", b"0"))
            if len(rest) < n:
                return out, data
            body, rest = rest[:n], rest[n:]
        out.append(RawResponse(status, headers, body))
        data = rest
    return out, data


async def exchange(port: int, data: bytes, responses: int) -> list[RawResponse]:
    """Write ``data`` in one go, read until ``responses`` responses arrived (or EOF)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(data)
        return await read_responses(stream, responses)


async def read_responses(stream: trio.SocketStream, responses: int) -> list[RawResponse]:
    buf = b""
    got: list[RawResponse] = []
    while len(got) < responses:
        chunk = await stream.receive_some(65536)
        if not chunk:
            break
        buf += chunk
        parsed, buf = parse_responses(buf)
        got += parsed
    return got


async def read_to_eof(stream: trio.SocketStream) -> bytes:
    buf = b""
    while chunk := await stream.receive_some(65536):
        buf += chunk
    return buf


# ------------------------------------------------------------------ round trips


async def test_get_and_post_round_trip_with_httpx() -> None:
    async with running(echo) as server, httpx.AsyncClient(base_url=server.url) as client:
        r = await client.get("/a%20b/c?x=1&y=2")
        assert r.status_code == 200
        assert r.headers["x-method"] == "GET"
        assert r.headers["x-path"] == "/a b/c"
        assert r.headers["x-raw-path"] == "/a%20b/c"
        assert r.headers["x-query"] == "x=1&y=2"
        assert r.content == b""
        r = await client.post("/echo", content=b"hello")
        assert r.status_code == 200
        assert r.content == b"hello"
        assert r.headers["x-method"] == "POST"
    assert server.binds == [server.url]


async def test_scope_is_asgi_http() -> None:
    seen: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope)
        await respond(send, 204, b"")

    async with running(app) as server, httpx.AsyncClient(base_url=server.url) as client:
        r = await client.get("/p", headers={"X-Thing": "Yes"})
        assert r.status_code == 204
    (scope,) = seen
    assert scope["type"] == "http"
    assert scope["asgi"]["version"] == "3.0"
    assert scope["http_version"] == "1.1"
    assert scope["scheme"] == "http"
    assert scope["root_path"] == ""
    assert scope["server"] == ("127.0.0.1", server.port)
    assert scope["client"][0] == "127.0.0.1"
    assert (b"x-thing", b"Yes") in scope["headers"]
    assert all(k == k.lower() for k, _ in scope["headers"])


async def test_keep_alive_reuses_one_connection() -> None:
    async with running(echo) as server, httpx.AsyncClient(base_url=server.url) as client:
        ports = set()
        for i in range(50):
            r = await client.post("/echo", content=str(i).encode())
            assert r.content == str(i).encode()
            ports.add(r.headers["x-client-port"])
        assert len(ports) == 1


async def test_chunked_request_body() -> None:
    async with running(echo) as server:
        request = (
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\n\r\n"
        )
        (r,) = await exchange(server.port, request, 1)
        assert r.status == 200
        assert r.body == b"hello world"


async def test_one_mib_body() -> None:
    body = os.urandom(1 << 20)
    async with running(echo) as server, httpx.AsyncClient(base_url=server.url) as client:
        r = await client.post("/echo", content=body)
        assert r.status_code == 200
        assert r.content == body


async def test_streamed_response_is_chunked_and_whole_one_gets_a_length() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        if scope["path"] == "/stream":
            for part in (b"a", b"b", b""):
                await send({"type": "http.response.body", "body": part, "more_body": True})
            await send({"type": "http.response.body", "body": b"c"})
        else:
            await send({"type": "http.response.body", "body": b"whole"})

    async with running(app) as server:
        request = b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\nGET /whole HTTP/1.1\r\nHost: x\r\n\r\n"
        r1, r2 = await exchange(server.port, request, 2)
        assert r1.headers[b"transfer-encoding"] == b"chunked"
        assert r1.body == b"abc"
        assert r2.headers[b"content-length"] == b"5"
        assert r2.body == b"whole"


async def test_head_response_has_no_body() -> None:
    async with running(echo) as server:
        request = b"HEAD /x HTTP/1.1\r\nHost: x\r\n\r\nGET /y HTTP/1.1\r\nHost: x\r\n\r\n"
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        data = b""
        async with stream:
            await stream.send_all(request)
            while not data.endswith(b"\r\n\r\n") or data.count(b"HTTP/1.1 200") < 2:
                data += await stream.receive_some(65536)
        # HEAD: the app's Content-Length: 0 and no body; then the GET's response (no body)
        head, get = data.split(b"\r\n\r\n")[:2]
        assert head.startswith(b"HTTP/1.1 200")
        assert b"x-path: /x" in head
        assert get.startswith(b"HTTP/1.1 200")
        assert b"x-path: /y" in get


async def test_expect_100_continue() -> None:
    async with running(echo) as server:
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        async with stream:
            await stream.send_all(
                b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n"
            )
            (cont,) = await read_responses(stream, 1)
            assert cont.status == 100
            await stream.send_all(b"abc")
            (r,) = await read_responses(stream, 1)
            assert r.status == 200
            assert r.body == b"abc"


# ------------------------------------------------------------------ disconnects, pipelining


async def test_disconnect_is_reported_after_the_body() -> None:
    got: list[Message] = []
    seen = trio.Event()
    body_read = trio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        got.append(await receive())
        body_read.set()
        got.append(await receive())  # blocks until the client goes away
        seen.set()

    async with running(app) as server:
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        await stream.send_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
        await body_read.wait()
        await trio.sleep(0.05)
        assert not seen.is_set()
        await stream.aclose()
        await seen.wait()
    assert got == [
        {"type": "http.request", "body": b"hi", "more_body": False},
        {"type": "http.disconnect"},
    ]


async def test_disconnect_mid_body() -> None:
    got: list[Message] = []
    done = trio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            got.append(message)
            if message["type"] == "http.disconnect":
                done.set()
                return

    async with running(app) as server:
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        await stream.send_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        await trio.sleep(0.05)
        await stream.aclose()
        await done.wait()
    assert got[-1] == {"type": "http.disconnect"}
    assert b"".join(m.get("body", b"") for m in got) == b"abc"


async def test_pipelined_requests_answered_in_order() -> None:
    async with running(echo) as server:
        request = (
            b"POST /one HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n111"
            b"POST /two HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n222"
        )
        r1, r2 = await exchange(server.port, request, 2)
        assert (r1.headers[b"x-path"], r1.body) == (b"/one", b"111")
        assert (r2.headers[b"x-path"], r2.body) == (b"/two", b"222")


async def test_disconnect_watch_does_not_lose_the_next_pipelined_request() -> None:
    """Like Kiln's InvokeApp: a task waits for http.disconnect while the call runs,
    and is cancelled when the call is done; the next request's bytes, which that
    watch read, must reach the next cycle intact."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        body = await read_body(receive)
        if scope["path"] == "/watched":
            async with trio.open_nursery() as nursery:

                async def watch() -> None:
                    message = await receive()
                    raise AssertionError(f"unexpected {message}")

                nursery.start_soon(watch)
                await trio.sleep(0.2)  # the "call"; the next request arrives meanwhile
                nursery.cancel_scope.cancel()
        await respond(send, 200, body, (b"x-path", scope["path"].encode()))

    async with running(app) as server:
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        async with stream:
            await stream.send_all(
                b"POST /watched HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nA"
            )
            await trio.sleep(0.05)
            # the next request arrives in pieces while the first call runs
            await stream.send_all(b"POST /next HTTP/1.1\r\nHost: x\r\n")
            await trio.sleep(0.05)
            await stream.send_all(b"Content-Length: 1\r\n\r\nB")
            r1, r2 = await read_responses(stream, 2)
        assert (r1.headers[b"x-path"], r1.body) == (b"/watched", b"A")
        assert (r2.headers[b"x-path"], r2.body) == (b"/next", b"B")


async def test_receive_says_disconnect_once_the_response_is_complete() -> None:
    """ASGI: receive() after the response was sent gives http.disconnect; a task
    already waiting in receive() (Starlette's disconnect listener) is woken."""
    got: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive)
        async with trio.open_nursery() as nursery:

            async def listen() -> None:
                got.append(await receive())

            nursery.start_soon(listen)
            await trio.sleep(0.05)
            await respond(send, 200, b"ok")
        got.append(await receive())

    async with running(app) as server, httpx.AsyncClient(base_url=server.url) as client:
        r = await client.post("/", content=b"x")
        assert r.content == b"ok"
        r = await client.post("/", content=b"y")  # the connection is still usable
        assert r.content == b"ok"
    assert got == [{"type": "http.disconnect"}] * 4


# ------------------------------------------------------------------ errors


async def test_app_that_raises_gets_500_and_close() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise ValueError("boom")  # the head was not written yet: a 500 replaces it

    async with running(app) as server:
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        async with stream:
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            (r,) = parse_responses(await read_to_eof(stream))[0]
        assert r.status == 500
        assert r.headers[b"connection"] == b"close"
        assert json.loads(r.body)["error"]["code"] == "internal"


async def test_app_without_a_response_gets_500() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        return

    async with running(app) as server, httpx.AsyncClient(base_url=server.url) as client:
        r = await client.get("/")
        assert r.status_code == 500
        assert r.json()["error"]["code"] == "internal"
        # the server lives on
        r = await client.get("/")
        assert r.status_code == 500


async def test_malformed_request_gets_400_and_close() -> None:
    async with running(echo) as server:
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        async with stream:
            await stream.send_all(b"NOT HTTP AT ALL\r\n\r\n")
            (r,) = parse_responses(await read_to_eof(stream))[0]
        assert r.status == 400
        assert json.loads(r.body)["error"]["code"] == "bad_request"


async def test_oversized_head_gets_431() -> None:
    async with running(echo) as server:
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        async with stream:
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000)
            (r,) = parse_responses(await read_to_eof(stream))[0]
        assert r.status == 431


async def test_unread_body_closes_the_connection_after_the_response() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await respond(send, 413, b"too big")

    async with running(app) as server:
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        async with stream:
            await stream.send_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
            await stream.send_all(b"x" * 1000)
            (r,) = parse_responses(await read_to_eof(stream))[0]
        assert r.status == 413
        assert r.body == b"too big"


# ------------------------------------------------------------------ timeouts, shutdown


async def test_idle_keep_alive_connection_closed_after_timeout() -> None:
    async with running(echo, keep_alive_timeout=0.2) as server:
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        async with stream:
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            (r,) = await read_responses(stream, 1)
            assert r.status == 200
            t0 = trio.current_time()
            assert await stream.receive_some(100) == b""
            assert 0.1 < trio.current_time() - t0 < 2


async def test_shutdown_closes_idle_connections_at_once() -> None:
    async with running(echo) as server:
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        async with stream:
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            await read_responses(stream, 1)
            server.shutdown.set()
            with trio.fail_after(1):
                assert await stream.receive_some(100) == b""
                await server.stopped.wait()


async def test_shutdown_lets_a_request_in_flight_finish_and_refuses_new_ones() -> None:
    started = trio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive)
        started.set()
        await trio.sleep(0.3)
        await respond(send, 200, b"done")

    async with running(app, grace=5) as server:
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        async with stream:
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            await started.wait()
            server.shutdown.set()
            await trio.sleep(0.05)
            with pytest.raises(OSError, match="onnect"):  # the listener is closed
                await trio.open_tcp_stream("127.0.0.1", server.port)
            (r,) = parse_responses(await read_to_eof(stream))[0]
        assert r.status == 200
        assert r.body == b"done"
        assert r.headers[b"connection"] == b"close"
        with trio.fail_after(1):
            await server.stopped.wait()


async def test_shutdown_cancels_a_request_still_running_after_grace() -> None:
    started = trio.Event()
    cancelled = trio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        started.set()
        try:
            await trio.sleep_forever()
        finally:
            cancelled.set()

    async with running(app, grace=0.2) as server:
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        async with stream:
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            await started.wait()
            t0 = trio.current_time()
            server.shutdown.set()
            await cancelled.wait()
            assert 0.15 < trio.current_time() - t0 < 2
            assert await read_to_eof(stream) == b""
            await server.stopped.wait()


async def test_cancelling_serve_asgi_closes_everything() -> None:
    listeners = await open_listeners("127.0.0.1:0")
    port = listeners[0].socket.getsockname()[1]
    started = trio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        started.set()
        await trio.sleep_forever()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: serve_asgi(
                    app, listeners, shutdown=trio.Event(), grace=10, task_status=task_status
                )
            )
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            await started.wait()
            nursery.cancel_scope.cancel()
        assert await read_to_eof(stream) == b""
        await stream.aclose()
    assert listeners[0].socket.fileno() == -1


# ------------------------------------------------------------------ Kiln's InvokeApp


FNS = functions(
    echo={"image": "busybox", "cmd": ["cat"], "memory": "64MiB"},
    slow={"image": "busybox", "cmd": ["sleep"], "memory": "64MiB"},
)


async def test_invoke_app_healthz_404_and_a_call() -> None:
    async with (
        stack(FNS) as s,
        running(s.app) as server,
        httpx.AsyncClient(base_url=server.url) as client,
    ):
        r = await client.get("/healthz")
        assert r.status_code == 200
        assert r.json() == {"status": "ok"}
        assert r.headers["kiln-call-id"]
        r = await client.get("/nope")
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "not_found"
        r = await client.post("/invoke/missing", content=b"x")
        assert r.status_code == 404
        r = await client.post("/invoke/echo", content=b"through kiln")
        assert r.status_code == 200, r.text
        assert r.content == b"through kiln"


async def test_invoke_app_cancels_the_call_when_the_caller_disconnects() -> None:
    async with stack(FNS) as s, running(s.app) as server:
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        await stream.send_all(
            b"POST /invoke/slow HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx"
        )
        await eventually(lambda: bool(s.fake.containers))  # the call runs in its container
        assert s.calls.inflight == 1
        await stream.aclose()
        await s.calls.wait_idle()  # the call is cancelled...
        await eventually(lambda: not s.fake.containers)  # ...and its container removed


async def eventually(predicate: Callable[[], bool]) -> None:
    """Wait (real time, bounded by the test's fail_after) until ``predicate()``."""
    for _ in range(1000):
        if predicate():
            return
        await trio.sleep(0.01)
    raise AssertionError("condition not met")
