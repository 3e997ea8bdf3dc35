"""The daemon's CPU per hot call, counted in instructions, so that the figure
repeats on a busy machine (latency and calls/s on a shared 2-core host do not).

    python bench/hot_cpu.py [--calls 800] [--clients 8] [--against REV]

The daemon runs under valgrind's callgrind with instrumentation off; after a
warm-up (50 calls per client, every container started) it is switched on for
``--calls`` calls of Kiln's FDK echo from ``--clients`` keep-alive clients, then
the count is dumped. Printed: user-space instructions per call (the daemon's
Python and what it calls; the kernel's work for its syscalls is not counted),
for Kiln as configured by default and with ``[logs] call_frames = false``; with
``--against REV``, also for that revision of Kiln (checked out with
``git worktree`` into a temporary directory, run with this checkout's venv and
images), all in one run. Figures repeat to about 0.1 %.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import trio

from _common import REPO, KeepAliveClient, hot_echo, kiln_daemon

BODY = b"hello kiln " * 10
FNS = {"echo": hot_echo()}


async def drive(host: str, port: int, clients: int, calls: int) -> None:
    """``calls`` calls from ``clients`` keep-alive clients (each does calls // clients)."""
    conns = [KeepAliveClient(host, port) for _ in range(clients)]

    async def run(client: KeepAliveClient, n: int) -> None:
        for _ in range(n):
            status, body = await client.request("/invoke/echo", BODY)
            assert status == 200 and body == BODY, (status, body[:200])

    async with trio.open_nursery() as nursery:
        for client in conns:
            nursery.start_soon(run, client, calls // clients)


def callgrind(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True)


def total_instructions(out: Path) -> int:
    """The ``totals:`` (or ``summary:``) line of a callgrind dump."""
    for line in out.read_text().splitlines():
        if line.startswith(("totals:", "summary:")):
            return int(line.split()[1])
    raise SystemExit(f"no totals in {out}")


def measure(
    calls: int, clients: int, logs: dict[str, Any], daemon_dir: Path | None = None
) -> float:
    with tempfile.TemporaryDirectory(prefix="kiln-bench-cg-") as tmp:
        out = Path(tmp) / "callgrind.out"
        prefix = [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={out}",
        ]
        sections: dict[str, dict[str, Any]] = {"logs": logs} if logs else {}
        with kiln_daemon(
            FNS, prefix=prefix, daemon_dir=daemon_dir, start_timeout=300, **sections
        ) as (url, proc, _id):
            host, port = url.removeprefix("http://").split(":")
            trio.run(drive, host, int(port), clients, 50 * clients)  # warm-up: all containers
            callgrind(proc.pid, "-i", "on")
            trio.run(drive, host, int(port), clients, calls)
            callgrind(proc.pid, "-d")
            callgrind(proc.pid, "-i", "off")
        (dump,) = [p for p in Path(tmp).iterdir() if p.name.startswith("callgrind.out.")]
        done = calls // clients * clients
        return total_instructions(dump) / done


@contextmanager
def checkout(rev: str) -> Iterator[Path]:
    """``rev`` of this repository in a temporary worktree; yields its ``daemon/``."""
    with tempfile.TemporaryDirectory(prefix="kiln-bench-rev-") as tmp:
        where = Path(tmp) / "kiln"
        git = ["git", "-C", str(REPO)]
        subprocess.run([*git, "worktree", "add", "--detach", str(where), rev], check=True)
        try:
            yield where / "daemon"
        finally:
            subprocess.run([*git, "worktree", "remove", "--force", str(where)], check=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=800)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--against", metavar="REV", help="also measure this revision")
    args = parser.parse_args()
    rows: list[tuple[str, float]] = [
        ("kiln", measure(args.calls, args.clients, {})),
        ("no frames", measure(args.calls, args.clients, {"call_frames": False})),
    ]
    if args.against:
        with checkout(args.against) as daemon_dir:
            rows.append((args.against, measure(args.calls, args.clients, {}, daemon_dir)))
    base = rows[0][1]
    print(f"hot FDK echo through Kiln, {args.calls} calls from {args.clients} clients")
    print(f"{'':12}{'instructions/call':>18}{'vs kiln':>9}")
    for label, ir in rows:
        print(f"{label:12}{ir / 1e6:16.3f} M{ir / base:8.2f}x")
    print("(the daemon's user-space instructions, callgrind; warm-up not counted)")


if __name__ == "__main__":
    main()
