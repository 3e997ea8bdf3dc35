"""Async calls with real processes, real Docker and both stores: accepted calls
survive a SIGKILL of the daemon, and two daemons share one PostgreSQL queue.

Each execution is recorded outside Kiln's state: the function appends its
call id to ``/tmp/iofs/ran.log``, a file in its bind-mounted listener dir, and
the test reads those files on the host (killing a dead daemon's orphaned
containers first, so they are final; a restart sweeps the dead instance's dirs,
so they are read before it).
"""

from __future__ import annotations

import json
import re
import socket
import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import BUSYBOX, PYTHON, Daemon, kiln_containers

pytestmark = pytest.mark.docker

RECORDER_CODE = """
import sys, time
sys.path.insert(0, "/fn")
import fdk

def handle(body, headers):
    with open("/tmp/iofs/ran.log", "a") as f:
        f.write(headers.get("fn-call-id", "?") + "\\n")
    time.sleep(2 if body.startswith(b"slow") else 0.05)
    return body

fdk.serve(handle)
"""


def recorder(max_containers: int = 4) -> dict[str, Any]:
    return {
        "image": PYTHON,
        "cmd": ["python3", "-c", RECORDER_CODE],
        "format": "http-stream",
        "memory": "64MiB",
        "timeout": 5,
        "start_timeout": 10,
        "idle_timeout": 600,
        "max_containers": max_containers,
    }


def executions(run_dir: Path) -> Counter[str]:
    """Call ids in the ``ran.log`` of every listener dir under ``run_dir``."""
    out: Counter[str] = Counter()
    for log in (run_dir / "iofs").glob("*/*/ran.log"):
        out.update(line for line in log.read_text().split("\n") if line)
    return out


def unmount_iofs(run_dir: Path) -> None:
    """A SIGKILLed daemon leaves its listener tmpfs mounted: take it away."""
    subprocess.run(["umount", "-l", str(run_dir / "iofs")], check=False, capture_output=True)


def kill_containers(docker: httpx.Client, daemon_id: str, *, remove: bool = False) -> None:
    for c in kiln_containers(docker, daemon_id):
        if c["State"] == "running":
            docker.post(f"/containers/{c['Id']}/kill")
        if remove:
            docker.delete(f"/containers/{c['Id']}", params={"force": "1"})


def wait_completions(daemons: list[Daemon], n: int, timeout: float = 120) -> None:
    """Until the daemons' logs show ``n`` finished calls (woken by each log line)."""

    def done() -> int:
        return sum(
            sum(1 for line in d.log_lines if "call fn=rec " in line and "status=200" in line)
            for d in daemons
        )

    for d in daemons:
        with d.log_changed:
            if d.log_changed.wait_for(lambda: done() >= n, timeout):
                return
    pytest.fail(f"only {done()} of {n} calls finished")


def body(i: int) -> bytes:
    """Every 25th call is slow (2 s), so a kill can be timed to land mid-call."""
    return f"{'slow' if i % 25 == 24 else 'call'} {i}".encode()


def accept_all(d: Daemon, n: int, first: int = 0) -> list[str]:
    ids = []
    with httpx.Client(base_url=d.url, timeout=60) as client:
        for i in range(first, first + n):
            r = client.post(
                "/invoke/rec", content=body(i), headers={"Kiln-Invoke-Type": "async"}
            )
            assert r.status_code == 202, r.text
            ids.append(r.headers["kiln-call-id"])
    return ids


def wait_all(d: Daemon, ids: list[str]) -> list[dict[str, Any]]:
    out = []
    with httpx.Client(base_url=d.url, timeout=120) as client:
        for call_id in ids:
            for _ in range(10):
                got = client.get(f"/calls/{call_id}", params={"wait": "60"}).json()
                if got["state"] in ("succeeded", "failed", "cancelled"):
                    break
            out.append(got)
    return out


def running_in_store(store: str, path: Path | None, *, slow: bool = False) -> dict[str, str]:
    """Calls the store shows running (call id → host): the ones in flight at a kill
    (``slow``: only the slow ones)."""
    sql = "SELECT id, host, body FROM calls WHERE state = 'running'"
    if store == "sqlite":
        assert path is not None
        with sqlite3.connect(path) as db:
            rows = db.execute(sql).fetchall()
    else:
        import psycopg

        with psycopg.connect(store) as db:
            rows = db.execute(sql).fetchall()
    return {r[0]: r[1] for r in rows if not slow or bytes(r[2]).startswith(b"slow")}


