"""Hot-call benchmark: the same FDK echo function called (a) directly over its
container's Unix socket and (b) through Kiln's POST /invoke, in one run.

    python bench/hot.py [--seconds 5]

Prints p50/p99 latency at 1 client and calls/s at 1, 8 and 64 concurrent
clients, with the Kiln/direct ratio, and Kiln's CPU per call
(``bench/hot_cpu.py`` counts it in instructions, which repeat on a busy host). Then the same for the Fn project's own
FDKs (``kiln-test/fn-python``: fdk-python, ``kiln-test/fn-node``: the Node FDK,
each running Fn's hello-world function) beside Kiln's FDK: p50/p99 at one
client through Kiln and direct to a container of the same image, and Kiln's
CPU per call from its own process counters.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlparse

import psutil
import trio

from _common import FN_NODE, FN_PYTHON, PYTHON, KeepAliveClient, hot_echo, kiln_daemon, percentile
from kiln.docker import Docker
from kiln.fncontract import call_request_headers, container_env
from kiln.hot.httpstream import FnConnection
from kiln.hot.readiness import wait_for_listener

BODY = b"hello kiln " * 10
Call = Callable[[], Awaitable[None]]


async def run_clients(
    make_call: Callable[[], Awaitable[Call]], clients: int, seconds: float
) -> tuple[int, list[float]]:
    """`clients` concurrent loops for `seconds`; returns (calls done, latencies)."""
    latencies: list[float] = []
    done = 0

    calls = [await make_call() for _ in range(clients)]  # connect first, one by one
    deadline = trio.current_time() + seconds

    async def loop(call: Call) -> None:
        nonlocal done
        while trio.current_time() < deadline:
            t0 = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - t0)
            done += 1

    async with trio.open_nursery() as nursery:
        for call in calls:
            nursery.start_soon(loop, call)
    return done, latencies


#: The FDK table's functions: (image, cmd, body). Each one's answer is 200.
FDKS: dict[str, tuple[str, list[str], bytes]] = {
    "kiln fdk": (PYTHON, ["python3", "/fn/echo_fdk.py"], BODY),
    "fdk-python": (FN_PYTHON, ["handler"], b'{"name": "Kiln"}'),
    "node fdk": (FN_NODE, ["func.js"], b'{"name": "Kiln"}'),
}


async def direct_container(
    tmp: Path, image: str = PYTHON, cmd: list[str] | None = None
) -> tuple[Docker, str, Path]:
    docker = Docker(api_version="v1.41")
    iofs = tmp / "iofs"
    iofs.mkdir()
    iofs.chmod(0o777)
    container = await docker.containers.create(
        {
            "Image": image,
            "Cmd": cmd or ["python3", "/fn/echo_fdk.py"],
            "Env": [f"{k}={v}" for k, v in container_env("echo", 64 << 20, {}).items()],
            "HostConfig": {
                "Binds": [f"{iofs}:/tmp/iofs"],
                "Init": True,
                "ReadonlyRootfs": True,
                "Tmpfs": {"/tmp": "rw"},
                "Memory": 128 << 20,
                "MemorySwap": 128 << 20,
                "CapDrop": ["ALL"],
                "NetworkMode": "none",
            },
        }
    )
    cid = container.id
    await container.start()
    with trio.fail_after(10):
        sock = await wait_for_listener(iofs)
    return docker, cid, sock


async def measure(seconds: float) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmpdir:
        docker, cid, sock = await direct_container(Path(tmpdir))
        try:

            async def make_direct() -> Call:
                conn = await FnConnection.open(sock)

                async def call() -> None:
                    r = await conn.call(call_request_headers("bench", time.time() + 30, []), BODY)
                    assert r.status == 200 and r.body == BODY

                return call

            results["direct"] = await series(make_direct, seconds)
        finally:
            await docker.containers.container(cid).delete(force=True)
            await docker.close()
    return results


async def series(make_call: Callable[[], Awaitable[Call]], seconds: float) -> dict[str, float]:
    out: dict[str, float] = {}
    await run_clients(make_call, 1, 0.5)  # warm-up
    calls = 0
    n, lat = await run_clients(make_call, 1, seconds)
    calls += n
    out["p50"] = percentile(lat, 50) * 1000
    out["p99"] = percentile(lat, 99) * 1000
    out["c1"] = n / seconds
    for c in (8, 64):
        n, _ = await run_clients(make_call, c, seconds)
        calls += n
        out[f"c{c}"] = n / seconds
    out["calls"] = calls
    return out


async def measure_kiln(url: str, seconds: float) -> dict[str, float]:
    u = urlparse(url)
    assert u.hostname is not None and u.port is not None

    async def make_kiln() -> Call:
        client = KeepAliveClient(u.hostname or "", u.port or 0)

        async def call() -> None:
            status, body = await client.request("/invoke/echo", BODY)
            assert status == 200 and body == BODY, (status, body[:200])

        return call

    return await series(make_kiln, seconds)


async def measure_fdk(
    url: str, pid: int, run_dir: Path, daemon_id: str, label: str, seconds: float
) -> dict[str, float]:
    """One FDK: calls straight to the listener of Kiln's own container of it and calls
    through Kiln, alternated one by one so both see the same machine load; Kiln's CPU
    per call over the same window."""
    body = FDKS[label][2]
    u = urlparse(url)
    client = KeepAliveClient(u.hostname or "", u.port or 0)
    path = f"/invoke/{fdk_name(label)}"
    daemon = psutil.Process(pid)
    status, answer = await client.request(path, body)  # starts the container
    assert status == 200, (status, answer[:200])
    pattern = f"iofs/*/kiln-{daemon_id}-{fdk_name(label)}-*/lsnr.sock"
    (sock,) = await trio.to_thread.run_sync(lambda: list(run_dir.glob(pattern)))
    conn = await FnConnection.open(sock)
    direct: list[float] = []
    kiln: list[float] = []

    async def one_each() -> None:
        t0 = time.perf_counter()
        r = await conn.call(call_request_headers("bench", time.time() + 30, []), body)
        t1 = time.perf_counter()
        status, answer = await client.request(path, body)
        t2 = time.perf_counter()
        assert r.status == 200 and status == 200, (r.status, status, answer[:200])
        direct.append(t1 - t0)
        kiln.append(t2 - t1)

    deadline = trio.current_time() + 0.5
    while trio.current_time() < deadline:  # warm-up
        await one_each()
    direct.clear()
    kiln.clear()
    cpu0 = daemon.cpu_times()
    deadline = trio.current_time() + seconds
    while trio.current_time() < deadline:
        await one_each()
    cpu1 = daemon.cpu_times()
    await conn.aclose()
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    return {
        "direct_p50": percentile(direct, 50) * 1000,
        "direct_p99": percentile(direct, 99) * 1000,
        "kiln_p50": percentile(kiln, 50) * 1000,
        "kiln_p99": percentile(kiln, 99) * 1000,
        "cpu_us": cpu / len(kiln) * 1e6,
        "calls": len(kiln),
    }


def fdk_name(label: str) -> str:
    return label.replace(" ", "-")


def fdk_table(seconds: float) -> None:
    """Kiln's FDK, fdk-python and the Node FDK: through Kiln and direct, in one run."""
    fns = {
        fdk_name(label): {
            "image": image,
            "cmd": cmd,
            "format": "http-stream",
            "memory": "128MiB",
            "max_containers": 1,
            "idle_timeout": 600,
        }
        for label, (image, cmd, _body) in FDKS.items()
    }
    results: dict[str, dict[str, float]] = {}
    with (
        tempfile.TemporaryDirectory() as run_dir,
        kiln_daemon(
            fns,
            daemon={
                "run_dir": run_dir,
                "state_dir": f"{run_dir}/state",
                "control_socket": f"{run_dir}/control.sock",
            },
        ) as (url, proc, daemon_id),
    ):
        for label in FDKS:
            results[label] = trio.run(
                measure_fdk, url, proc.pid, Path(run_dir), daemon_id, label, seconds
            )
    print()
    print(
        f"hot calls per FDK, 1 client, {seconds:g} s each, direct and through Kiln "
        "alternated call by call, direct = to the same container's socket "
        "(Fn's hello world; Kiln's FDK: echo)"
    )
    print(
        f"{'':12}{'direct p50':>11}{'p99':>7}{'kiln p50':>10}{'p99':>7}"
        f"{'added p50':>11}{'kiln CPU/call':>15}"
    )
    for label, r in results.items():
        print(
            f"{label:12}{r['direct_p50']:11.2f}{r['direct_p99']:7.2f}{r['kiln_p50']:10.2f}"
            f"{r['kiln_p99']:7.2f}{r['kiln_p50'] - r['direct_p50']:11.2f}{r['cpu_us']:12.0f} µs"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--fdks-only", action="store_true", help="only the per-FDK table")
    args = parser.parse_args()
    if args.fdks_only:
        fdk_table(args.seconds)
        return
    results = trio.run(measure, args.seconds)
    fns = {"echo": hot_echo()}
    with kiln_daemon(fns) as (url, proc, _id):
        daemon = psutil.Process(proc.pid)
        t = daemon.cpu_times()
        results["kiln"] = trio.run(measure_kiln, url, args.seconds)
        t2 = daemon.cpu_times()
        cpu = (t2.user - t.user) + (t2.system - t.system)
        results["kiln"]["cpu_us"] = cpu / results["kiln"]["calls"] * 1e6
    d, k = results["direct"], results["kiln"]
    print(f"hot FDK echo ({len(BODY)} B body), {args.seconds:g} s per figure")
    print(f"{'':10}{'p50 ms':>9}{'p99 ms':>9}{'1 cl/s':>9}{'8 cl/s':>9}{'64 cl/s':>9}  CPU/call")
    for label in ("direct", "kiln"):
        r = results[label]
        cpu_text = f"{r['cpu_us']:7.0f} µs" if "cpu_us" in r else ""
        print(
            f"{label:10}{r['p50']:9.2f}{r['p99']:9.2f}{r['c1']:9.0f}{r['c8']:9.0f}{r['c64']:9.0f}"
            f"  {cpu_text}"
        )
    print(
        f"{'kiln/dir':10}{k['p50'] / d['p50']:8.2f}x{k['p99'] / d['p99']:8.2f}x"
        f"{k['c1'] / d['c1']:8.2f}x{k['c8'] / d['c8']:8.2f}x{k['c64'] / d['c64']:8.2f}x"
    )
    print("(CPU/call: the daemon's own, all phases, warm-ups included)")
    fdk_table(args.seconds)


if __name__ == "__main__":
    main()
