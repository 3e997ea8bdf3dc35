"""kiln.docker against aiodocker: the same calls, the same engine, one run.

    python bench/docker.py [-n 40]

Three clients take turns, round after round, so drift in Docker's speed hits all alike:
aiodocker 0.26 under asyncio (the baseline), kiln.docker under asyncio, kiln.docker under
Trio. Each measures ``_ping``; ``inspect`` of a container; a cycle of create + start +
wait + delete of a busybox container; and reading a 10 MB log. Prints p50 and p95 per
call and each kiln.docker p50 as a ratio of aiodocker's.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiodocker
import anyio
import trio

import kiln.docker
from _common import BUSYBOX, percentile

LABELS = {"kiln.bench.docker": "1"}
LOG_BYTES = 10 * 1024 * 1024
OPS = ("ping", "inspect", "cycle", "log 10 MB")
Timings = dict[str, list[float]]


async def _time(samples: list[float], call: Callable[[], Awaitable[Any]]) -> None:
    t0 = time.perf_counter()
    await call()
    samples.append(time.perf_counter() - t0)


async def one_round(docker: Any, ping: Callable[[], Awaitable[Any]], n: int, out: Timings) -> None:
    """The same sequence with either client (their APIs are the same, but for ping)."""
    idle = await docker.containers.create(
        {"Image": BUSYBOX, "Cmd": ["true"], "Labels": LABELS}
    )
    chatty = await docker.containers.create(
        {
            "Image": BUSYBOX,
            "Cmd": ["sh", "-c", f"head -c {LOG_BYTES} /dev/zero | tr '\\0' x"],
            "Labels": LABELS,
        }
    )
    await chatty.start()
    await chatty.wait()
    try:
        for _ in range(n):
            await _time(out["ping"], ping)
            await _time(out["inspect"], idle.show)

            async def cycle() -> None:
                c = await docker.containers.create(
                    {"Image": BUSYBOX, "Cmd": ["true"], "Labels": LABELS}
                )
                await c.start()
                await c.wait()
                await c.delete()

            await _time(out["cycle"], cycle)
        for _ in range(max(1, n // 10)):

            async def log() -> None:
                lines = await chatty.log(stdout=True)
                assert sum(len(x) for x in lines) == LOG_BYTES

            await _time(out["log 10 MB"], log)
    finally:
        await idle.delete(force=True)
        await chatty.delete(force=True)


async def aiodocker_round(n: int, out: Timings) -> None:
    docker = aiodocker.Docker()
    try:

        async def ping() -> None:
            async with docker._query("_ping") as response:
                await response.read()

        await one_round(docker, ping, n, out)
    finally:
        await docker.close()


async def kiln_round(n: int, out: Timings) -> None:
    async with kiln.docker.Docker() as docker:
        await one_round(docker, docker._ping, n, out)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=40, help="calls per client per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    clients = ("aiodocker/asyncio", "kiln.docker/asyncio", "kiln.docker/trio")
    timings: dict[str, Timings] = {c: {op: [] for op in OPS} for c in clients}
    warm: Timings = {op: [] for op in OPS}
    asyncio.run(aiodocker_round(3, warm))
    anyio.run(kiln_round, 3, warm, backend="asyncio")
    trio.run(kiln_round, 3, warm)
    for _ in range(args.rounds):
        asyncio.run(aiodocker_round(args.n, timings[clients[0]]))
        anyio.run(kiln_round, args.n, timings[clients[1]], backend="asyncio")
        trio.run(kiln_round, args.n, timings[clients[2]])

    print(f"{'call':<11}" + "".join(f"{c:>24}" for c in clients) + f"{'ratio p50':>20}")
    for op in OPS:
        row = f"{op:<11}"
        base = percentile(timings[clients[0]][op], 50)
        ratios = []
        for c in clients:
            samples = timings[c][op]
            p50, p95 = percentile(samples, 50), percentile(samples, 95)
            row += f"{p50 * 1000:>11.2f} /{p95 * 1000:>7.2f} ms  "
            if c != clients[0]:
                ratios.append(f"{p50 / base:.2f}")
        print(row + "   " + " / ".join(ratios))
    print("(p50 / p95 per call; ratio = kiln.docker p50 / aiodocker p50, asyncio / trio)")


if __name__ == "__main__":
    main()
