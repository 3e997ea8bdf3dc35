"""Herd benchmark: 1000 hot functions defined, 1000 concurrent first calls (one per
function), with a memory limit that fits 50 containers.

    python bench/herd.py [--functions 1000] [--fit 50]

Prints completion times, containers created, peak creates/s seen by Docker
(from Docker's own event stream), 503s, and Kiln's RSS. The baseline printed
beside it is what a runner with no herd control would ask of Docker: one container
create per call, all at once.
"""

from __future__ import annotations

import argparse
import collections
import json
import threading
import time
from urllib.parse import urlparse

import httpx
import psutil
import trio

from _common import PYTHON, KeepAliveClient, kiln_daemon, percentile

MEMORY_MIB = 64


async def fire(host: str, port: int, n: int) -> list[tuple[int, float]]:
    out: list[tuple[int, float]] = []
    t0 = time.perf_counter()

    async def one(i: int) -> None:
        client = KeepAliveClient(host, port)
        try:
            status, _ = await client.request(f"/invoke/f{i}", b"x")
        except OSError:
            status = 0
        out.append((status, time.perf_counter() - t0))
        await client.aclose()

    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(one, i)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--functions", type=int, default=1000)
    parser.add_argument("--fit", type=int, default=50)
    parser.add_argument("--queue-wait", type=float, default=600)
    parser.add_argument("--start-timeout", type=float, default=60)
    args = parser.parse_args()
    fns = {
        f"f{i}": {
            "image": PYTHON,
            "cmd": ["python3", "/fn/echo_fdk.py"],
            "format": "http-stream",
            "memory": f"{MEMORY_MIB}MiB",
            "idle_timeout": 600,
            "start_timeout": args.start_timeout,
        }
        for i in range(args.functions)
    }
    limits = {
        "memory": f"{args.fit * MEMORY_MIB}MiB",
        "queue_max": args.functions + 10,
        "queue_wait": args.queue_wait,
    }
    docker = httpx.Client(
        transport=httpx.HTTPTransport(uds="/var/run/docker.sock"), base_url="http://d/v1.41"
    )
    with kiln_daemon(fns, limits=limits, docker={"create_rate": 20, "create_burst": 20}) as (
        url,
        proc,
        daemon_id,
    ):
        u = urlparse(url)
        # Docker keeps only its last ~256 events: stream them live, from before the burst.
        filters = json.dumps(
            {"label": [f"kiln.daemon={daemon_id}"], "type": ["container"], "event": ["create"]}
        )
        creates: list[dict[str, object]] = []
        attached = threading.Event()

        def watch() -> None:
            with docker.stream(
                "GET", "/events", params={"filters": filters}, timeout=None
            ) as events:
                attached.set()
                for line in events.iter_lines():
                    if line.strip():
                        creates.append(json.loads(line))

        threading.Thread(target=watch, daemon=True).start()
        attached.wait(10)
        results = trio.run(fire, u.hostname or "", u.port or 0, args.functions)
        rss = psutil.Process(proc.pid).memory_info().rss
        metrics = httpx.get(f"{url}/metrics").text
        kiln_creates = sum(
            float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith("kiln_docker_request_seconds_count{")
            and 'operation="create container"' in line
        )
        time.sleep(1)  # the last events reach the watcher
    per_second = collections.Counter(int(int(str(e["timeNano"])) // 1_000_000_000) for e in creates)
    ok = [t for s, t in results if s == 200]
    statuses = collections.Counter(s for s, _ in results)
    print(
        f"herd: {args.functions} functions, {args.functions} concurrent first calls, memory fits {args.fit} containers"
    )
    print(f"  calls: {dict(sorted(statuses.items()))}  (503s: {statuses.get(503, 0)})")
    if ok:
        print(
            f"  completion s: p50 {percentile(ok, 50):.1f}  p90 {percentile(ok, 90):.1f}  last {max(ok):.1f}"
        )
    print(
        f"  containers created: {len(creates)} (Kiln's count: {kiln_creates:.0f})   peak creates/s seen by Docker: {max(per_second.values(), default=0)}"
    )
    print(
        f"  baseline (no herd control, a create per call, all at once): {args.functions} creates at t=0"
    )
    print(f"  kiln RSS after: {rss / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
