"""Docker faults with a real engine, under load: a private dockerd killed and
restarted, hot containers ``docker kill``-ed, Kiln itself SIGKILLed.

Bounded: each test runs a few seconds of load from three client threads.
"""

from __future__ import annotations

import os
import secrets
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.faults.privatedocker import PrivateDocker, missing_tools
from tests.integration.conftest import BUSYBOX, PYTHON, Daemon, kiln_containers

pytestmark = pytest.mark.docker

HOT = {
    "image": PYTHON,
    "cmd": ["python3", "/fn/echo_fdk.py"],
    "format": "http-stream",
    "memory": "64MiB",
}
ECHO = {"image": BUSYBOX, "cmd": ["cat"], "memory": "16MiB"}


@pytest.fixture(scope="module")
def private_docker() -> Iterator[PrivateDocker]:
    problems = missing_tools()
    if os.geteuid() != 0:
        problems.append("root")
    if problems:
        reason = f"a private dockerd needs {', '.join(problems)}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    pd = PrivateDocker(images=(BUSYBOX, PYTHON))
    try:
        pd.setup()
        yield pd
    finally:
        pd.teardown()


@dataclass
class Result:
    function: str
    at: float
    status: int
    code: str
    body_ok: bool
    message: str = ""


@dataclass
class Load:
    """Client threads calling functions back to back, each call with a unique body."""

    url: str
    functions: tuple[str, ...]
    clients: int = 3
    results: list[Result] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)
    stop: threading.Event = field(default_factory=threading.Event)

    def _client(self, i: int) -> None:
        with httpx.Client(timeout=60) as http:
            n = 0
            while not self.stop.is_set():
                fn = self.functions[(i + n) % len(self.functions)]
                n += 1
                body = secrets.token_hex(8).encode()
                try:
                    r = http.post(f"{self.url}/invoke/{fn}", content=body)
                    error = {} if r.status_code == 200 else r.json()["error"]
                    result = Result(
                        fn,
                        time.monotonic(),
                        r.status_code,
                        error.get("code", ""),
                        r.content == body,
                        error.get("message", ""),
                    )
                except httpx.HTTPError as e:
                    result = Result(fn, time.monotonic(), 0, type(e).__name__, False)
                with self.changed:
                    self.results.append(result)
                    self.changed.notify_all()

    def wait_for(self, done: Callable[[list[Result]], bool], timeout: float = 60) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: done(self.results), timeout), self.summary()

    def summary(self) -> dict[tuple[str, int, str], int]:
        out: dict[tuple[str, int, str], int] = {}
        for r in self.results:
            key = (r.function, r.status, r.code)
            out[key] = out.get(key, 0) + 1
        return out

    def __enter__(self) -> Load:
        self.threads = [
            threading.Thread(target=self._client, args=(i,), daemon=True)
            for i in range(self.clients)
        ]
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(90)


def after(t: float, pred: Callable[[Result], bool], n: int) -> Callable[[list[Result]], bool]:
    return lambda results: sum(1 for r in results if r.at > t and pred(r)) >= n


