"""Kiln's CPU per logged line: a hot FDK function that writes 0, 1 or 100 lines per call.

One keep-alive client calls the function back to back; the daemon's CPU (and
dockerd's, for reference: dockerd is shared, so other load shows up there) is
read from /proc before and after each series. The 0-line series is the
baseline measured in the same run: CPU per line = (CPU per call at N lines −
CPU per call at 0 lines) / N. Series are interleaved over several rounds and
the median taken, so a noisy neighbour hits every series alike. The flood
limit is raised out of the way (every line is kept and forwarded), and the
daemon's log goes to a pipe the bench drains, as journald would.

    python bench/logs.py [--calls 300] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import psutil
import trio

from _common import PYTHON, KeepAliveClient, kiln_daemon

FUNCTION = r"""
import sys
sys.path.insert(0, "/fn")
import fdk
LINE = "a line a function might log, with a few words and a number: %d"
def handle(body, headers):
    if body.startswith(b"sync:"):
        print(body.decode(), flush=True)
        return b"ok"
    n = int(body or b"0")
    out = sys.stdout
    for i in range(n):
        out.write(LINE % i + "\n")
    out.flush()
    return b"ok"
fdk.serve(handle)
"""

SERIES = (0, 1, 100)


def dockerd() -> psutil.Process | None:
    for p in psutil.process_iter(["name"]):
        if p.info["name"] == "dockerd":
            return p
    return None


def cpu(p: psutil.Process | None) -> float:
    if p is None:
        return float("nan")
    t = p.cpu_times()
    return float(t.user + t.system)


async def series(url: str, lines: int, calls: int) -> float:
    host, port = url.removeprefix("http://").split(":")
    client = KeepAliveClient(host, int(port))
    body = str(lines).encode()
    t0 = time.perf_counter()
    for _ in range(calls):
        status, _ = await client.request("/invoke/logger", body)
        assert status == 200, status
    await client.aclose()
    return time.perf_counter() - t0


def settle(url: str, control: httpx.Client, n: int) -> None:
    """Return once Kiln has taken in every line written so far: a marker line is
    written last, and we follow the log until it shows up (no fixed sleep)."""
    marker = f"sync:{n}"
    with control.stream(
        "GET", "/functions/logger/logs", params={"follow": "1", "tail": "0"}
    ) as response:
        trio.run(series_body, url, marker.encode())
        for line in response.iter_lines():
            if line.endswith(marker):
                return


async def series_body(url: str, body: bytes) -> None:
    host, port = url.removeprefix("http://").split(":")
    client = KeepAliveClient(host, int(port))
    status, _ = await client.request("/invoke/logger", body)
    assert status == 200, status
    await client.aclose()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    fn = {
        "image": PYTHON,
        "cmd": ["python3", "-c", FUNCTION],
        "format": "http-stream",
        "memory": "64MiB",
        "min_warm": 1,
        "max_containers": 1,
    }
    with tempfile.TemporaryDirectory(prefix="kiln-bench-") as tmp:
        daemon_cfg = {
            "log_level": "info",
            "control_socket": str(Path(tmp) / "control.sock"),
            "state_dir": str(Path(tmp) / "state"),
            "run_dir": str(Path(tmp) / "run"),
        }
        logs_cfg = {
            "rate": 10_000_000,
            "burst": 10_000_000,
            "lines_per_function": 1_000_000,
            "bytes_per_function": "1GiB",
        }
        with kiln_daemon({"logger": fn}, daemon=daemon_cfg, logs=logs_cfg) as (url, proc, _):
            kiln = psutil.Process(proc.pid)
            docker = dockerd()
            control = httpx.Client(
                transport=httpx.HTTPTransport(uds=daemon_cfg["control_socket"]),
                base_url="http://kiln",
                timeout=60,
            )
            trio.run(series, url, 0, 50)  # warm up (and wait for min_warm)
            settle(url, control, 0)
            samples: dict[int, list[tuple[float, float, float]]] = {n: [] for n in SERIES}
            step = 0
            for _ in range(args.rounds):
                for lines in SERIES:
                    k0, d0 = cpu(kiln), cpu(docker)
                    wall = trio.run(series, url, lines, args.calls)
                    step += 1
                    settle(url, control, step)  # lines still in flight count in this series
                    k1, d1 = cpu(kiln), cpu(docker)
                    samples[lines].append(
                        (args.calls / wall, (k1 - k0) / args.calls, (d1 - d0) / args.calls)
                    )
            text = control.get("/functions/logger/logs").text
            kept = sum(1 for line in text.splitlines() if "stdout: a line" in line)
            control.close()
    expected: int = sum(SERIES) * args.calls * args.rounds
    rows = [
        (n, *(statistics.median(x[i] for x in samples[n]) for i in range(3))) for n in SERIES
    ]
    base_k, base_d = rows[0][2], rows[0][3]
    print(
        f"{args.calls} calls per series, {args.rounds} interleaved rounds (medians), "
        "one keep-alive client, hot FDK function"
    )
    print(f"lines kept by Kiln: {kept} of {expected} written")
    print(
        f"{'lines/call':>10} {'calls/s':>8} {'kiln µs/call':>13} {'dockerd µs/call':>16} "
        f"{'kiln µs/line':>13} {'dockerd µs/line':>16}"
    )
    for n_lines, rate, k, d in rows:
        lines = int(n_lines)
        per_k = f"{(k - base_k) / lines * 1e6:13.1f}" if lines else f"{'(baseline)':>13}"
        per_d = f"{(d - base_d) / lines * 1e6:16.1f}" if lines else f"{'(baseline)':>16}"
        print(f"{lines:>10} {rate:8.0f} {k * 1e6:13.0f} {d * 1e6:16.0f} {per_k} {per_d}")


if __name__ == "__main__":
    main()
