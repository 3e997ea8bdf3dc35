"""Hot (http-stream) functions against real containers: the Fn FDK contract,
herd control with real Docker, death from outside."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.integration.conftest import PYTHON, Daemon, docker_events, kiln_containers

pytestmark = pytest.mark.docker


def fn(script: str, **kw: object) -> dict[str, object]:
    return {
        "image": PYTHON,
        "cmd": ["python3", f"/fn/{script}"],
        "format": "http-stream",
        "memory": "64MiB",
        **kw,
    }


FUNCTIONS = {
    "echo": fn("echo_fdk.py"),
    "raw": fn("raw_symlink.py"),
    "abs": fn("abs_symlink.py"),
    "mute": fn("never_binds.py", start_timeout=2),
    "crash": fn("exits_at_start.py"),
    "bad": fn("answers_500.py"),
    "hang": fn("hangs.py", timeout=2),
}


@pytest.fixture
def kiln(start_daemon: Callable[..., Daemon]) -> Daemon:
    return start_daemon(FUNCTIONS)


def containers_of(docker: httpx.Client, kiln: Daemon, function: str) -> list[str]:
    return [
        c["Id"]
        for c in kiln_containers(docker, kiln.daemon_id)
        if c["Labels"].get("kiln.function") == function and c["State"] == "running"
    ]


def test_fdk_function_round_trip_and_reuse(kiln: Daemon, docker: httpx.Client) -> None:
    first = kiln.invoke("echo", b"hello", headers={"X-Echo": "yes"})
    assert first.status_code == 200, first.text
    assert first.content == b"hello"
    assert first.headers["x-echo"] == "yes"
    assert first.headers["kiln-cold"] == "1"
    second = kiln.invoke("echo", b"again", headers={"X-Status": "201"})
    assert second.status_code == 201
    assert second.content == b"again"
    assert "kiln-cold" not in second.headers
    assert len(containers_of(docker, kiln, "echo")) == 1


def test_function_exception_is_502_and_container_kept(kiln: Daemon, docker: httpx.Client) -> None:
    assert kiln.invoke("echo", b"warm").status_code == 200
    (cid,) = containers_of(docker, kiln, "echo")
    r = kiln.invoke("echo", b"x", headers={"X-Fail": "1"})
    assert r.status_code == 502
    assert "asked to fail" in r.json()["error"]["message"]
    assert containers_of(docker, kiln, "echo") == [cid]


def test_raw_phony_socket_and_relative_symlink(kiln: Daemon) -> None:
    r = kiln.invoke("raw", b"abc")
    assert r.status_code == 201, r.text
    assert r.content == b"raw:abc"
    assert r.headers["x-raw"] == "yes"


def test_absolute_symlink_fails_to_start(kiln: Daemon, docker: httpx.Client) -> None:
    r = kiln.invoke("abs", b"x")
    assert r.status_code == 502
    assert r.json()["error"]["code"] == "start_failed"
    assert "absolute" in r.json()["error"]["message"]


def test_never_binds_504_after_start_timeout(kiln: Daemon) -> None:
    t0 = time.monotonic()
    r = kiln.invoke("mute", b"x")
    assert r.status_code == 504
    assert r.json()["error"]["code"] == "start_timeout"
    assert 2 <= time.monotonic() - t0 < 10


def test_exits_at_start_502_with_its_output(kiln: Daemon) -> None:
    r = kiln.invoke("crash", b"x")
    assert r.status_code == 502
    err = r.json()["error"]
    assert "failed to initialize" in err["message"]
    assert "cannot load model" in err["message"]


def test_http_500_kills_container_next_call_fine(kiln: Daemon, docker: httpx.Client) -> None:
    r = kiln.invoke("bad", b"x")
    assert r.status_code == 502
    assert containers_of(docker, kiln, "bad") == []
    assert kiln.invoke("bad", b"x").status_code == 502  # a fresh container, same answer


def test_hang_past_timeout_504_container_killed(kiln: Daemon, docker: httpx.Client) -> None:
    r = kiln.invoke("hang", b"x")
    assert r.status_code == 504
    assert containers_of(docker, kiln, "hang") == []


def test_killed_from_outside_next_call_succeeds(kiln: Daemon, docker: httpx.Client) -> None:
    assert kiln.invoke("echo", b"1").status_code == 200
    (cid,) = containers_of(docker, kiln, "echo")
    docker.post(f"/containers/{cid}/kill").raise_for_status()
    r = kiln.invoke("echo", b"2")
    assert r.status_code == 200
    assert r.content == b"2"
    assert cid not in containers_of(docker, kiln, "echo")


def test_herd_200_calls_max_4_containers(
    start_daemon: Callable[..., Daemon], docker: httpx.Client
) -> None:
    kiln = start_daemon({"echo": fn("echo_fdk.py", max_containers=4)})
    since = time.time()
    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(lambda i: kiln.invoke("echo", b"%d" % i), range(200)))
    until = time.time() + 0.5
    assert [r.status_code for r in results] == [200] * 200
    assert all(r.content == b"%d" % i for i, r in enumerate(results))
    creates = [
        e for e in docker_events(docker, kiln.daemon_id, since, until) if e["Action"] == "create"
    ]
    assert 1 <= len(creates) <= 4


def test_memory_limit_runs_slow_calls_one_at_a_time(
    start_daemon: Callable[..., Daemon], docker: httpx.Client
) -> None:
    from tests.integration.conftest import BUSYBOX

    kiln = start_daemon(
        {"slow": {"image": BUSYBOX, "cmd": ["sh", "-c", "sleep 1; cat"], "memory": "128MiB"}},
        limits={"memory": "200MiB", "queue_wait": 3},
    )
    since = time.time()
    with ThreadPoolExecutor(max_workers=5) as pool:
        results = list(pool.map(lambda i: kiln.invoke("slow", b"%d" % i), range(5)))
    until = time.time() + 0.5
    for r in results:
        assert r.status_code == 200 or (
            r.status_code == 503 and r.json()["error"]["code"] == "no_memory"
        ), r.text
    assert any(r.status_code == 200 for r in results)
    running = 0
    peak = 0
    for e in docker_events(docker, kiln.daemon_id, since, until):
        if e["Action"] == "start":
            running += 1
        elif e["Action"] == "die":
            running -= 1
        peak = max(peak, running)
    assert peak == 1
    assert kiln_containers(docker, kiln.daemon_id) == []


def test_answer_over_max_response_is_502(
    start_daemon: Callable[..., Daemon], docker: httpx.Client
) -> None:
    kiln = start_daemon(
        {"echo": fn("echo_fdk.py")}, daemon={"max_response": "1MiB", "max_body": "4MiB"}
    )
    reply = kiln.invoke("echo", b"x" * (2 * 1024 * 1024))
    assert reply.status_code == 502, reply.text
    assert reply.json()["error"]["code"] == "output_too_large"
    small = kiln.invoke("echo", b"y" * 1000)
    assert small.status_code == 200
    assert small.content == b"y" * 1000
