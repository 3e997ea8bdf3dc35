"""Idle CPU after bursts — the deploy tool's regression (an unstoppable ticker whose
idle CPU crept up for days), measured properly.

    python bench/idle_cpu.py [--bursts 5] [--calls 1000] [--idle 30]

Starts the daemon with a hot echo function, then `bursts` times: sends `calls`
calls (16 concurrent clients), then measures the daemon's CPU time over `idle`
seconds of idleness (psutil). The per-burst idle CPU % must not trend upward
and should be ≈ 0. The baseline in the same run is the daemon's CPU during the
burst itself.
"""

from __future__ import annotations

import argparse
import time
from urllib.parse import urlparse

import psutil
import trio

from _common import KeepAliveClient, hot_echo, kiln_daemon


async def burst(host: str, port: int, calls: int, clients: int = 16) -> None:
    left = calls

    async def loop() -> None:
        nonlocal left
        client = KeepAliveClient(host, port)
        while left > 0:
            left -= 1
            status, _ = await client.request("/invoke/echo", b"ping")
            assert status == 200, status
        await client.aclose()

    async with trio.open_nursery() as nursery:
        for _ in range(clients):
            nursery.start_soon(loop)


def cpu_seconds(p: psutil.Process) -> float:
    t = p.cpu_times()
    return t.user + t.system


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bursts", type=int, default=5)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--idle", type=float, default=30.0)
    args = parser.parse_args()
    fns = {"echo": hot_echo(max_containers=4, idle_timeout=3600)}
    with kiln_daemon(fns) as (url, proc, _id):
        u = urlparse(url)
        daemon = psutil.Process(proc.pid)
        print(
            f"idle CPU of the kiln daemon after bursts of {args.calls} calls ({args.idle:g} s idle each)"
        )
        print(
            f"{'burst':>5}{'burst s':>9}{'burst CPU%':>12}{'idle CPU s':>12}{'idle CPU%':>11}{'ctx sw':>8}"
        )
        for i in range(1, args.bursts + 1):
            c0, t0 = cpu_seconds(daemon), time.perf_counter()
            trio.run(burst, u.hostname or "", u.port or 0, args.calls)
            c1, t1 = cpu_seconds(daemon), time.perf_counter()
            sw0 = daemon.num_ctx_switches()
            time.sleep(args.idle)
            c2 = cpu_seconds(daemon)
            sw1 = daemon.num_ctx_switches()
            switches = (sw1.voluntary + sw1.involuntary) - (sw0.voluntary + sw0.involuntary)
            print(
                f"{i:5d}{t1 - t0:9.2f}{(c1 - c0) / (t1 - t0) * 100:11.1f}%"
                f"{c2 - c1:12.3f}{(c2 - c1) / args.idle * 100:10.2f}%{switches:8d}"
            )


if __name__ == "__main__":
    main()
