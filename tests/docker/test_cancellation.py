"""Short calls cancelled at random by outer scopes under pool contention leave the pool
working (the httpcore pool-jam guard), under asyncio and Trio; a client timeout is the
builtin ``TimeoutError``. A slow fake engine, in a thread of its own on a unix socket of
the test's own, answers every request with 200 "OK" after ``delay`` seconds."""

from __future__ import annotations

import random
import socketserver
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import h11
import pytest

from kiln.docker import Docker

pytestmark = pytest.mark.anyio


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(self.request.recv(65536))
                    continue
                if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                    return
                if isinstance(event, h11.EndOfMessage):
                    time.sleep(self.server.delay())
                    self.request.sendall(
                        conn.send(h11.Response(status_code=200, headers=[("Content-Length", "2")]))
                        + conn.send(h11.Data(data=b"OK"))
                        + conn.send(h11.EndOfMessage())
                    )
                    conn.start_next_cycle()
        except (OSError, h11.ProtocolError):
            pass


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, path: str, delay: float) -> None:
        super().__init__(path, _Handler)
        self._rng = random.Random(1093)
        self._delay = delay

    def delay(self) -> float:
        return self._rng.uniform(0, self._delay)


@contextmanager
def fake_engine(tmp_path: Path, delay: float) -> Iterator[str]:
    path = str(tmp_path / "docker.sock")
    server = _Server(path, delay)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"unix://{path}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


async def test_pool_survives_random_outer_cancellation_under_contention(tmp_path: Path) -> None:
    rng = random.Random(1093)
    with fake_engine(tmp_path, 0.01) as url:
        async with Docker(url, api_version="v1.41", timeout=5, pool_size=4) as docker:

            async def caller(delay: float) -> None:
                with anyio.move_on_after(delay):  # an *outer* scope cancels mid-request
                    await docker._ping()

            for _round in range(5):
                async with anyio.create_task_group() as callers:
                    for _ in range(200):
                        callers.start_soon(caller, rng.uniform(0, 0.02))
            with anyio.fail_after(10):  # every one of these must succeed, none PoolTimeout
                async with anyio.create_task_group() as checks:
                    for _ in range(50):
                        checks.start_soon(docker._ping)


async def ping_many(docker: Docker, n: int) -> None:
    for _ in range(n):
        await docker._ping()


async def test_client_timeout_is_the_builtin_timeout_error(tmp_path: Path) -> None:
    with fake_engine(tmp_path, 5.0) as url:
        async with Docker(url, api_version="v1.41", timeout=0.2) as docker:
            t0 = anyio.current_time()
            with pytest.raises(TimeoutError):
                await ping_many(docker, 20)  # the fake's delays are random: one is over 0.2 s
            assert anyio.current_time() - t0 < 10
