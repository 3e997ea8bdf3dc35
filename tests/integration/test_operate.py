"""Operating Kiln: the control API and CLI, persistence, restarts, the orphan
sweep, reload, socket permissions, metrics. Real daemon, real Docker."""

from __future__ import annotations

import itertools
import json
import os
import signal
import stat
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import BUSYBOX, PYTHON, Daemon, kiln_containers

pytestmark = pytest.mark.docker

ECHO = {"image": BUSYBOX, "cmd": ["cat"], "memory": "32MiB"}
HOT = {
    "image": PYTHON,
    "cmd": ["python3", "/fn/echo_fdk.py"],
    "format": "http-stream",
    "memory": "64MiB",
}


def ok(result: object) -> str:
    import subprocess

    assert isinstance(result, subprocess.CompletedProcess)
    assert result.returncode == 0, result.stderr.decode()
    return str(result.stdout.decode())


def test_cli_deploy_invoke_scale_rm(start_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    kiln = start_daemon({"echo": ECHO})
    spec = tmp_path / "hot.toml"
    spec.write_text(
        '[functions.hot]\nimage = "kiln-test/python:latest"\ncmd = ["python3", "/fn/echo_fdk.py"]\n'
        'format = "http-stream"\nmemory = "64MiB"\n'
    )
    assert "created hot" in ok(kiln.cli("deploy", str(spec)))
    assert ok(kiln.cli("invoke", "hot", stdin=b"via cli")) == "via cli"
    listed = json.loads(ok(kiln.cli("ls", "--json")))
    assert {f["name"] for f in listed} == {"echo", "hot"}
    assert "hot" in ok(kiln.cli("ls"))
    scaled = json.loads(ok(kiln.cli("scale", "hot", "--min-warm", "2", "--max", "3", "--json")))
    assert (scaled["min_warm"], scaled["max_containers"]) == (2, 3)
    shown = json.loads(ok(kiln.cli("show", "hot", "--json")))
    assert shown["spec"]["min_warm"] == 2
    assert shown["source"] == "deployed"
    status = json.loads(ok(kiln.cli("status", "--json")))
    assert status["docker"]["reachable"] is True
    assert status["functions"] == 2
    assert "removed hot" in ok(kiln.cli("rm", "hot"))
    gone = kiln.cli("invoke", "hot")
    assert gone.returncode == 1
    assert b"no function named 'hot'" in gone.stderr


def test_bad_spec_rejected_naming_the_key(
    start_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    kiln = start_daemon({"echo": ECHO})
    with kiln.control() as control:
        r = control.put("/functions/bad", json={"image": BUSYBOX, "memroy": "1GiB"})
    assert r.status_code == 400
    assert "functions.bad.memroy: unknown key" in r.json()["error"]["message"]
    spec = tmp_path / "bad.toml"
    spec.write_text('name = "bad"\nimage = "x"\nmemory = "-1MiB"\n')
    result = kiln.cli("deploy", str(spec))
    assert result.returncode == 1
    assert b"functions.bad.memory" in result.stderr


def test_cli_without_daemon_says_so(tmp_path: Path) -> None:
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "kiln.cli", "status", "--socket", str(tmp_path / "none.sock")],
        capture_output=True,
        check=False,
    )
    assert r.returncode == 1
    assert b"cannot reach kiln at" in r.stderr
    assert b"is the service running?" in r.stderr


def test_deployed_functions_survive_a_restart(start_daemon: Callable[..., Daemon]) -> None:
    kiln = start_daemon({"echo": ECHO})
    with kiln.control() as control:
        r = control.put(
            "/functions/later", json={"image": BUSYBOX, "cmd": ["cat"], "memory": "32MiB"}
        )
    assert r.status_code == 201
    assert kiln.stop() == 0
    again = start_daemon({"echo": ECHO}, daemon_id=kiln.daemon_id)
    r2 = again.invoke("later", b"still here")
    assert r2.status_code == 200
    assert r2.content == b"still here"


def test_sigkill_then_restart_sweeps_orphans(
    start_daemon: Callable[..., Daemon], docker: httpx.Client
) -> None:
    kiln = start_daemon({"hot": {**HOT, "min_warm": 2}})
    assert kiln.invoke("hot", b"x").status_code == 200
    assert len(kiln_containers(docker, kiln.daemon_id)) >= 2
    kiln.proc.send_signal(signal.SIGKILL)
    kiln.proc.wait(30)
    kiln.expected_exit = -signal.SIGKILL
    left = kiln_containers(docker, kiln.daemon_id)
    assert len(left) >= 2  # the crash left them behind
    again = start_daemon({"echo": ECHO}, daemon_id=kiln.daemon_id)
    old_ids = {c["Id"] for c in left}
    # the sweep runs (bounded in time) before the daemon says it is listening
    assert "orphan sweep: " in again.log()
    assert not old_ids & {c["Id"] for c in kiln_containers(docker, kiln.daemon_id)}


