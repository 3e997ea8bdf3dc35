"""stdio functions end to end: a real kiln daemon, a real dockerd, real containers."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable

import httpx
import pytest

from tests.integration.conftest import BUSYBOX, PYTHON, Daemon, kiln_containers

pytestmark = pytest.mark.docker

FUNCTIONS = {
    "echo": {"image": BUSYBOX, "cmd": ["cat"], "memory": "32MiB"},
    "fail": {
        "image": BUSYBOX,
        "cmd": [
            "sh",
            "-c",
            "cat >/dev/null; for i in 1 2 3 4 5; do echo line $i >&2; done; echo boom >&2; exit 3",
        ],
        "memory": "32MiB",
    },
    "sleepy": {"image": BUSYBOX, "cmd": ["sleep", "60"], "timeout": 2, "memory": "32MiB"},
    "hog": {
        "image": PYTHON,
        "cmd": [
            "python3",
            "-c",
            "import sys; sys.stdin.read(); x = b'x' * (200 * 1024 * 1024); print(len(x))",
        ],
        "memory": "64MiB",
    },
    "env": {
        "image": BUSYBOX,
        "cmd": ["sh", "-c", "cat >/dev/null; echo $GREETING"],
        "env": {"GREETING": "hi there"},
        "memory": "32MiB",
    },
}


@pytest.fixture
def kiln(start_daemon: Callable[..., Daemon]) -> Daemon:
    return start_daemon(FUNCTIONS, daemon={"max_body": "2MiB"})


def test_echo_through_cat(kiln: Daemon, docker: httpx.Client) -> None:
    r = kiln.invoke("echo", b"hello from kiln")
    assert r.status_code == 200, r.text
    assert r.content == b"hello from kiln"
    assert r.headers["kiln-call-id"]
    assert kiln_containers(docker, kiln.daemon_id) == []


def test_timing_reports_the_container_start(kiln: Daemon) -> None:
    """A stdio call starts a container: Kiln-Timing's start is its create+start time."""
    r = kiln.invoke("echo", b"x")
    assert r.status_code == 200, r.text
    assert r.headers["kiln-cold"] == "1"
    timing = {k: float(v) for k, v in (kv.split("=") for kv in r.headers["kiln-timing"].split(";"))}
    assert timing["start"] > 1  # ms: Docker takes longer than that to create and start
    assert timing["run"] > 0


def test_control_socket_invoke_is_a_call_like_any_other(kiln: Daemon) -> None:
    with kiln.control() as control:
        r = control.post("/functions/echo/invoke", content=b"via control")
    assert r.status_code == 200, r.text
    assert r.content == b"via control"
    assert r.headers["kiln-cold"] == "1"
    assert "start=" in r.headers["kiln-timing"]
    call_id = r.headers["kiln-call-id"]
    assert kiln.wait_log(f"id={call_id} status=200")


def test_one_mib_round_trips_byte_exact(kiln: Daemon) -> None:
    body = os.urandom(1024 * 1024)
    r = kiln.invoke("echo", body)
    assert r.status_code == 200
    assert r.content == body


def test_env_reaches_the_function(kiln: Daemon) -> None:
    assert kiln.invoke("env").content == b"hi there\n"


def test_nonzero_exit_502_with_stderr_tail(kiln: Daemon) -> None:
    r = kiln.invoke("fail", b"x")
    assert r.status_code == 502
    err = r.json()["error"]
    assert err["code"] == "function_error"
    assert "exited with code 3" in err["message"]
    assert "boom" in err["message"]
    assert "line 5" in err["message"]


def test_timeout_504_and_container_gone(kiln: Daemon, docker: httpx.Client) -> None:
    r = kiln.invoke("sleepy", b"")
    assert r.status_code == 504
    assert r.json()["error"]["code"] == "timeout"
    assert kiln_containers(docker, kiln.daemon_id) == []


def test_out_of_memory_502_names_oom(kiln: Daemon) -> None:
    r = kiln.invoke("hog", b"")
    assert r.status_code == 502, r.text
    err = r.json()["error"]
    assert err["code"] == "out_of_memory"
    assert "64 MiB" in err["message"]
    assert "memory" in err["message"]


def test_unknown_function_404(kiln: Daemon) -> None:
    r = kiln.invoke("nope", b"x")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "unknown_function"
    assert r.headers["kiln-call-id"]


def test_body_over_limit_413(kiln: Daemon) -> None:
    r = kiln.invoke("echo", b"x" * (2 * 1024 * 1024 + 1))
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "body_too_large"


def test_docker_unreachable_503_daemon_keeps_running(
    start_daemon: Callable[..., Daemon], tmp_path: object
) -> None:
    kiln = start_daemon(FUNCTIONS, docker={"socket": "/nonexistent/docker.sock"})
    r = kiln.invoke("echo", b"x")
    assert r.status_code == 503
    assert "unreachable" in r.json()["error"]["message"]
    assert "retry-after" in r.headers
    assert kiln.proc.poll() is None
    assert httpx.get(f"{kiln.url}/healthz").status_code == 200


def test_sigterm_with_call_in_flight_removes_its_container(
    start_daemon: Callable[..., Daemon], docker: httpx.Client
) -> None:
    kiln = start_daemon(
        {"slow": {"image": BUSYBOX, "cmd": ["sh", "-c", "sleep 1; cat"], "memory": "32MiB"}}
    )
    results: list[httpx.Response] = []
    filters = json.dumps({"label": [f"kiln.daemon={kiln.daemon_id}"], "event": ["start"]})
    with docker.stream("GET", "/events", params={"filters": filters}, timeout=60) as events:
        t = threading.Thread(target=lambda: results.append(kiln.invoke("slow", b"done")))
        t.start()
        next(events.iter_lines())  # its container has started: now stop the daemon
    assert kiln.stop() == 0
    t.join(30)
    assert len(results) == 1
    assert results[0].status_code == 200
    assert results[0].content == b"done"
    assert kiln_containers(docker, kiln.daemon_id) == []
