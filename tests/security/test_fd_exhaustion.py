"""Slow-loris and file-descriptor exhaustion against a live daemon whose open-files
limit the test sets small: hundreds of connections that never finish their
request must not starve the control socket or a normal call, nor flood the log."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import httpx
import pytest

from tests.integration.conftest import PYTHON, Daemon

pytestmark = pytest.mark.docker

NOFILE = 256  # the daemon's `ulimit -n`
ATTACKERS = 3 * NOFILE
FUNCTIONS = {
    "echo": {
        "image": PYTHON,
        "cmd": ["python3", "/fn/echo_fdk.py"],
        "format": "http-stream",
        "memory": "64MiB",
        "min_warm": 1,
    }
}
SLOW = [
    b"",  # connect and say nothing
    b"POST /invoke/echo HTTP/1.1\r\nHost: k",  # half a head
    b"POST /invoke/echo HTTP/1.1\r\nHost: k\r\nContent-Length: 100000\r\n\r\nabc",  # half a body
]


@contextmanager
def slow_clients(host: str, port: int, n: int) -> Iterator[list[socket.socket]]:
    """``n`` connections, each sending the start of a request and then nothing."""
    socks: list[socket.socket] = []
    try:
        for i in range(n):
            sock = socket.create_connection((host, port), timeout=10)
            if SLOW[i % len(SLOW)]:
                sock.sendall(SLOW[i % len(SLOW)])
            socks.append(sock)
        yield socks
    finally:
        for sock in socks:
            sock.close()


def call(kiln: Daemon, body: bytes) -> int:
    return httpx.post(f"{kiln.url}/invoke/echo", content=body, timeout=10).status_code


def timed(fn: Callable[[], int]) -> tuple[int, float]:
    t0 = time.monotonic()
    status = fn()
    return status, time.monotonic() - t0


def test_slow_clients_beyond_the_fd_limit_starve_nothing(
    start_daemon: Callable[..., Daemon],
) -> None:
    kiln = start_daemon(FUNCTIONS, nofile=NOFILE)
    url = urlsplit(kiln.url)
    host, port = str(url.hostname), int(url.port or 80)
    assert kiln.invoke("echo", b"warm").status_code == 200
    with slow_clients(host, port, ATTACKERS), kiln.control() as control:
        status, seconds = timed(lambda: control.get("/status", timeout=10).status_code)
        assert status == 200
        assert seconds < 5
        status, seconds = timed(lambda: call(kiln, b"normal"))
        assert status == 200
        assert seconds < 5
        # a second wave while the first still holds on
        with slow_clients(host, port, ATTACKERS):
            assert control.get("/status", timeout=10).status_code == 200
            assert (
                httpx.post(f"{kiln.url}/invoke/echo", content=b"again", timeout=10).content
                == b"again"
            )
    log = kiln.log()
    assert "Traceback" not in log, log[-5000:]
    assert log.count("accept:") <= 3, log[-5000:]
