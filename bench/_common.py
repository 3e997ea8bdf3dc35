"""Shared helpers for the benchmarks: start a kiln daemon subprocess, percentiles."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BUSYBOX = "kiln-test/busybox:latest"
PYTHON = "kiln-test/python:latest"
FN_PYTHON = "kiln-test/fn-python:latest"
FN_NODE = "kiln-test/fn-node:latest"


def hot_echo(max_containers: int = 8, idle_timeout: float = 600) -> dict[str, Any]:
    """Kiln's FDK echo as an ``http-stream`` function (the hot benchmarks' function)."""
    return {
        "image": PYTHON,
        "cmd": ["python3", "/fn/echo_fdk.py"],
        "format": "http-stream",
        "memory": "64MiB",
        "max_containers": max_containers,
        "idle_timeout": idle_timeout,
    }


def percentile(values: Sequence[float], p: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    k = (len(s) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _toml(v: Any) -> str:
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml(x)}" for k, x in v.items()) + " }"
    return json.dumps(v)


@contextmanager
def kiln_daemon(
    functions: dict[str, dict[str, Any]],
    *,
    prefix: Sequence[str] = (),
    daemon_dir: Path | None = None,
    start_timeout: float = 30.0,
    **sections: dict[str, Any],
) -> Iterator[tuple[str, subprocess.Popen[bytes], str]]:
    """Start ``kiln daemon``; yields (base url, process, daemon id). Stops it on exit.

    ``prefix`` goes before the Python command (a profiler); ``daemon_dir`` runs the
    ``kiln`` package found there (another checkout's ``daemon/``) instead of ours."""
    port = free_port()
    daemon_id = "bench" + secrets.token_hex(3)
    cfg: dict[str, dict[str, Any]] = {
        "daemon": {
            "listen": f"127.0.0.1:{port}",
            "id": daemon_id,
            "log_level": "warning",
            **sections.pop("daemon", {}),
        },
        **sections,
    }
    for name, fn in functions.items():
        cfg[f"functions.{name}"] = fn
    with tempfile.TemporaryDirectory() as tmp:
        # Its own control socket, run dir (listener dirs) and state dir: a bench
        # daemon never meets another daemon's, nor leaves state behind.
        for key, where in (
            ("control_socket", "control.sock"),
            ("run_dir", "run"),
            ("state_dir", "state"),
        ):
            cfg["daemon"].setdefault(key, str(Path(tmp) / where))
        path = Path(tmp) / "kiln.toml"
        lines = []
        for section, table in cfg.items():
            lines.append(f"[{section}]")
            lines += [f"{k} = {_toml(v)}" for k, v in table.items()]
        path.write_text("\n".join(lines) + "\n")
        env = {**os.environ}
        if daemon_dir is not None:
            env["PYTHONPATH"] = str(daemon_dir)
        proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "kiln.cli", "daemon", "--config", str(path)],
            stderr=subprocess.PIPE,
            env=env,
        )
        ready = threading.Event()
        log: list[str] = []

        def reader() -> None:
            assert proc.stderr is not None
            for raw in proc.stderr:
                line = raw.decode("utf-8", "replace").rstrip()
                log.append(line)
                if "invoke API listening on" in line:
                    ready.set()
            ready.set()

        # the daemon logs at warning: ask for its listening line explicitly
        threading.Thread(target=reader, daemon=True).start()
        try:
            _wait_port(port, proc, log, start_timeout)
            yield f"http://127.0.0.1:{port}", proc, daemon_id
        finally:
            proc.terminate()
            proc.wait(60)


def _wait_port(
    port: int, proc: subprocess.Popen[bytes], log: list[str], timeout: float = 30.0
) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("kiln daemon exited:\n" + "\n".join(log))
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("kiln daemon did not start:\n" + "\n".join(log))


class KeepAliveClient:
    """A lean HTTP/1.1 keep-alive client (h11 over Trio TCP), so client overhead
    does not dominate latency figures. One request at a time."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.stream: Any = None
        self.conn: Any = None

    async def request(
        self,
        path: str,
        body: bytes,
        headers: Sequence[tuple[str, str]] = (),
        method: str = "POST",
    ) -> tuple[int, bytes]:
        import h11
        import trio

        if self.stream is None:
            self.stream = await trio.open_tcp_stream(self.host, self.port)
            self.conn = h11.Connection(h11.CLIENT)
        conn = self.conn
        data = conn.send(
            h11.Request(
                method=method,
                target=path,
                headers=[("Host", self.host), ("Content-Length", str(len(body))), *headers],
            )
        )
        data += conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
        await self.stream.send_all(data)
        status = 0
        out = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await self.stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                out += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                raise RuntimeError(f"unexpected {event!r}")
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        else:
            await self.stream.aclose()
            self.stream = None
        return status, bytes(out)

    async def aclose(self) -> None:
        if self.stream is not None:
            await self.stream.aclose()
