"""kiln.http.server: what the server refuses itself, and how it holds up against
slow or greedy clients — over in-memory streams, timeouts in virtual time."""

from __future__ import annotations

import errno
import json
import logging
import select
import socket

import pytest
import trio
import trio.testing

from kiln.config import ConfigError, parse
from kiln.http import Limits, Receive, Scope, Send, open_listeners, serve_asgi
from kiln.http.server import ACCEPT_BACKOFF, ACCEPT_LOG_INTERVAL, MAX_HEAD, MAX_HEADERS
from kiln.main import INVOKE_MAX_HEADERS, invoke_limits
from tests.harness import functions, stack
from tests.memnet import MemoryListener, read_until_eof, serving
from tests.unit.test_http_server import RawResponse, parse_responses, respond


class Recorder:
    """An app that reads the body (a disconnect ends it quietly, as Kiln's apps
    do) and answers 200 with it; it records what it saw."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.disconnects = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.paths.append(scope["path"])
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.disconnects += 1
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        await respond(send, 200, body)


async def send_and_read(listener: MemoryListener, data: bytes) -> list[RawResponse]:
    """Send ``data``; every response until the server closes the connection."""
    async with await listener.connect() as stream:
        await stream.send_all(data)
        responses, rest = parse_responses(await read_until_eof(stream))
    assert rest == b""
    return responses


def no_errors(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not bad, [r.getMessage() for r in bad]


def code(response: RawResponse) -> str:
    return str(json.loads(response.body)["error"]["code"])


# ------------------------------------------------------------------ the head


async def test_connect_is_405_with_allow(caplog: pytest.LogCaptureFixture) -> None:
    app = Recorder()  # it would answer 200, which would turn the connection into a tunnel
    async with serving(app) as listener:
        (r,) = await send_and_read(
            listener, b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"
        )
    assert r.status == 405
    assert b"GET" in r.headers[b"allow"]
    assert b"POST" in r.headers[b"allow"]
    assert r.headers[b"connection"] == b"close"
    assert app.paths == []
    no_errors(caplog)


async def test_content_length_with_transfer_encoding_is_400_and_closed() -> None:
    app = Recorder()
    async with serving(app) as listener:
        responses = await send_and_read(
            listener,
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        )
    assert [r.status for r in responses] == [400]  # the smuggled request is never answered
    assert code(responses[0]) == "bad_request"
    assert app.paths == []


async def test_a_malformed_chunk_is_400(caplog: pytest.LogCaptureFixture) -> None:
    app = Recorder()
    async with serving(app) as listener:
        (r,) = await send_and_read(
            listener,
            b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        )
    assert r.status == 400
    assert code(r) == "bad_request"
    assert app.disconnects == 1  # the app saw the request end as a disconnect
    no_errors(caplog)


async def test_a_head_over_the_limit_is_431_also_in_one_packet() -> None:
    async with serving(Recorder()) as listener:
        big = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (MAX_HEAD + 100) + b"\r\n\r\n"
        (r,) = await send_and_read(listener, big)  # one send_all: one receive on the server
        assert r.status == 431
        assert code(r) == "headers_too_large"
        # just under the limit is fine
        ok = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (MAX_HEAD - 200) + b"\r\n\r\n"
        stream = await listener.connect()
        await stream.send_all(ok)
        buf = b""
        while not parse_responses(buf)[0]:
            buf += await stream.receive_some(65536)
        assert parse_responses(buf)[0][0].status == 200
        await stream.aclose()


def headers(n: int, size: int = 1) -> bytes:
    return b"".join(b"X-H%d: %s\r\n" % (i, b"v" * size) for i in range(n))


async def test_too_many_headers_is_431() -> None:
    async with serving(Recorder()) as listener:
        (r,) = await send_and_read(
            listener, b"GET / HTTP/1.1\r\nHost: x\r\n" + headers(MAX_HEADERS) + b"\r\n"
        )
    assert r.status == 431
    assert str(MAX_HEADERS) in json.loads(r.body)["error"]["message"]


async def test_forwarding_limits_on_header_count_and_bytes() -> None:
    limits = Limits(max_headers=10, max_header_bytes=1000, max_connections=10)
    async with serving(Recorder(), limits) as listener:
        (r,) = await send_and_read(
            listener, b"GET / HTTP/1.1\r\nHost: x\r\n" + headers(10) + b"\r\n"
        )
        assert r.status == 431  # 11 with Host
        (r,) = await send_and_read(
            listener, b"GET / HTTP/1.1\r\nHost: x\r\n" + headers(2, 600) + b"\r\n"
        )
        assert r.status == 431
        (r,) = await send_and_read(
            listener,
            b"GET / HTTP/1.1\r\nHost: x\r\n" + headers(9, 50) + b"Connection: close\r\n\r\n",
        )
        assert r.status == 431  # 11 headers again: Connection counts
        (r,) = await send_and_read(
            listener,
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + headers(8, 50) + b"\r\n",
        )
        assert r.status == 200


# ------------------------------------------------------------------ the body


async def test_a_body_that_does_not_arrive_in_time_is_408(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    app = Recorder()
    async with serving(app, Limits(body_timeout=30, max_connections=10)) as listener:
        stream = await listener.connect()
        t0 = trio.current_time()
        await stream.send_all(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
        # a byte every 10 s keeps each read short, but the deadline is for the whole body
        async with trio.open_nursery() as nursery:

            async def drip() -> None:
                for _ in range(10):
                    await trio.sleep(10)
                    await stream.send_all(b"d")

            nursery.start_soon(drip)
            raw = await read_until_eof(stream)
            nursery.cancel_scope.cancel()
        (r,), _ = parse_responses(raw)
        assert r.status == 408
        assert code(r) == "request_timeout"
        assert trio.current_time() - t0 == pytest.approx(30)
        assert app.disconnects == 1
    no_errors(caplog)


# ------------------------------------------------------------------ connections


async def test_at_the_cap_a_new_connection_evicts_the_slowest(
    autojump_clock: trio.testing.MockClock,
) -> None:
    app = Recorder()
    async with serving(app, Limits(max_connections=2)) as listener:
        head_only = await listener.connect()
        await head_only.send_all(b"GET / HTTP/1.1\r\n")  # and never the rest
        await trio.sleep(1)
        half_body = await listener.connect()
        await half_body.send_all(b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab")
        await trio.sleep(1)
        # a third client: the oldest slow one goes, the new one is served
        (r,) = await send_and_read(
            listener, b"GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        assert r.status == 200
        assert await read_until_eof(head_only) == b""
        # another slow one, then a fourth: now the half-sent body is the oldest, told why
        slow = await listener.connect()
        await slow.send_all(b"GET / HTTP/1.1\r\n")
        await trio.sleep(1)
        (r,) = await send_and_read(
            listener, b"GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        assert r.status == 200
        (evicted,), _ = parse_responses(await read_until_eof(half_body))
        assert evicted.status == 503
        assert code(evicted) == "overloaded"
        await slow.aclose()


async def test_when_every_connection_is_busy_accepting_waits(
    autojump_clock: trio.testing.MockClock,
) -> None:
    release = trio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await release.wait()
        await respond(send, 200, b"done")

    async with serving(app, Limits(max_connections=1)) as listener:
        busy = await listener.connect()
        await busy.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await trio.testing.wait_all_tasks_blocked()
        assert listener.accepted == 1
        with trio.move_on_after(5):
            await listener.connect()
            raise AssertionError("accepted beyond the cap")
        release.set()
        (r,), _ = parse_responses(await read_until_eof(busy))
        assert r.status == 200
        late = await listener.connect()  # accepted once the busy one closed
        await late.aclose()


class FailingListener(trio.abc.Listener[trio.abc.Stream]):
    """accept() always fails as if the process were out of file descriptors."""

    def __init__(self) -> None:
        self.calls = 0

    async def accept(self) -> trio.abc.Stream:
        self.calls += 1
        await trio.lowlevel.checkpoint()
        raise OSError(errno.EMFILE, "Too many open files")

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


async def test_accept_errors_back_off_and_are_logged_rarely(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    listener = FailingListener()
    shutdown = trio.Event()
    seconds = 60
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: serve_asgi(
                Recorder(), [listener], shutdown=shutdown, grace=1, limits=Limits(max_connections=4)
            )
        )
        await trio.sleep(seconds)
        shutdown.set()
    assert listener.calls <= seconds / ACCEPT_BACKOFF + 2  # backs off: never a hot loop
    lines = [r for r in caplog.records if "accept" in r.getMessage()]
    assert 1 <= len(lines) <= seconds / ACCEPT_LOG_INTERVAL + 1
    assert all(r.levelno == logging.WARNING for r in lines)
    assert "more since the last report" in lines[-1].getMessage()


# ------------------------------------------------------------------ Kiln's apps


FNS = functions(echo={"image": "busybox", "cmd": ["cat"], "memory": "64MiB"})


async def test_a_caller_leaving_mid_upload_is_499_and_an_info_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    async with stack(FNS) as s, serving(s.app) as listener:
        stream = await listener.connect()
        await stream.send_all(
            b"POST /invoke/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10
        )
        await trio.testing.wait_all_tasks_blocked()
        await stream.aclose()
        await trio.testing.wait_all_tasks_blocked()
    assert b'kiln_calls_total{function="echo",status="499"} 1.0' in s.metrics.render()
    assert b'status="500"' not in s.metrics.render()
    no_errors(caplog)
    assert any("499" in r.getMessage() and r.levelno == logging.INFO for r in caplog.records)


async def test_invoke_405_says_allow() -> None:
    async with stack(FNS) as s, serving(s.app) as listener:
        (r,) = await send_and_read(
            listener, b"TRACE /invoke/echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
    assert r.status == 405
    assert b"POST" in r.headers[b"allow"]


async def test_a_flood_of_slow_clients_never_exceeds_the_cap() -> None:
    """Over TCP (a head and the start of its body arrive in one read): evictions
    that race with such a read are not lost; the server holds at most
    ``max_connections`` however the flood is shaped."""
    cap = 5
    slow = [
        b"",
        b"POST /x HTTP/1.1\r\nHost: k",
        b"POST /x HTTP/1.1\r\nHost: k\r\nContent-Length: 100000\r\n\r\nabc",
    ]
    listeners = await open_listeners("127.0.0.1:0")
    port = listeners[0].socket.getsockname()[1]
    clients: list[socket.socket] = []

    def flood() -> None:
        for i in range(150):
            sock = socket.create_connection(("127.0.0.1", port))
            if slow[i % 3]:
                sock.sendall(slow[i % 3])
            clients.append(sock)

    try:
        async with trio.open_nursery() as nursery:
            shutdown = trio.Event()
            await nursery.start(
                lambda task_status: serve_asgi(
                    Recorder(),
                    listeners,
                    shutdown=shutdown,
                    grace=1,
                    limits=Limits(max_connections=cap),
                    task_status=task_status,
                )
            )
            await trio.to_thread.run_sync(flood)
            await trio.testing.wait_all_tasks_blocked(cushion=0.1)
            # a connection the server closed is readable (EOF, or a 503 first)
            _, writable, _ = select.select([], clients, [], 0)
            readable, _, _ = select.select(clients, [], [], 0)
            assert len(writable) == len(clients)
            assert len(clients) - len(readable) <= cap
            shutdown.set()
    finally:
        for sock in clients:
            sock.close()


def test_the_invoke_api_limits_come_from_the_config() -> None:
    config = parse({"daemon": {"body_timeout": 5, "max_connections": 10}})
    limits = invoke_limits(config)
    assert limits.body_timeout == 5
    assert limits.max_connections == 10
    assert limits.max_headers == INVOKE_MAX_HEADERS
    assert invoke_limits(parse({})).max_connections is None  # derived from RLIMIT_NOFILE
    with pytest.raises(ConfigError, match=r"daemon\.body_timeout"):
        parse({"daemon": {"body_timeout": 0}})
