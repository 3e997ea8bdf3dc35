"""Async calls with real processes, real Docker and both stores: accepted calls
survive a SIGKILL of the daemon, and two daemons share one PostgreSQL queue.

Each execution is recorded outside Kiln: the function writes ``ran <call id>``
to its stderr, which Docker keeps in the container's json-file log; the test
reads those logs through the Docker API (killing a dead daemon's orphaned
containers first, so their logs are final).
"""

from __future__ import annotations

import json
import re
import socket
import sqlite3
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import PYTHON, Daemon, kiln_containers

pytestmark = pytest.mark.docker

RECORDER_CODE = """
import sys, time
sys.path.insert(0, "/fn")
import fdk

def handle(body, headers):
    print("ran", headers.get("fn-call-id", "?"), file=sys.stderr, flush=True)
    time.sleep(0.05)
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


RAN = re.compile(rb"ran ([0-9a-f]{32})")


def executions(docker: httpx.Client, daemon_id: str) -> Counter[str]:
    """``ran <id>`` lines in the logs of every container of ``daemon_id``."""
    out: Counter[str] = Counter()
    for c in kiln_containers(docker, daemon_id):
        r = docker.get(f"/containers/{c['Id']}/logs", params={"stderr": "1", "stdout": "1"})
        r.raise_for_status()
        out.update(m.decode() for m in RAN.findall(r.content))
    return out


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


def accept_all(d: Daemon, n: int) -> list[str]:
    ids = []
    with httpx.Client(base_url=d.url, timeout=60) as client:
        for i in range(n):
            r = client.post(
                "/invoke/rec", content=f"call {i}".encode(), headers={"Kiln-Invoke-Type": "async"}
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


def running_in_store(store: str, path: Path | None) -> dict[str, str]:
    """Calls the store shows running (call id → host): the ones in flight at a kill."""
    if store == "sqlite":
        assert path is not None
        with sqlite3.connect(path) as db:
            rows = db.execute("SELECT id, host FROM calls WHERE state = 'running'").fetchall()
    else:
        import psycopg

        with psycopg.connect(store) as db:
            rows = db.execute("SELECT id, host FROM calls WHERE state = 'running'").fetchall()
    return {r[0]: r[1] for r in rows}


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
    first.proc.kill()
    first.proc.wait(30)
    first.expected_exit = -9
    in_flight = running_in_store(store, tmp_path / f"{first.daemon_id}-state" / "async.db")
    kill_containers(docker, first.daemon_id)
    ran = executions(docker, first.daemon_id)
    assert 0 < sum(ran.values()) < 500, "the kill was not midway"
    assert in_flight, "nothing was in flight at the kill"

    second = start_daemon(
        {"rec": recorder()}, daemon_id=first.daemon_id, **json.loads(json.dumps(sections))
    )
    assert second.wait_log("queued again") or not in_flight
    results = wait_all(second, ids)
    assert [r["state"] for r in results] == ["succeeded"] * 500
    assert all(r["result"]["body"] == f"call {i}" for i, r in enumerate(results))
    ran.update(executions(docker, second.daemon_id))
    assert set(ran) == set(ids)
    twice = {i for i, n in ran.items() if n > 1}
    assert twice <= set(in_flight), "a call not in flight at the kill ran twice"
    assert max(ran.values()) <= 2
    assert second.stop() == 0  # (before the fixture looks for the first run's containers)


def test_two_hosts_share_one_postgres_queue(
    docker: httpx.Client, start_daemon: Callable[..., Daemon]
) -> None:
    from tests.pgserver import fresh_database

    dsn = fresh_database()

    def sections() -> dict[str, Any]:
        return {"async": {"store": dsn, "lease_margin": 2}, "limits": {"queue_wait": 2}}

    a = start_daemon({"rec": recorder()}, **sections())
    b = start_daemon({"rec": recorder()}, **sections())
    host_a = f"{socket.gethostname()}/{a.daemon_id}"
    host_b = f"{socket.gethostname()}/{b.daemon_id}"
    ids = accept_all(a, 1000) + accept_all(b, 1000)
    wait_completions([a, b], 1000)
    a.proc.kill()
    a.proc.wait(30)
    a.expected_exit = -9
    in_flight = {i for i, host in running_in_store(dsn, None).items() if host == host_a}
    kill_containers(docker, a.daemon_id)
    ran_a = executions(docker, a.daemon_id)
    kill_containers(docker, a.daemon_id, remove=True)  # nobody restarts host A

    results = wait_all(b, ids)
    assert [r["state"] for r in results] == ["succeeded"] * 2000
    ran_b = executions(docker, b.daemon_id)
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
