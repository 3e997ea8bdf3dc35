"""Admission benchmark: 10 000 waiters queued on a small memory pool.

    python bench/admission.py [-n 10000]

Measures (1) the process CPU time burnt while all waiters sit queued for 5 s —
should be ≈ 0, since waiting is an event, not a sleep loop — and (2) the time
to drain them all once memory frees. The baseline, in the same run, is a
busy-wait: each waiter re-checks memory in a 1 µs sleep loop (here
bounded to the same 5 s and a smaller crowd, or it would never finish).
"""

from __future__ import annotations

import argparse
import time

import psutil
import trio
import trio.testing

from kiln.admission.memory import MemoryBudget
from kiln.units import MiB


async def kiln_pool(n: int, hold: float) -> tuple[float, float]:
    pool = MemoryBudget(128 * MiB, queue_max=n + 1, queue_wait=3600)
    proc = psutil.Process()
    queued = trio.Event()
    release = trio.Event()
    done = 0

    async def holder() -> None:
        async with pool.reserve(128 * MiB, owner="holder"):
            await release.wait()

    async def waiter() -> None:
        nonlocal done
        async with pool.reserve(1 * MiB, owner="w"):
            pass
        done += 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(holder)
        await trio.sleep(0.01)
        for _ in range(n):
            nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert pool.statistics().waiting == n
        queued.set()
        cpu0 = proc.cpu_times()
        await trio.sleep(hold)
        cpu1 = proc.cpu_times()
        t0 = time.perf_counter()
        release.set()
    drain = time.perf_counter() - t0
    assert done == n
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    return cpu, drain


async def spinning_pool(n: int, hold: float) -> float:
    """The baseline: a busy-wait, `for !enoughMemory() { time.Sleep(time.Microsecond) }`."""
    free = 0
    proc = psutil.Process()
    stop = trio.Event()

    async def waiter() -> None:
        while free < 1 and not stop.is_set():  # noqa: ASYNC110  (the anti-pattern, on purpose)
            await trio.sleep(1e-6)

    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(waiter)
        cpu0 = proc.cpu_times()
        await trio.sleep(hold)
        cpu1 = proc.cpu_times()
        stop.set()
    return (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=10_000)
    parser.add_argument("--hold", type=float, default=5.0)
    args = parser.parse_args()
    cpu, drain = trio.run(kiln_pool, args.n, args.hold)
    spin_n = min(args.n, 1000)
    spin_cpu = trio.run(spinning_pool, spin_n, args.hold)
    print(f"admission: {args.n} waiters queued on a full pool for {args.hold:g} s")
    print(f"  kiln     CPU while queued: {cpu:.3f} s ({cpu / args.hold * 100:.1f}% of a core)")
    print(
        f"  1us-spin CPU while queued: {spin_cpu:.3f} s ({spin_cpu / args.hold * 100:.1f}% of a core)"
        f"  [baseline: {spin_n} spinning waiters]"
    )
    print(
        f"  kiln drain of {args.n} waiters once memory freed: {drain * 1000:.1f} ms "
        f"({drain / args.n * 1e6:.1f} us per waiter)"
    )


if __name__ == "__main__":
    main()
