"""Cold-call benchmark: the same stdio echo N times through Kiln, and N times as
raw Docker API create+attach+start+wait+remove from this Python process.

    python bench/cold.py [-n 30]

Prints p50/p90 of each and the Kiln/raw ratio.
"""

from __future__ import annotations

import argparse
import time
from urllib.parse import urlparse

import trio

from _common import BUSYBOX, KeepAliveClient, kiln_daemon, percentile
from kiln.containers.spec import Identity, container_config
from kiln.docker import Docker
from kiln.functions.spec import FunctionSpec
from kiln.units import MiB

# The baseline creates exactly the container Kiln creates (same hardened spec).
SPEC = FunctionSpec(name="echo", image=BUSYBOX, cmd=("cat",), memory=32 * MiB)
CONFIG = container_config(SPEC, Identity("bench-raw"), stdio=True)


async def raw_once(docker: Docker, body: bytes) -> bytes:
    container = await docker.containers.create(CONFIG)
    try:
        out = bytearray()
        async with container.attach(stdin=True, stdout=True, stderr=True, tty=False) as stream:
            await container.start()
            await stream.write_in(body)
            await stream.write_eof()
            while (batch := await stream.read_batch()) is not None:
                for m in batch:
                    out += m.data
        await container.wait()
        return bytes(out)
    finally:
        await container.delete(force=True, v=True)


async def interleaved(url: str, n: int, body: bytes) -> tuple[list[float], list[float]]:
    """Alternate raw and Kiln calls, so drift in Docker's speed hits both alike."""
    u = urlparse(url)
    client = KeepAliveClient(u.hostname or "", u.port or 0)
    raw: list[float] = []
    kiln: list[float] = []
    async with Docker(api_version="v1.41") as docker:
        for i in range(n + 2):
            t0 = time.perf_counter()
            assert await raw_once(docker, body) == body
            t1 = time.perf_counter()
            status, out = await client.request("/invoke/echo", body)
            t2 = time.perf_counter()
            assert status == 200
            assert out == body
            if i >= 2:  # the first two warm up
                raw.append(t1 - t0)
                kiln.append(t2 - t1)
    await client.aclose()
    return raw, kiln


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=30)
    args = parser.parse_args()
    body = b"hello kiln\n" * 10
    fns = {"echo": {"image": BUSYBOX, "cmd": ["cat"], "memory": "32MiB"}}
    with kiln_daemon(fns) as (url, _proc, _id):
        raw, kiln = trio.run(interleaved, url, args.n, body)
    print(f"cold stdio echo, n={args.n} each, interleaved (ms)")
    print(f"{'':12}{'p50':>8}{'p90':>8}")
    for label, xs in (("raw docker", raw), ("kiln", kiln)):
        print(f"{label:12}{percentile(xs, 50) * 1000:8.1f}{percentile(xs, 90) * 1000:8.1f}")
    print(
        f"ratio kiln/raw: p50 {percentile(kiln, 50) / percentile(raw, 50):.2f}x, "
        f"p90 {percentile(kiln, 90) / percentile(raw, 90):.2f}x"
    )


if __name__ == "__main__":
    main()
