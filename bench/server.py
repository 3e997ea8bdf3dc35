"""HTTP server benchmark: a trivial ASGI app (echoes the request body) served by
(a) hypercorn's Trio worker and (b) kiln.http.serve_asgi.

    python bench/server.py [--seconds 3] [--clients 64]

Each server runs in its own process; the clients (64 concurrent keep-alive
``KeepAliveClient`` loops, one Trio process) run here. Prints calls/s for each,
the server process's CPU time per call, and the serve_asgi/hypercorn ratios.
The client process is itself Python + h11, so on a small box it can be the
bottleneck: the CPU-per-call figure is the one that does not depend on it.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import subprocess
import sys
import time
from functools import partial

import psutil
import trio

from _common import KeepAliveClient, free_port
from kiln.http.asgi import Receive, Scope, Send, lifespan

BODY = b"hello kiln " * 10


async def echo_app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
        return
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    body = b"".join(chunks)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/octet-stream"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def serve_hypercorn(port: int) -> None:
    from hypercorn.config import Config
    from hypercorn.trio import serve

    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("bench.http")
    config.keep_alive_timeout = 75.0
    config.include_server_header = False
    await serve(echo_app, config)  # type: ignore[arg-type]


async def serve_kiln(port: int) -> None:
    from kiln.http import open_listeners, serve_asgi

    listeners = await open_listeners(f"127.0.0.1:{port}")
    await serve_asgi(echo_app, listeners, shutdown=trio.Event(), grace=1.0)


async def measure(port: int, clients: int, seconds: float) -> int:
    """Calls done by `clients` keep-alive loops in `seconds` (after a short warm-up)."""
    conns = [KeepAliveClient("127.0.0.1", port) for _ in range(clients)]
    for c in conns:
        status, body = await c.request("/echo", BODY)  # connect, one by one
        assert status == 200 and body == BODY, (status, body)
    done = 0
    counting = False
    stop = False

    async def loop(c: KeepAliveClient) -> None:
        nonlocal done
        while not stop:
            status, _ = await c.request("/echo", BODY)
            assert status == 200
            if counting:
                done += 1

    async with trio.open_nursery() as nursery:
        for c in conns:
            nursery.start_soon(loop, c)
        await trio.sleep(0.5)  # warm-up
        counting = True
        await trio.sleep(seconds)
        counting = False
        stop = True
    for c in conns:
        await c.aclose()
    return done


def run_one(kind: str, clients: int, seconds: float) -> tuple[float, float]:
    """(calls/s, server CPU seconds per call) for one server kind."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve", kind, "--port", str(port)])
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                trio.run(_probe, port)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit(f"{kind} server did not start") from None
                time.sleep(0.05)
        ps = psutil.Process(proc.pid)
        cpu0 = sum(ps.cpu_times()[:2])
        t0 = time.monotonic()
        done = trio.run(measure, port, clients, seconds)
        elapsed = time.monotonic() - t0
        cpu = sum(ps.cpu_times()[:2]) - cpu0
        # cpu covers the warm-up too: scale to the counted window
        cpu_per_call = cpu * (seconds / elapsed) / max(done, 1)
        return done / seconds, cpu_per_call
    finally:
        proc.terminate()
        proc.wait(10)


async def _probe(port: int) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--serve", choices=["hypercorn", "kiln"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        server = serve_hypercorn if args.serve == "hypercorn" else serve_kiln
        with contextlib.suppress(KeyboardInterrupt):
            trio.run(partial(server, args.port))
        return
    results: dict[str, tuple[float, float]] = {}
    for kind in ("hypercorn", "kiln"):
        results[kind] = run_one(kind, args.clients, args.seconds)
        rate, cpu = results[kind]
        name = "hypercorn (trio)" if kind == "hypercorn" else "kiln serve_asgi"
        print(
            f"{name:18} {args.clients} keep-alive clients, {args.seconds:g} s: "
            f"{rate:8.0f} calls/s   server CPU {cpu * 1e6:6.0f} µs/call",
            flush=True,
        )
    (h_rate, h_cpu), (k_rate, k_cpu) = results["hypercorn"], results["kiln"]
    print(
        f"serve_asgi / hypercorn: {k_rate / h_rate:.2f}x calls/s, "
        f"{h_cpu / k_cpu:.2f}x less server CPU per call"
    )


if __name__ == "__main__":
    main()
