"""A fake Docker Engine, in process, for unit and fault-injection tests.

The client's connections are in-memory stream pairs: ``fake.backend`` is the
httpcore network backend a :class:`kiln.docker.Docker` is given
(``Docker(**fake.client_kwargs())``), and an h11 server task per connection
answers — short calls through ``_handle`` (an httpx request in, an httpx response
out), long ones (``wait``, hijacked ``attach``) on their own. Containers run *programs*: small async functions chosen by
image name, that read stdin and write stdout/stderr like a real process.

Faults on cue:

* ``fake.stall[op] = seconds`` — the operation hangs that long; if that is
  beyond the client's read timeout, the client times out at its timeout (as with a real stalled engine). ``op`` is one of create, start,
  kill, remove, inspect, list, version, wait, attach.
* ``fake.fail[op] = (status, message)`` — Docker answers with that error.
* ``fake.unreachable = True`` — connections are refused from now on.
* ``fake.down()`` / ``fake.up()`` — dockerd goes away (containers keep running,
  long streams break) and comes back.
* ``fake.kill_container(cid)`` — the container dies now (exit 137).

Everything runs on Trio's clock, so ``MockClock`` drives stalls and programs.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h11
import httpcore
import httpx
import trio
import trio.testing

from kiln.docker.frames import STDERR, STDOUT, encode_frame
from kiln.hot.httpstream import (
    MAX_RESPONSE,
    FnProtocolError,
    FnResponse,
    RequestNotSent,
    ResponseTooLarge,
)
from kiln.hot.transport import HotConnection


class Proc:
    """What a program sees: its stdin, stdout, stderr."""

    def __init__(self, container: FakeContainer) -> None:
        self.container = container

    async def read(self) -> bytes:
        """The next piece of stdin, or b"" at EOF."""
        try:
            return await self.container.stdin_recv.receive()
        except trio.EndOfChannel:
            return b""

    async def read_all(self) -> bytes:
        out = bytearray()
        while chunk := await self.read():
            out += chunk
        return bytes(out)

    async def listen(self, handler: HotHandler) -> None:
        """Bind the http-stream listener (the container becomes ready) and serve forever."""
        self.container.handler = handler
        self.container.listening.set()
        await trio.sleep_forever()

    async def out(self, data: bytes) -> None:
        await self.container.emit(STDOUT, data)

    async def err(self, data: bytes) -> None:
        await self.container.emit(STDERR, data)


Program = Callable[[Proc], Awaitable[int]]
HotHandler = Callable[
    [list[tuple[bytes, bytes]], bytes], Awaitable[tuple[int, list[tuple[bytes, bytes]], bytes]]
]


async def _echo_handler(
    headers: list[tuple[bytes, bytes]], body: bytes
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    await trio.sleep(0.01)  # 10 ms of work
    return 200, [(b"Fn-Http-Status", b"200")], body


async def hot_echo(proc: Proc) -> int:
    await trio.sleep(0.3)  # start-up time
    await proc.listen(_echo_handler)
    return 0


async def hot_slow(proc: Proc) -> int:
    async def handler(
        headers: list[tuple[bytes, bytes]], body: bytes
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        await trio.sleep(5)
        return 200, [], body

    await trio.sleep(0.3)
    await proc.listen(handler)
    return 0


async def hot_picky(proc: Proc) -> int:
    """An FDK whose HTTP server refuses requests with more than 8 headers (431)."""

    async def handler(
        headers: list[tuple[bytes, bytes]], body: bytes
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        if len(headers) > 8:
            return 431, [], b"Request Header Fields Too Large"
        return 200, [], body

    await proc.listen(handler)
    return 0


async def hot_500(proc: Proc) -> int:
    async def handler(
        headers: list[tuple[bytes, bytes]], body: bytes
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        return 500, [], b"oops"

    await proc.listen(handler)
    return 0


async def hot_big(proc: Proc) -> int:
    """Answers as many bytes as the request body says."""

    async def handler(
        headers: list[tuple[bytes, bytes]], body: bytes
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        return 200, [(b"Fn-Http-Status", b"200")], b"x" * int(body)

    await proc.listen(handler)
    return 0


async def hot_crashes(proc: Proc) -> int:
    """Serves calls (logging a line each); a call with body ``crash`` makes it print a
    traceback and exit with code 1 before answering."""
    crash = trio.Event()

    async def handler(
        headers: list[tuple[bytes, bytes]], body: bytes
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        if body == b"crash":
            await trio.sleep(0.5)
            await proc.err(b"Traceback (most recent call last):\nValueError: boom\n")
            crash.set()
            await trio.sleep_forever()
        await proc.err(b"Traceback of an earlier call: KeyError\n")
        return 200, [], body

    async with trio.open_nursery() as nursery:
        nursery.start_soon(proc.listen, handler)
        await crash.wait()
        nursery.cancel_scope.cancel()
    return 1


async def hot_never_binds(proc: Proc) -> int:
    await trio.sleep(3600)
    return 0


async def hot_exits(proc: Proc) -> int:
    await proc.err(b"cannot load model\n")
    return 3


async def cat(proc: Proc) -> int:
    while chunk := await proc.read():
        await proc.out(chunk)
    return 0


async def fail(proc: Proc) -> int:
    await proc.read_all()
    await proc.err(b"something went wrong\nreally wrong\n")
    return 3


async def sleeper(proc: Proc) -> int:
    await trio.sleep(3600)
    return 0


async def slow_cat(proc: Proc) -> int:
    """Reads stdin, waits 5 s, echoes it."""
    data = await proc.read_all()
    await trio.sleep(5)
    await proc.out(data)
    return 0


async def oom(proc: Proc) -> int:
    await proc.read_all()
    proc.container.oom_killed = True
    return 137


async def printenv(proc: Proc) -> int:
    """Writes its environment, one ``KEY=value`` a line."""
    await proc.read_all()
    await proc.out("".join(f"{e}\n" for e in proc.container.config.get("Env") or []).encode())
    return 0


async def dies(proc: Proc) -> int:
    """Dies right after start, without reading its input."""
    return 139


DEFAULT_PROGRAMS: dict[str, Program] = {
    "cat": cat,
    "fail": fail,
    "sleep": sleeper,
    "slowcat": slow_cat,
    "oom": oom,
    "dies": dies,
    "printenv": printenv,
    "hot_echo": hot_echo,
    "hot_slow": hot_slow,
    "hot_500": hot_500,
    "hot_picky": hot_picky,
    "hot_big": hot_big,
    "hot_never_binds": hot_never_binds,
    "hot_crashes": hot_crashes,
    "hot_exits": hot_exits,
}


@dataclass
class FakeContainer:
    id: str
    name: str
    config: dict[str, Any]
    program: Program
    state: str = "created"
    exit_code: int | None = None
    oom_killed: bool = False
    exited: trio.Event = field(default_factory=trio.Event)
    attach_streams: list[trio.abc.HalfCloseableStream] = field(default_factory=list)
    scope: trio.CancelScope | None = None
    handler: HotHandler | None = None
    listening: trio.Event = field(default_factory=trio.Event)
    #: The listener stops accepting connections (the function's server died, the process lives).
    refuse_connect: bool = False

    def __post_init__(self) -> None:
        self.stdin_send, self.stdin_recv = trio.open_memory_channel[bytes](64)

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.config.get("Labels") or {})

    async def emit(self, stream: int, data: bytes) -> None:
        for i in range(0, max(len(data), 1), 32 * 1024):
            frame = encode_frame(stream, data[i : i + 32 * 1024])
            for s in list(self.attach_streams):
                try:
                    await s.send_all(frame)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self.attach_streams.remove(s)


class FakeDocker:
    """Use as ``async with FakeDocker() as fake`` and hand ``fake.client_kwargs()`` to ``kiln.docker.Docker``."""

    def __init__(self, programs: dict[str, Program] | None = None) -> None:
        self.programs = {**DEFAULT_PROGRAMS, **(programs or {})}
        self.containers: dict[str, FakeContainer] = {}
        self.stall: dict[str, float] = {}
        self.fail: dict[str, tuple[int, str]] = {}
        self.unreachable = False
        self.api_version = "1.41"
        self.calls: list[tuple[str, str]] = []  # (operation, container id or "")
        self.created_total = 0
        self._ids = itertools.count(1)
        self._nursery: trio.Nursery | None = None
        self._long_streams: set[trio.abc.HalfCloseableStream] = set()
        self._server_of: dict[int, trio.abc.HalfCloseableStream] = {}
        self.backend = FakeNetworkBackend(self)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[FakeDocker]:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                yield self
            finally:
                nursery.cancel_scope.cancel()

    async def __aenter__(self) -> FakeDocker:
        self._cm = self.running()
        return await self._cm.__aenter__()

    async def __aexit__(self, *exc: Any) -> None:
        await self._cm.__aexit__(*exc)

    # ---- helpers for tests ---------------------------------------------

    def client_kwargs(self) -> dict[str, Any]:
        return {
            "url": "unix:///fake/docker.sock",
            "api_version": "v1.41",
            "network_backend": self.backend,
        }

    def live(self) -> list[FakeContainer]:
        return list(self.containers.values())

    def crash(self) -> None:
        """dockerd dies: its containers stop, its connections drop, new ones are refused."""
        self.unreachable = True
        for c in list(self.containers.values()):
            if c.state == "running":
                self.kill_container(c.id)
        for stream in list(self._long_streams):
            assert self._nursery is not None
            self._nursery.start_soon(trio.aclose_forcefully, stream)

    def down(self) -> None:
        """dockerd dies but containerd keeps its containers running: Docker's
        connections drop and new ones are refused; hot containers still answer."""
        self.unreachable = True
        for stream in list(self._long_streams):
            assert self._nursery is not None
            self._nursery.start_soon(trio.aclose_forcefully, stream)

    def up(self) -> None:
        """dockerd is back (its containers as they were)."""
        self.unreachable = False

    def kill_container(self, cid: str, code: int = 137) -> None:
        c = self.containers[cid]
        if c.scope is not None:
            c.scope.cancel()
        self._exit(c, code)

    def _exit(self, c: FakeContainer, code: int) -> None:
        if c.state == "exited":
            return
        c.state = "exited"
        c.exit_code = code
        c.exited.set()
        for s in c.attach_streams:
            # closing the send side ends the caller's attach stream (EOF)
            assert self._nursery is not None
            self._nursery.start_soon(trio.aclose_forcefully, s)
        c.attach_streams.clear()

    def _program_for(self, image: str, cmd: list[str] | None) -> Program | None:
        key = (cmd or [image])[0]
        if key in self.programs:
            return self.programs[key]
        base = image.split(":")[0].rsplit("/", 1)[-1]
        return self.programs.get(base)

    async def _fault(self, op: str, request: httpx.Request | None = None) -> httpx.Response | None:
        self.calls.append((op, ""))
        if self.unreachable:
            raise httpx.ConnectError("[Errno 111] Connection refused")
        stall = self.stall.get(op)
        if stall:
            read_timeout = None
            if request is not None:
                read_timeout = request.extensions.get("timeout", {}).get("read")
            if read_timeout is not None and stall > read_timeout:
                await trio.sleep(read_timeout)
                raise httpx.ReadTimeout("timed out")
            await trio.sleep(stall)
        if op in self.fail:
            status, message = self.fail[op]
            return httpx.Response(status, json={"message": message})
        return None

    # ---- short calls -----------------------------------------------------

    async def _handle(self, request: httpx.Request) -> httpx.Response:
        path = re.sub(r"^/v[0-9.]+", "", request.url.path)
        method = request.method
        m = re.match(r"^/containers/([^/]+)(/(\w+))?$", path)
        if path == "/_ping":
            return await self._fault("ping", request) or httpx.Response(200, text="OK")
        if path == "/version":
            return await self._fault("version", request) or httpx.Response(
                200, json={"Version": "fake", "ApiVersion": self.api_version}
            )
        if path == "/containers/create" and method == "POST":
            return await self._fault("create", request) or self._create(request)
        if path == "/containers/json":
            return await self._fault("list", request) or self._list(request)
        if path.startswith("/images/"):
            return await self._fault("image", request) or httpx.Response(
                200, json={"Id": "sha256:x"}
            )
        if m:
            cid, action = m.group(1), m.group(3) or ""
            op = {"": "remove" if method == "DELETE" else "inspect"}.get(action, action)
            if op == "json":
                op = "inspect"
            faulted = await self._fault(op, request)
            if faulted is not None:
                return faulted
            c = self._find(cid)
            if c is None:
                return httpx.Response(404, json={"message": f"No such container: {cid}"})
            self.calls[-1] = (op, c.id)
            if op == "start":
                return self._start(c)
            if op == "kill":
                if c.state != "running":
                    return httpx.Response(409, json={"message": f"Container {cid} is not running"})
                self.kill_container(c.id)
                return httpx.Response(204)
            if op == "remove":
                if c.state == "running":
                    if request.url.params.get("force") != "1":
                        return httpx.Response(409, json={"message": "container is running"})
                    self.kill_container(c.id)
                del self.containers[c.id]
                return httpx.Response(204)
            if op == "inspect":
                return httpx.Response(200, json=self._inspect(c))
            if op == "logs":
                return httpx.Response(200, content=b"")
        return httpx.Response(404, json={"message": f"page not found: {method} {path}"})

    def _find(self, ref: str) -> FakeContainer | None:
        if ref in self.containers:
            return self.containers[ref]
        for c in self.containers.values():
            if c.name == ref or c.id.startswith(ref):
                return c
        return None

    def _create(self, request: httpx.Request) -> httpx.Response:
        config = json.loads(request.content)
        name = request.url.params.get("name") or ""
        if name and any(c.name == name for c in self.containers.values()):
            return httpx.Response(
                409, json={"message": f'Conflict. The container name "/{name}" is already in use'}
            )
        program = self._program_for(config["Image"], config.get("Cmd"))
        if program is None:
            return httpx.Response(404, json={"message": f"No such image: {config['Image']}"})
        cid = f"{next(self._ids):064x}"
        self.containers[cid] = FakeContainer(cid, name or cid[:12], config, program)
        self.created_total += 1
        return httpx.Response(201, json={"Id": cid, "Warnings": []})

    def _start(self, c: FakeContainer) -> httpx.Response:
        if c.state == "running":
            return httpx.Response(304)
        if c.state == "exited":
            return httpx.Response(409, json={"message": "container has exited"})
        c.state = "running"
        assert self._nursery is not None
        self._nursery.start_soon(self._run, c)
        return httpx.Response(204)

    async def _run(self, c: FakeContainer) -> None:
        with trio.CancelScope() as scope:
            c.scope = scope
            code = await c.program(Proc(c))
            self._exit(c, code)

    def _inspect(self, c: FakeContainer) -> dict[str, Any]:
        return {
            "Id": c.id,
            "Name": "/" + c.name,
            "Config": {"Labels": c.labels, "Image": c.config["Image"]},
            "State": {
                "Status": c.state,
                "Running": c.state == "running",
                "ExitCode": c.exit_code or 0,
                "OOMKilled": c.oom_killed,
            },
        }

    def _list(self, request: httpx.Request) -> httpx.Response:
        filters = json.loads(request.url.params.get("filters") or "{}")
        wanted = filters.get("label", [])
        out = []
        for c in self.containers.values():
            labels = c.labels
            ok = True
            for w in wanted:
                k, _, v = w.partition("=")
                if k not in labels or ("=" in w and labels[k] != v):
                    ok = False
            if ok:
                out.append(
                    {"Id": c.id, "Names": ["/" + c.name], "Labels": labels, "State": c.state}
                )
        return httpx.Response(200, json=out)

    # ---- connections --------------------------------------------------------

    async def connect(self) -> trio.abc.HalfCloseableStream:
        if self.unreachable:
            raise ConnectionRefusedError(111, "Connection refused")
        client, server = trio.testing.memory_stream_pair()
        assert self._nursery is not None
        self._long_streams.add(server)
        self._server_of[id(client)] = server
        self._nursery.start_soon(self._serve, server)
        return client

    def server_gone(self, client: trio.abc.HalfCloseableStream) -> bool:
        """Whether the engine's end of this connection is closed (what a real socket
        shows as readable-while-idle)."""
        server = self._server_of.get(id(client))
        return server is None or server not in self._long_streams

    async def _serve(self, stream: trio.abc.HalfCloseableStream) -> None:
        """One client connection: short calls kept alive, a long call to its end."""
        conn = h11.Connection(h11.SERVER)
        self._long_streams.add(stream)
        try:
            while True:
                request: h11.Request | None = None
                body = bytearray()
                complete = False
                while not complete:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        data = await stream.receive_some(65536)
                        if not data:
                            return
                        conn.receive_data(bytes(data))
                    elif isinstance(event, h11.Request):
                        request = event
                    elif isinstance(event, h11.Data):
                        body += event.data
                    elif isinstance(event, h11.EndOfMessage):
                        complete = True
                    elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                        return
                assert request is not None
                target = request.target.decode()
                path = re.sub(r"^/v[0-9.]+", "", target.split("?")[0])
                m = re.match(r"^/containers/([^/]+)/(wait|attach|logs)$", path)
                if m and (m.group(2) != "logs" or "follow=1" in target):
                    await self._long(stream, conn, *m.groups())
                    return
                try:
                    response = await self._handle(
                        httpx.Request(
                            request.method.decode(),
                            "http://docker" + target,
                            headers=list(request.headers),
                            content=bytes(body),
                        )
                    )
                except httpx.ConnectError:
                    return  # Docker is gone: the connection drops
                content = await response.aread()
                if response.status_code in (204, 304):
                    head = h11.Response(status_code=response.status_code, headers=[])
                    await stream.send_all(conn.send(head) + conn.send(h11.EndOfMessage()))
                else:
                    headers = [("Content-Length", str(len(content)))]
                    await stream.send_all(
                        conn.send(h11.Response(status_code=response.status_code, headers=headers))
                        + conn.send(h11.Data(data=content))
                        + conn.send(h11.EndOfMessage())
                    )
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            pass
        finally:
            self._long_streams.discard(stream)
            for key, server in list(self._server_of.items()):
                if server is stream:
                    del self._server_of[key]
            await trio.aclose_forcefully(stream)

    async def _long(
        self, stream: trio.abc.HalfCloseableStream, conn: h11.Connection, cid: str, op: str
    ) -> None:
        self.calls.append((op, cid))
        if self.unreachable:
            return
        stall = self.stall.get(op)
        if stall:
            await trio.sleep(stall)
        if op in self.fail:
            await self._long_error(stream, conn, *self.fail[op])
            return
        c = self._find(cid)
        if c is None:
            await self._long_error(stream, conn, 404, f"No such container: {cid}")
            return
        if op == "wait":
            await c.exited.wait()
            body = json.dumps({"StatusCode": c.exit_code, "Error": None}).encode()
            await stream.send_all(
                conn.send(
                    h11.Response(status_code=200, headers=[("Content-Length", str(len(body)))])
                )
                + conn.send(h11.Data(data=body))
                + conn.send(h11.EndOfMessage())
            )
            return
        if op == "logs":
            await self._follow_logs(stream, c)
            return
        await self._attach(stream, conn, c)

    async def _long_error(
        self, stream: trio.abc.HalfCloseableStream, conn: h11.Connection, status: int, message: str
    ) -> None:
        body = json.dumps({"message": message}).encode()
        await stream.send_all(
            conn.send(
                h11.Response(status_code=status, headers=[("Content-Length", str(len(body)))])
            )
            + conn.send(h11.Data(data=body))
            + conn.send(h11.EndOfMessage())
        )

    async def _follow_logs(self, stream: trio.abc.HalfCloseableStream, c: FakeContainer) -> None:
        """``logs?follow=1``: the frames the container writes from now on, until it exits
        (the body ends with the connection)."""
        await stream.send_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.docker.multiplexed-stream\r\n"
            b"Connection: close\r\n\r\n"
        )
        if c.state == "exited":
            return
        c.attach_streams.append(stream)
        await c.exited.wait()

    async def _attach(
        self, stream: trio.abc.HalfCloseableStream, conn: h11.Connection, c: FakeContainer
    ) -> None:
        await stream.send_all(
            b"HTTP/1.1 101 UPGRADED\r\nContent-Type: application/vnd.docker.raw-stream\r\n"
            b"Connection: Upgrade\r\nUpgrade: tcp\r\n\r\n"
        )
        leftover, _ = conn.trailing_data
        if c.state == "exited":
            return
        c.attach_streams.append(stream)
        try:
            if leftover:
                await c.stdin_send.send(bytes(leftover))
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    break
                await c.stdin_send.send(bytes(data))
            await c.stdin_send.aclose()
            await c.exited.wait()
        except trio.ClosedResourceError:
            pass


class FakeConnection:
    """A keep-alive connection to a fake hot container: calls its handler."""

    def __init__(self, container: FakeContainer, max_response: int = MAX_RESPONSE) -> None:
        self.container = container
        self.max_response = max_response

    async def call(self, headers: list[tuple[bytes, bytes]], body: bytes) -> FnResponse:
        c = self.container
        if c.state != "running" or c.handler is None:
            raise FnProtocolError("connection reset by peer")
        async with trio.open_nursery() as nursery:
            result: list[tuple[int, list[tuple[bytes, bytes]], bytes]] = []

            async def run() -> None:
                assert c.handler is not None
                result.append(await c.handler(headers, body))
                nursery.cancel_scope.cancel()

            async def died() -> None:
                await c.exited.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(run)
            nursery.start_soon(died)
        if not result:
            raise FnProtocolError("the function closed the connection")
        status, resp_headers, resp_body = result[0]
        if len(resp_body) > self.max_response:
            raise ResponseTooLarge(self.max_response)
        return FnResponse(status, resp_headers, resp_body)

    def stale(self) -> bool:
        return False

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


class FakeTransport:
    """The pool's listener seam for the fake engine: ready when the program listens."""

    def __init__(self, fake: FakeDocker, *, connection_idle: float = 1.0) -> None:
        self.fake = fake
        self.connection_idle = connection_idle

    def _container_for(self, iofs: Path) -> FakeContainer:
        for c in self.fake.containers.values():
            binds = (c.config.get("HostConfig") or {}).get("Binds") or []
            if f"{iofs}:/tmp/iofs" in binds:
                return c
        raise AssertionError(f"no container binds {iofs}")

    async def wait_ready(self, iofs: Path) -> Path:
        c = self._container_for(iofs)
        await c.listening.wait()
        return Path("/fake") / c.id

    async def connect(
        self, socket_path: Path, *, max_response: int = MAX_RESPONSE
    ) -> HotConnection:
        await trio.lowlevel.checkpoint()
        if self.fake.containers[socket_path.name].refuse_connect:
            raise RequestNotSent(f"cannot connect to {socket_path}: Connection refused")
        return FakeConnection(self.fake.containers[socket_path.name], max_response)