def test_dockerd_killed_and_restarted_under_load(
    private_docker: PrivateDocker, start_daemon: Callable[..., Daemon]
) -> None:
    pd = private_docker
    kiln = start_daemon(
        {"hot": {**HOT, "min_warm": 2, "max_containers": 4}, "echo": ECHO},
        docker={"socket": pd.socket, "timeout": 5},
    )
    with Load(kiln.url, ("hot", "echo")) as load:
        load.wait_for(after(0, lambda r: r.status == 200, 20))
        pd.kill()
        killed = time.monotonic()
        # Docker is down: hot calls go on on the running containers
        load.wait_for(after(killed, lambda r: r.function == "hot" and r.status == 200, 20))
        load.wait_for(after(killed, lambda r: r.function == "echo", 3))
        pd.start()
        up = time.monotonic()
        load.wait_for(after(up, lambda r: r.function == "echo" and r.status == 200, 1))
        recovered = min(
            r.at for r in load.results if r.at > up and r.function == "echo" and r.status == 200
        )
        load.wait_for(after(recovered, lambda r: r.status == 200, 20))
    allowed = {(200, ""), (503, "docker_unavailable")}
    wrong = [r for r in load.results if (r.status, r.code) not in allowed]
    assert not wrong, (load.summary(), [(r.at - up, r.message) for r in wrong])
    assert all(r.body_ok for r in load.results if r.status == 200)
    down_hot = [r for r in load.results if killed < r.at < up and r.function == "hot"]
    assert down_hot
    assert all(r.status == 200 for r in down_hot), load.summary()
    assert recovered - up < 10, f"service resumed {recovered - up:.1f} s after Docker"
    print(f"\nsummary {load.summary()}; resumed {recovered - up:.2f} s after dockerd answered")
    assert kiln.stop() == 0
    left = [(c["Names"], c["State"], c["Status"]) for c in pd.containers(kiln.daemon_id)]
    lines = [x for x in kiln.log_lines if "janitor" in x or "remove" in x or "orphan" in x]
    assert left == [], "\n".join(lines[-30:])
    assert "Traceback" not in kiln.log()


def test_docker_kill_of_hot_containers_under_load(
    private_docker: PrivateDocker, start_daemon: Callable[..., Daemon]
) -> None:
    pd = private_docker
    kiln = start_daemon(
        {"hot": {**HOT, "min_warm": 2, "max_containers": 4}},
        docker={"socket": pd.socket},
    )
    killed = 0
    with Load(kiln.url, ("hot",)) as load, pd.client() as docker:
        load.wait_for(after(0, lambda r: r.status == 200, 10))
        for _ in range(8):
            running = [c for c in pd.containers(kiln.daemon_id) if c.get("State") == "running"]
            if running:
                docker.post(f"/containers/{running[0]['Id']}/kill")
                killed += 1
            t = time.monotonic()
            load.wait_for(after(t, lambda r: True, 5))
        t = time.monotonic()
        load.wait_for(after(t, lambda r: r.status == 200, 10))
    assert killed >= 4
    assert all(r.body_ok for r in load.results if r.status == 200), "a 200 with a wrong body"
    # killed mid-call: function_error; killed while it started: start_failed
    allowed = {(200, ""), (502, "function_error"), (502, "start_failed")}
    wrong = [r for r in load.results if (r.status, r.code) not in allowed]
    assert not wrong, load.summary()
    print(f"\nsummary {load.summary()}; {killed} containers killed")
    assert kiln.stop() == 0
    assert pd.containers(kiln.daemon_id) == []


def test_kiln_sigkilled_then_restarted_sweeps_containers_and_listener_dirs(
    start_daemon: Callable[..., Daemon], docker: httpx.Client, tmp_path: Path
) -> None:
    kiln = start_daemon({"hot": {**HOT, "min_warm": 2}})
    with Load(kiln.url, ("hot",)) as load:
        load.wait_for(after(0, lambda r: r.status == 200, 10))
        kiln.proc.send_signal(signal.SIGKILL)
        kiln.proc.wait(30)
    kiln.expected_exit = -signal.SIGKILL
    left = kiln_containers(docker, kiln.daemon_id)
    assert len(left) >= 2
    iofs = tmp_path / f"{kiln.daemon_id}-run" / "iofs"
    old_dirs = {p.name for p in iofs.iterdir()}
    assert old_dirs  # the killed instance's listener dirs
    again = start_daemon({"hot": HOT}, daemon_id=kiln.daemon_id)
    assert not {c["Id"] for c in left} & {c["Id"] for c in kiln_containers(docker, kiln.daemon_id)}
    assert not old_dirs & {p.name for p in iofs.iterdir()}
    assert again.invoke("hot", b"after").content == b"after"
    assert again.stop() == 0
    assert kiln_containers(docker, kiln.daemon_id) == []
    assert not any(
        str(iofs) in line for line in Path("/proc/self/mountinfo").read_text().splitlines()
    )
