"""Async-call benchmark: N calls to a hot FDK echo, accepted into the durable
queue (SQLite, then PostgreSQL), beside the same N calls made synchronously in
the same run.

    python bench/async.py [-n 10000] [--clients 16] [--stores sqlite,postgres]

Prints, per store: accepts/s (until each 202) and p50/p99 accept latency;
completions/s (first accept to last finish, from the stored timings); and the
p50 of synchronous calls made while the async backlog drains, beside the sync
p50 with no backlog. PostgreSQL is a throwaway server (tests/pgserver.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from typing import Any

import trio

from _common import PYTHON, REPO, KeepAliveClient, kiln_daemon, percentile

sys.path.insert(0, str(REPO))
from tests.pgserver import PgServer, pg_bindir

BODY = b"hello kiln " * 10
ASYNC = [("Kiln-Invoke-Type", "async")]


def echo_fn() -> dict[str, Any]:
    return {
        "image": PYTHON,
        "cmd": ["python3", "/fn/echo_fdk.py"],
        "format": "http-stream",
        "memory": "64MiB",
        "min_warm": 4,
        "max_containers": 8,
        "idle_timeout": 600,
        "start_timeout": 30,  # a loaded machine may take seconds to start a container
    }


async def run_n(
    host: str, port: int, n: int, clients: int, headers: list[tuple[str, str]]
) -> tuple[float, list[float], list[bytes]]:
    """``n`` POST /invoke/echo over ``clients`` keep-alive connections:
    (seconds, latencies, bodies)."""
    latencies: list[float] = []
    bodies: list[bytes] = []
    todo = iter(range(n))

    async def client() -> None:
        c = KeepAliveClient(host, port)
        try:
            for _ in todo:
                t0 = time.perf_counter()
                status, body = await c.request("/invoke/echo", BODY, headers)
                latencies.append(time.perf_counter() - t0)
                assert status in (200, 202), (status, body[:200])
                bodies.append(body)
        finally:
            await c.aclose()

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(clients):
            nursery.start_soon(client)
    return time.perf_counter() - t0, latencies, bodies


async def sync_p50_for(host: str, port: int, seconds: float) -> float:
    c = KeepAliveClient(host, port)
    lat: list[float] = []
    deadline = time.perf_counter() + seconds
    try:
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            status, _ = await c.request("/invoke/echo", BODY)
            assert status == 200
            lat.append(time.perf_counter() - t0)
    finally:
        await c.aclose()
    return percentile(lat, 50)


async def wait_all(host: str, port: int, ids: list[str]) -> list[dict[str, Any]]:
    c = KeepAliveClient(host, port)
    out = []
    try:
        for call_id in ids:
            while True:
                _, body = await c.request(f"/calls/{call_id}?wait=60", b"", method="GET")
                rec = json.loads(body)
                if rec["state"] in ("succeeded", "failed", "cancelled"):
                    break
            assert rec["state"] == "succeeded", rec
            out.append(rec)
    finally:
        await c.aclose()
    return out


async def measure(url: str, n: int, clients: int) -> dict[str, float]:
    host, port_text = url.removeprefix("http://").split(":")
    port = int(port_text)
    r: dict[str, float] = {}
    await run_n(host, port, 200, clients, [])  # warm-up: containers up, code paths hot
    secs, lat, _ = await run_n(host, port, n, clients, [])
    r["sync_per_s"] = n / secs
    r["sync_p50"] = percentile(lat, 50) * 1000
    r["idle_sync_p50"] = await sync_p50_for(host, port, 2.0) * 1000
    secs, lat, bodies = await run_n(host, port, n, clients, ASYNC)
    r["accept_per_s"] = n / secs
    r["accept_p50"] = percentile(lat, 50) * 1000
    r["accept_p99"] = percentile(lat, 99) * 1000
    # sync calls while the backlog drains (1 client, 2 s)
    r["busy_sync_p50"] = await sync_p50_for(host, port, 2.0) * 1000
    ids = [json.loads(b)["id"] for b in bodies]
    records = await wait_all(host, port, ids)
    first = min(x["created"] for x in records)
    last = max(x["finished"] for x in records)
    r["complete_per_s"] = n / (last - first)
    return r


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=10_000)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--stores", default="sqlite,postgres")
    args = ap.parse_args()
    results: dict[str, dict[str, float]] = {}
    for store in args.stores.split(","):
        with tempfile.TemporaryDirectory(prefix="kiln-bench-") as tmp:
            pg: PgServer | None = None
            store_value = "sqlite"
            if store == "postgres":
                bindir = pg_bindir()
                if bindir is None:
                    raise SystemExit("PostgreSQL server binaries not found")
                pg = PgServer(bindir)
                pg.start()
                store_value = pg.create_database()
            try:
                daemon = {
                    "state_dir": f"{tmp}/state",
                    "run_dir": f"{tmp}/run",
                    "control_socket": f"{tmp}/control.sock",
                }
                async_section: dict[str, Any] = {"async": {"store": store_value}}
                with kiln_daemon({"echo": echo_fn()}, daemon=daemon, **async_section) as (
                    url,
                    _proc,
                    _id,
                ):
                    results[store] = trio.run(measure, url, args.n, args.clients)
            finally:
                if pg is not None:
                    pg.stop()
    print(f"{args.n} calls to a hot FDK echo ({len(BODY)} B body), {args.clients} clients")
    print(
        f"{'store':10}{'sync/s':>9}{'accept/s':>10}{'acc p50':>9}{'acc p99':>9}"
        f"{'done/s':>9}{'sync p50':>10}{'busy p50':>10}"
    )
    for store, r in results.items():
        print(
            f"{store:10}{r['sync_per_s']:9.0f}{r['accept_per_s']:10.0f}{r['accept_p50']:9.2f}"
            f"{r['accept_p99']:9.2f}{r['complete_per_s']:9.0f}{r['idle_sync_p50']:10.2f}"
            f"{r['busy_sync_p50']:10.2f}"
        )
    print(
        "sync/s: the same calls made synchronously (baseline); accept/s: until each 202;"
        " done/s: first accept to last finish; sync p50 (ms) idle vs while the backlog drains"
    )


if __name__ == "__main__":
    main()