class _HalfClose:
    """What ``get_extra_info("socket")`` gives: ``shutdown()`` ends the client's
    sending side, as ``SHUT_WR`` on a real socket does."""

    def __init__(self, send: trio.testing.MemorySendStream) -> None:
        self._send = send

    def shutdown(self, how: int) -> None:
        self._send.close()


class FakeNetworkStream(httpcore.AsyncNetworkStream):
    """The client's end of an in-memory connection, as httpcore reads and writes it."""

    def __init__(self, stream: trio.StapledStream[Any, Any], fake: FakeDocker) -> None:
        self._stream = stream
        self._fake = fake

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            with trio.fail_after(timeout if timeout is not None else float("inf")):
                return bytes(await self._stream.receive_some(max_bytes))
        except trio.TooSlowError as e:
            raise httpcore.ReadTimeout("timed out") from e
        except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
            raise httpcore.ReadError(str(e)) from e

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        try:
            with trio.fail_after(timeout if timeout is not None else float("inf")):
                await self._stream.send_all(buffer)
        except trio.TooSlowError as e:
            raise httpcore.WriteTimeout("timed out") from e
        except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
            raise httpcore.WriteError(str(e)) from e

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self._stream)

    def get_extra_info(self, info: str) -> Any:
        if info == "socket":
            return _HalfClose(self._stream.send_stream)
        if info == "is_readable":
            return self._fake.server_gone(self._stream)
        return None


class FakeNetworkBackend(httpcore.AsyncNetworkBackend):
    """Every connection the client opens goes to the fake engine."""

    def __init__(self, fake: FakeDocker) -> None:
        self._fake = fake

    async def _open(self) -> httpcore.AsyncNetworkStream:
        try:
            stream = await self._fake.connect()
        except OSError as e:
            raise httpcore.ConnectError(str(e)) from e
        assert isinstance(stream, trio.StapledStream)
        return FakeNetworkStream(stream, self._fake)

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.AsyncNetworkStream:
        return await self._open()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        return await self._open()

    async def sleep(self, seconds: float) -> None:
        await trio.sleep(seconds)
