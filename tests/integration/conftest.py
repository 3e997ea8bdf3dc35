"""Integration fixtures: a real dockerd, the offline test images, and a real
``kiln daemon`` subprocess with a config of the test's own.

Docker missing: the tests fail when ``CI`` is set (CI must never go green by
skipping them) and skip otherwise.
"""

from __future__ import annotations

import json
import os
import resource
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

DOCKER_SOCK = os.environ.get("KILN_TEST_DOCKER_SOCKET", "/var/run/docker.sock")
BUSYBOX = "kiln-test/busybox:latest"
PYTHON = "kiln-test/python:latest"
REPO = Path(__file__).resolve().parents[2]


def docker_api() -> httpx.Client:
    return httpx.Client(
        transport=httpx.HTTPTransport(uds=DOCKER_SOCK), base_url="http://docker/v1.41", timeout=30
    )


def _missing(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} — integration tests must not be skipped in CI")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def docker() -> Iterator[httpx.Client]:
    try:
        client = docker_api()
        client.get("/_ping").raise_for_status()
    except (httpx.HTTPError, OSError) as e:
        _missing(f"Docker is not reachable at {DOCKER_SOCK}: {e} (run scripts/setup.sh)")
    for image in (BUSYBOX, PYTHON):
        if client.get(f"/images/{image}/json").status_code != 200:
            _missing(f"test image {image} is missing: run tests/images/build.sh")
    yield client
    client.close()


def kiln_containers(docker: httpx.Client, daemon_id: str) -> list[dict[str, Any]]:
    filters = json.dumps({"label": [f"kiln.daemon={daemon_id}"]})
    response = docker.get("/containers/json", params={"all": "1", "filters": filters})
    response.raise_for_status()
    return list(response.json())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def toml_value(v: Any) -> str:
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    return json.dumps(v)


def write_config(path: Path, sections: dict[str, dict[str, Any]]) -> None:
    lines: list[str] = []
    for section, table in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in table.items()]
        lines.append("")
    path.write_text("\n".join(lines))


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    url: str
    daemon_id: str
    config_path: Path = Path()
    socket: str = ""
    expected_exit: int = 0
    log_lines: list[str] = field(default_factory=list)
    log_changed: threading.Condition = field(default_factory=threading.Condition)

    def wait_log(self, text: str, timeout: float = 30) -> bool:
        """Wait (woken by each new log line) until a line containing `text` appears."""
        with self.log_changed:
            return self.log_changed.wait_for(
                lambda: any(text in line for line in self.log_lines), timeout
            )

    def control(self) -> httpx.Client:
        return httpx.Client(
            transport=httpx.HTTPTransport(uds=self.socket), base_url="http://kiln", timeout=60
        )

    def cli(self, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        """Run the `kiln` CLI against this daemon's control socket."""
        return subprocess.run(
            [sys.executable, "-m", "kiln.cli", *args],
            input=stdin,
            capture_output=True,
            env={**os.environ, "KILN_SOCKET": self.socket},
            timeout=120,
            check=False,
        )

    def invoke(self, name: str, body: bytes = b"", **kw: Any) -> httpx.Response:
        return httpx.post(f"{self.url}/invoke/{name}", content=body, timeout=120, **kw)

    def log(self) -> str:
        return "\n".join(self.log_lines)

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(timeout)


def _limit_nofile(n: int) -> None:
    """In the daemon's process before exec: its open-files limit (``ulimit -n``)."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))


@pytest.fixture
def start_daemon(docker: httpx.Client, tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """Start ``kiln daemon`` with the given functions (and extra config sections);
    ``nofile`` sets its open-files limit."""
    daemons: list[Daemon] = []
    short_dir = tempfile.mkdtemp(prefix="kiln-")

    def start(
        functions: dict[str, dict[str, Any]],
        *,
        daemon_id: str | None = None,
        expect_ready: bool = True,
        env: dict[str, str] | None = None,
        nofile: int | None = None,
        **sections: dict[str, Any],
    ) -> Daemon:
        daemon_id = daemon_id or "t" + secrets.token_hex(4)
        port = free_port()
        config: dict[str, dict[str, Any]] = {
            "daemon": {
                "listen": f"127.0.0.1:{port}",
                "id": daemon_id,
                "run_dir": str(tmp_path / f"{daemon_id}-run"),
                "state_dir": str(tmp_path / f"{daemon_id}-state"),
                "control_socket": f"{short_dir}/{daemon_id}.sock",  # AF_UNIX: 108 bytes max
                **sections.pop("daemon", {}),
            },
            "docker": {"socket": DOCKER_SOCK, **sections.pop("docker", {})},
        }
        for name, table in sections.items():
            config[name] = table
        for name, fn in functions.items():
            config[f"functions.{name}"] = fn
        path = tmp_path / f"{daemon_id}.toml"
        write_config(path, config)
        proc = subprocess.Popen(
            [sys.executable, "-m", "kiln.cli", "daemon", "--config", str(path)],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            cwd=REPO,
            env={**os.environ, **(env or {})},
            preexec_fn=None if nofile is None else partial(_limit_nofile, nofile),
        )
        daemon = Daemon(
            proc,
            f"http://127.0.0.1:{port}",
            daemon_id,
            config_path=path,
            socket=str(config["daemon"]["control_socket"]),
        )
        daemons.append(daemon)
        ready = threading.Event()

        def read_log() -> None:
            assert proc.stderr is not None
            for raw in proc.stderr:
                line = raw.decode("utf-8", "replace").rstrip()
                with daemon.log_changed:
                    daemon.log_lines.append(line)
                    daemon.log_changed.notify_all()
                if "invoke API listening on" in line:
                    ready.set()
            ready.set()  # the process ended: stop waiting

        threading.Thread(target=read_log, daemon=True).start()
        if not expect_ready:
            return daemon
        if not ready.wait(30) or proc.poll() is not None:
            pytest.fail(f"kiln daemon did not start:\n{daemon.log()}")
        return daemon

    yield start
    try:
        codes = [daemon.stop() for daemon in daemons]  # every one, before any assertion
        for daemon, code in zip(daemons, codes, strict=True):
            assert code == daemon.expected_exit, f"daemon exited {code}:\n{daemon.log()}"
            left = kiln_containers(docker, daemon.daemon_id)
            assert left == [], f"containers left behind by daemon {daemon.daemon_id}: {left}"
    finally:
        unmount_listener_dirs(tmp_path)


def unmount_listener_dirs(under: Path) -> None:
    """A daemon SIGKILLed by a test (and not restarted) leaves the tmpfs it mounted
    for listener dirs; a clean stop unmounts it itself."""
    from kiln.hot.iofs import OWN_SOURCE, parse_mountinfo

    mounts = parse_mountinfo(Path("/proc/self/mountinfo").read_text())
    for m in mounts:
        if m.source == OWN_SOURCE and m.mount_point.startswith(f"{under}/"):
            subprocess.run(["umount", "--lazy", m.mount_point], check=False, timeout=30)


def docker_events(
    docker: httpx.Client, daemon_id: str, since: float, until: float
) -> list[dict[str, Any]]:
    """Container events of one daemon's containers between two wall-clock times."""
    filters = json.dumps({"label": [f"kiln.daemon={daemon_id}"], "type": ["container"]})
    response = docker.get(
        "/events", params={"since": f"{since:.3f}", "until": f"{until:.3f}", "filters": filters}
    )
    response.raise_for_status()
    return [json.loads(line) for line in response.text.splitlines() if line.strip()]