def test_control_socket_mode_and_second_daemon_refused(
    start_daemon: Callable[..., Daemon],
) -> None:
    kiln = start_daemon({"echo": ECHO})
    mode = stat.S_IMODE(os.stat(kiln.socket).st_mode)
    assert mode == 0o660
    second = start_daemon(
        {"echo": ECHO}, daemon={"control_socket": kiln.socket}, expect_ready=False
    )
    assert second.proc.wait(30) == 1
    second.expected_exit = 1
    assert "another kiln is running" in second.log()
    assert kiln.invoke("echo", b"fine").content == b"fine"  # the first one is untouched


def test_stale_socket_is_replaced(start_daemon: Callable[..., Daemon]) -> None:
    kiln = start_daemon({"echo": ECHO})
    kiln.proc.send_signal(signal.SIGKILL)
    kiln.proc.wait(30)
    kiln.expected_exit = -signal.SIGKILL
    assert os.path.exists(kiln.socket)  # left behind by the killed daemon
    again = start_daemon({"echo": ECHO}, daemon_id=kiln.daemon_id)
    assert json.loads(again.cli("status", "--json").stdout)["functions"] == 1


def test_reload_changed_removed_and_invalid(start_daemon: Callable[..., Daemon]) -> None:
    kiln = start_daemon({"a": ECHO, "b": ECHO, "hot": HOT})
    assert kiln.invoke("hot", b"1").status_code == 200
    text = kiln.config_path.read_text()
    # change `hot` (new env), remove `b`, add `c`
    new = text.replace("[functions.b]", "[functions.c]").replace(
        '"format": "http-stream"', '"format": "http-stream"'
    )
    new = new.replace("[functions.hot]\n", '[functions.hot]\nenv = { VERSION = "2" }\n')
    kiln.config_path.write_text(new)
    out = json.loads(ok(kiln.cli("reload", "--json")))
    assert out["added"] == ["c"]
    assert out["removed"] == ["b"]
    assert out["changed"] == ["hot"]
    assert kiln.invoke("b", b"x").status_code == 404
    assert kiln.invoke("c", b"x").status_code == 200
    assert kiln.invoke("hot", b"2").status_code == 200
    # an invalid file is refused and the running config stays
    kiln.config_path.write_text(new + "\n[functions.broken]\nimage = 5\n")
    bad = kiln.cli("reload")
    assert bad.returncode == 1
    assert b"functions.broken.image" in bad.stderr
    assert kiln.invoke("c", b"x").status_code == 200
    # SIGHUP reloads too
    write_config_back = new.replace("[functions.c]", "[functions.d]")
    kiln.config_path.write_text(write_config_back)
    kiln.proc.send_signal(signal.SIGHUP)
    assert kiln.wait_log("SIGHUP reload:")
    assert kiln.invoke("d", b"x").status_code == 200


def test_metrics_parse_and_move(start_daemon: Callable[..., Daemon]) -> None:
    kiln = start_daemon({"echo": ECHO})

    def calls() -> float:
        text = httpx.get(f"{kiln.url}/metrics").text
        total = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "kiln_calls_total" and sample.labels.get("function") == "echo":
                    total += sample.value
        return total

    before = calls()
    assert kiln.invoke("echo", b"x").status_code == 200
    assert kiln.invoke("echo", b"y").status_code == 200
    assert calls() == before + 2
    names = {f.name for f in text_string_to_metric_families(httpx.get(f"{kiln.url}/metrics").text)}
    for expected in (
        "kiln_memory_bytes",
        "kiln_queue_depth",
        "kiln_containers",
        "kiln_docker_request_seconds",
        "kiln_call_phase_seconds",
        "kiln_cold_starts",
    ):
        assert expected in names


def test_sd_notify_ready_watchdog_stopping(
    start_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    import socket as pysocket
    import time

    path = str(tmp_path / "notify.sock")
    receiver = pysocket.socket(pysocket.AF_UNIX, pysocket.SOCK_DGRAM)
    receiver.bind(path)
    receiver.settimeout(10)
    kiln = start_daemon({"echo": ECHO}, env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"})
    messages: list[tuple[float, bytes]] = []

    def recv() -> bytes:
        data = receiver.recv(4096)
        messages.append((time.monotonic(), data))
        return data

    seen: list[bytes] = []
    while not any(m.startswith(b"READY=1") for m in seen):
        seen.append(recv())
    ready = next(m for m in seen if m.startswith(b"READY=1"))
    assert b"STATUS=1 function(s)" in ready
    pings = [t for t, m in messages if m == b"WATCHDOG=1"]
    while len(pings) < 4:
        if recv() == b"WATCHDOG=1":
            pings.append(messages[-1][0])
    gaps = [b - a for a, b in itertools.pairwise(pings[1:])]
    assert all(0.25 < g < 1.0 for g in gaps), gaps  # every half of WATCHDOG_USEC = 0.5 s
    kiln.proc.send_signal(signal.SIGTERM)
    while recv() != b"STOPPING=1":
        pass
    assert kiln.proc.wait(30) == 0
    receiver.close()
