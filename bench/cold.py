"""Cold-call benchmark: the same stdio echo N times through Kiln, and N times as
raw Docker API create+attach+start+wait+remove from this Python process.

    python bench/cold.py [-n 30]

Prints p50/p90 of each and the Kiln/raw ratio.
"""

from __future__ import annotations

import argparse
import time

import httpx
import trio

from _common import BUSYBOX, kiln_daemon, percentile
from kiln.docker import DockerClient

HARDENED = {
    "Init": True,
    "ReadonlyRootfs": True,
    "Tmpfs": {"/tmp": "rw,size=64m"},
    "Memory": 32 * 1024 * 1024,
    "MemorySwap": 32 * 1024 * 1024,
    "CapDrop": ["ALL"],
    "SecurityOpt": ["no-new-privileges"],
    "NetworkMode": "none",
}


async def raw_once(docker: DockerClient, body: bytes) -> bytes:
    cid = await docker.create_container(
        {
            "Image": BUSYBOX,
            "Cmd": ["cat"],
            "OpenStdin": True,
            "StdinOnce": True,
            "AttachStdin": True,
            "AttachStdout": True,
            "AttachStderr": True,
            "HostConfig": HARDENED,
        }
    )
    try:
        out = bytearray()
        async with docker.attach(cid) as stream:
            await docker.start(cid)
            await stream.send_all(body)
            await stream.send_eof()
            while (frames := await stream.receive()) is not None:
                for f in frames:
                    out += f.data
        await docker.wait(cid)
        return bytes(out)
    finally:
        await docker.remove(cid)


async def raw_series(n: int, body: bytes) -> list[float]:
    times = []
    async with DockerClient() as docker:
        for _ in range(n):
            t0 = time.perf_counter()
            assert await raw_once(docker, body) == body
            times.append(time.perf_counter() - t0)
    return times


def kiln_series(url: str, n: int, body: bytes) -> list[float]:
    times = []
    with httpx.Client(timeout=60) as client:
        for _ in range(n):
            t0 = time.perf_counter()
            r = client.post(f"{url}/invoke/echo", content=body)
            times.append(time.perf_counter() - t0)
            assert r.status_code == 200, r.text
            assert r.content == body
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=30)
    args = parser.parse_args()
    body = b"hello kiln\n" * 10
    fns = {"echo": {"image": BUSYBOX, "cmd": ["cat"], "memory": "32MiB"}}
    trio.run(raw_series, 2, body)  # warm up Docker
    raw = trio.run(raw_series, args.n, body)
    with kiln_daemon(fns) as (url, _proc, _id):
        kiln_series(url, 2, body)
        kiln = kiln_series(url, args.n, body)
    print(f"cold stdio echo, n={args.n} each (ms)")
    print(f"{'':12}{'p50':>8}{'p90':>8}")
    for label, xs in (("raw docker", raw), ("kiln", kiln)):
        print(f"{label:12}{percentile(xs, 50) * 1000:8.1f}{percentile(xs, 90) * 1000:8.1f}")
    print(
        f"ratio kiln/raw: p50 {percentile(kiln, 50) / percentile(raw, 50):.2f}x, "
        f"p90 {percentile(kiln, 90) / percentile(raw, 90):.2f}x"
    )


if __name__ == "__main__":
    main()
