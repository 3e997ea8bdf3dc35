"""Fn function images run unchanged: the Fn project's own FDKs against real Docker.

``kiln-test/fn-python`` runs ``fdk`` from PyPI, ``kiln-test/fn-node`` runs
``@fnproject/fdk`` from npm (tests/images/build-fn.sh); their functions are
written the way Fn's docs write them (tests/images/fdk-*/).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import Daemon, _missing, kiln_containers

pytestmark = pytest.mark.docker

IMAGES = {"python": "kiln-test/fn-python:latest", "node": "kiln-test/fn-node:latest"}
FDKS = sorted(IMAGES)
HANDLERS = ("hello", "created", "request_info", "fail", "crash")


#: Each test handler: its Python FDK entry point and its Node FDK file.
ENTRY = {
    "hello": ("handler", "func.js"),
    "created": ("created", "created.js"),
    "request_info": ("request_info", "request_info.js"),
    "fail": ("fail", "fail.js"),
    "crash": ("crash", "crash.js"),
}


def fn(fdk: str, handler: str, **kw: object) -> dict[str, object]:
    """A Kiln function running one handler of an FDK image (whose entrypoint is
    ``/python/bin/fdk /function/func.py`` or ``node``: the command picks the handler)."""
    python_entry, node_file = ENTRY[handler]
    cmd = [python_entry] if fdk == "python" else [node_file]
    return {"image": IMAGES[fdk], "cmd": cmd, "format": "http-stream", "memory": "128MiB", **kw}


def functions(fdk: str, **kw: object) -> dict[str, dict[str, object]]:
    return {f"{fdk}-{h.replace('_', '-')}": fn(fdk, h, **kw) for h in HANDLERS}


@pytest.fixture(scope="module", autouse=True)
def fdk_images(docker: httpx.Client) -> None:
    for image in IMAGES.values():
        if docker.get(f"/images/{image}/json").status_code != 200:
            _missing(f"test image {image} is missing: run tests/images/build.sh")


def running(docker: httpx.Client, kiln: Daemon, function: str) -> list[str]:
    return [
        c["Id"]
        for c in kiln_containers(docker, kiln.daemon_id)
        if c["Labels"].get("kiln.function") == function and c["State"] == "running"
    ]


def cpu_seconds(docker: httpx.Client, cid: str) -> float:
    """CPU time the container has used so far, from its cgroup (Docker's stats)."""
    r = docker.get(f"/containers/{cid}/stats", params={"stream": "false", "one-shot": "true"})
    r.raise_for_status()
    return float(r.json()["cpu_stats"]["cpu_usage"]["total_usage"]) / 1e9


def cpu_share(docker: httpx.Client, cid: str, seconds: float) -> float:
    """The container's CPU use over the next ``seconds`` (1.0 = one core)."""
    c0, t0 = cpu_seconds(docker, cid), time.monotonic()
    time.sleep(seconds)  # the measurement window itself
    c1, t1 = cpu_seconds(docker, cid), time.monotonic()
    return (c1 - c0) / (t1 - t0)


def wait_running(docker: httpx.Client, kiln: Daemon, function: str) -> str:
    """The id of the function's (min_warm) container once its listener is up."""
    assert kiln.wait_log(f"fn={function} container", timeout=60), kiln.log()
    assert kiln.wait_log("ready in", timeout=60), kiln.log()
    (cid,) = running(docker, kiln, function)
    return cid


@pytest.mark.parametrize("fdk", FDKS)
def test_plain_and_json_calls(fdk: str, start_daemon: Callable[..., Daemon]) -> None:
    kiln = start_daemon(functions(fdk))
    r = kiln.invoke(
        f"{fdk}-hello", b'{"name": "Kiln"}', headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"message": "Hello Kiln"}
    assert r.headers["content-type"].startswith("application/json")
    plain = kiln.invoke(f"{fdk}-hello", b"")
    assert plain.status_code == 200, plain.text
    assert plain.json() == {"message": "Hello World"}


@pytest.mark.parametrize("fdk", FDKS)
def test_status_and_header_set_by_the_handler_reach_the_caller(
    fdk: str, start_daemon: Callable[..., Daemon]
) -> None:
    kiln = start_daemon(functions(fdk))
    r = kiln.invoke(f"{fdk}-created", b"x")
    assert r.status_code == 201, r.text
    assert r.headers["x-custom"] == "1"
    assert r.content == (b'"made"' if fdk == "node" else b"made")  # Node's FDK answers JSON
    assert not any(k.lower().startswith("fn-") for k in r.headers)


@pytest.mark.parametrize("fdk", FDKS)
def test_handler_sees_method_url_and_headers(fdk: str, start_daemon: Callable[..., Daemon]) -> None:
    kiln = start_daemon(functions(fdk))
    r = httpx.get(
        f"{kiln.url}/invoke/{fdk}-request-info/users/42?full=1&q=a%20b",
        headers={"X-Trace": "abc", "Fn-Call-Id": "forged"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    seen: dict[str, Any] = r.json()
    assert seen["method"] == "GET"
    assert seen["url"] == "/users/42?full=1&q=a%20b"
    headers = {k.lower(): v for k, v in seen["headers"].items()}
    trace = headers["x-trace"]
    assert trace in ("abc", ["abc"])  # fdk-python: a string, fdk-node: a list
    assert not any(k.startswith("fn-") for k in headers)  # the caller's Fn-Call-Id is dropped
    put = httpx.put(f"{kiln.url}/invoke/{fdk}-request-info", content=b"payload", timeout=60)
    assert put.status_code == 200, put.text
    assert (put.json()["method"], put.json()["url"], put.json()["body"]) == ("PUT", "/", "payload")


@pytest.mark.parametrize("fdk", FDKS)
def test_exception_is_502_and_the_container_is_kept(
    fdk: str, docker: httpx.Client, start_daemon: Callable[..., Daemon]
) -> None:
    kiln = start_daemon(functions(fdk))
    name = f"{fdk}-fail"
    first = kiln.invoke(name, b"x")
    assert first.status_code == 502, first.text
    assert first.json()["error"]["code"] == "function_error"
    (cid,) = running(docker, kiln, name)
    second = kiln.invoke(name, b"x")
    assert second.status_code == 502
    assert running(docker, kiln, name) == [cid]


@pytest.mark.parametrize("fdk", FDKS)
def test_crash_mid_call_names_the_exit_code_and_this_calls_output(
    fdk: str, start_daemon: Callable[..., Daemon]
) -> None:
    kiln = start_daemon(functions(fdk))
    name = f"{fdk}-crash"
    assert kiln.invoke(name, b"fine").status_code == 200
    r = kiln.invoke(name, b"crash")
    assert r.status_code == 502, r.text
    message = r.json()["error"]["message"]
    assert message.startswith(f"function {name!r} exited with code 3 during the call"), message
    assert "about to crash" in message
    assert "earlier call" not in message
    again = kiln.invoke(name, b"fine")  # a new container
    assert again.status_code == 200, again.text


@pytest.mark.parametrize("fdk", FDKS)
def test_hot_reuse(fdk: str, start_daemon: Callable[..., Daemon]) -> None:
    kiln = start_daemon(functions(fdk))
    name = f"{fdk}-request-info"
    answers = [kiln.invoke(name, b"x") for _ in range(5)]
    assert all(a.status_code == 200 for a in answers)
    assert [a.json()["calls"] for a in answers] == [1, 2, 3, 4, 5]
    assert len({a.json()["pid"] for a in answers}) == 1
    assert answers[0].headers.get("kiln-cold") == "1"
    assert all("kiln-cold" not in a.headers for a in answers[1:])


@pytest.mark.parametrize("fdk", FDKS)
def test_min_warm_container_idle_past_its_connection_then_called(
    fdk: str, docker: httpx.Client, start_daemon: Callable[..., Daemon]
) -> None:
    """A short connection idle time stands in for the FDKs' own timers (the slow test
    below waits those out): after a call, the idle container's connection is closed,
    the container stays quiet, and the next call dials again and works."""
    name = f"{fdk}-request-info"
    kiln = start_daemon(
        {name: fn(fdk, "request_info", min_warm=1, idle_timeout=300)},
        daemon={"hot_connection_idle": 0.2},
    )
    cid = wait_running(docker, kiln, name)
    first = kiln.invoke(name, b"first")
    assert first.status_code == 200, first.text
    assert "kiln-cold" not in first.headers  # min_warm: started ahead of the call
    assert cpu_share(docker, cid, 3.0) < 0.05
    r = kiln.invoke(name, b"second")
    assert r.status_code == 200, r.text
    assert r.json()["calls"] == 2
    assert running(docker, kiln, name) == [cid]


@pytest.mark.slow
def test_min_warm_containers_idle_past_the_fdks_timers(
    docker: httpx.Client, start_daemon: Callable[..., Daemon]
) -> None:
    """The one slow test: both FDKs' containers, after a call, idle 80 s (fdk-python's
    timers give up on a silent connection at 60 s and spin a core once a served
    connection has idled 75 s; Node's server has its own) with the default connection
    handling; they stay quiet and answer the next call. (With the connection held open
    instead, fdk-python's container was measured at ~40 % of a core here, rising.)"""
    names = {fdk: f"{fdk}-request-info" for fdk in FDKS}
    kiln = start_daemon(
        {names[fdk]: fn(fdk, "request_info", min_warm=1, idle_timeout=600) for fdk in FDKS}
    )
    cids = {fdk: wait_running(docker, kiln, names[fdk]) for fdk in FDKS}
    for fdk in FDKS:
        r = kiln.invoke(names[fdk], b"before the idle period")
        assert r.status_code == 200, (fdk, r.text)
    deadline = time.monotonic() + 80
    time.sleep(max(0.0, deadline - 5 - time.monotonic()))  # the idle period under test
    shares = {fdk: cpu_share(docker, cids[fdk], 5.0) for fdk in FDKS}
    assert all(share < 0.05 for share in shares.values()), shares
    for fdk in FDKS:
        r = kiln.invoke(names[fdk], b"after the idle period")
        assert r.status_code == 200, (fdk, r.text)
        assert r.json()["calls"] == 2
        assert running(docker, kiln, names[fdk]) == [cids[fdk]]


def test_deploy_an_fn_func_yaml_and_invoke_it_with_the_cli(
    start_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    kiln = start_daemon({})
    func_yaml = tmp_path / "func.yaml"
    func_yaml.write_text(
        "schema_version: 20180708\n"
        "name: pyhello\n"
        "version: 0.0.1\n"
        "runtime: python\n"
        f"image: {IMAGES['python']}\n"
        "memory: 128\n"
        "config:\n  GREETING: hi\n"
        "triggers:\n- name: pyhello\n  type: http\n  source: /pyhello\n"
    )
    deployed = kiln.cli("deploy", str(func_yaml))
    assert deployed.returncode == 0, deployed.stderr
    assert b"created pyhello" in deployed.stdout
    assert b"runtime: ignored by Kiln" in deployed.stderr
    assert b"warning" not in deployed.stderr
    called = kiln.cli(
        "invoke", "pyhello", "-i", "--content-type", "application/json", stdin=b'{"name": "cli"}'
    )
    assert called.returncode == 0, called.stderr
    head, _, body = called.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"kiln-call-id: " in head.lower()
    assert json.loads(body) == {"message": "Hello cli"}
    shown = kiln.cli("show", "pyhello")
    assert b"memory          128 MiB" in shown.stdout
    assert b"GREETING=hi" in shown.stdout


def test_deploying_an_image_that_is_not_on_the_host_warns(
    start_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    kiln = start_daemon({})
    func_yaml = tmp_path / "func.yaml"
    func_yaml.write_text("name: nothere\nversion: 9.9.9\n")
    deployed = kiln.cli("deploy", str(func_yaml))
    assert deployed.returncode == 0, deployed.stderr
    assert b"'nothere:9.9.9' is not on this host: Kiln never pulls" in deployed.stderr