def kill_during_a_slow_call(
    d: Daemon, store: str, path: Path | None, host: str | None = None
) -> None:
    """SIGKILL ``d`` while one of its slow (2 s) calls runs: it is surely in flight."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        running = running_in_store(store, path, slow=True)
        if any(host is None or h == host for h in running.values()):
            d.proc.kill()
            d.proc.wait(30)
            d.expected_exit = -9
            return
        time.sleep(0.05)  # the store offers no wake-up to an outside reader
    pytest.fail("no slow call was running")


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_sigkill_midway_loses_nothing(
    kind: str, docker: httpx.Client, start_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    store = "sqlite"
    if kind == "postgres":
        from tests.pgserver import fresh_database

        store = fresh_database()
    sections: dict[str, Any] = {"async": {"store": store}, "limits": {"queue_wait": 5}}
    first = start_daemon({"rec": recorder()}, **json.loads(json.dumps(sections)))
    ids = accept_all(first, 500)
    wait_completions([first], 250)
    db_path = tmp_path / f"{first.daemon_id}-state" / "async.db"
    kill_during_a_slow_call(first, store, db_path)
    in_flight = running_in_store(store, db_path)
    kill_containers(docker, first.daemon_id)
    run_dir = tmp_path / f"{first.daemon_id}-run"
    ran = executions(run_dir)
    assert 0 < sum(ran.values()) < 500, "the kill was not midway"
    assert in_flight, f"nothing was in flight at the kill ({sum(ran.values())} ran)"

    second = start_daemon(
        {"rec": recorder()}, daemon_id=first.daemon_id, **json.loads(json.dumps(sections))
    )
    assert second.wait_log("queued again") or not in_flight
    results = wait_all(second, ids)
    assert [r["state"] for r in results] == ["succeeded"] * 500
    assert all(r["result"]["body"] == body(i).decode() for i, r in enumerate(results))
    ran.update(executions(run_dir))
    assert set(ran) == set(ids)
    twice = {i for i, n in ran.items() if n > 1}
    assert twice <= set(in_flight), "a call not in flight at the kill ran twice"
    assert max(ran.values()) <= 2
    assert second.stop() == 0  # (before the fixture looks for the first run's containers)


def test_two_hosts_share_one_postgres_queue(
    docker: httpx.Client, start_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    from tests.pgserver import fresh_database

    dsn = fresh_database()

    def sections() -> dict[str, Any]:
        return {"async": {"store": dsn, "lease_margin": 2}, "limits": {"queue_wait": 2}}

    a = start_daemon({"rec": recorder()}, **sections())
    b = start_daemon({"rec": recorder()}, **sections())
    host_a = f"{socket.gethostname()}/{a.daemon_id}"
    host_b = f"{socket.gethostname()}/{b.daemon_id}"
    ids = accept_all(a, 1000) + accept_all(b, 1000, first=1000)
    wait_completions([a, b], 1000)
    kill_during_a_slow_call(a, dsn, None, host_a)
    in_flight = {i for i, host in running_in_store(dsn, None).items() if host == host_a}
    kill_containers(docker, a.daemon_id)
    ran_a = executions(tmp_path / f"{a.daemon_id}-run")
    kill_containers(docker, a.daemon_id, remove=True)  # nobody restarts host A
    unmount_iofs(tmp_path / f"{a.daemon_id}-run")

    results = wait_all(b, ids)
    assert [r["state"] for r in results] == ["succeeded"] * 2000
    ran_b = executions(tmp_path / f"{b.daemon_id}-run")
    assert set(ran_a) | set(ran_b) == set(ids)
    assert set(ran_a) & set(ran_b) <= in_flight, "a call not in flight at the kill ran on both"
    assert max((ran_a + ran_b).values()) <= 2
    # both hosts did work, and the survivor took over every call A held
    assert ran_a
    assert ran_b
    assert in_flight, "host A had nothing in flight when it was killed"
    by_id = {r["id"]: r for r in results}
    assert {by_id[i]["host"] for i in in_flight} == {host_b}
    assert all(by_id[i]["attempts"] >= 2 for i in in_flight)


def test_cli_calls_and_call_wait(start_daemon: Callable[..., Daemon]) -> None:
    d = start_daemon({"echo": {"image": BUSYBOX, "cmd": ["cat"], "memory": "16MiB"}})
    r = d.invoke("echo", b"hello async", headers={"Kiln-Invoke-Type": "async"})
    assert r.status_code == 202
    call_id = r.headers["kiln-call-id"]
    out = d.cli("call", call_id, "--wait")
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"hello async"
    assert b"succeeded" in out.stderr
    listed = d.cli("calls", "--function", "echo", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [c["id"] for c in json.loads(listed.stdout)["calls"]] == [call_id]
    human = d.cli("calls", "--state", "succeeded")
    assert call_id.encode() in human.stdout
    status = d.cli("status")
    assert re.search(rb"async +\d+ queued, \d+ running \(sqlite", status.stdout), status.stdout
    assert d.cli("call", "0" * 32).returncode == 1  # unknown: one line, exit 1
