"""Function logs with a real daemon and real containers: per-call lines of hot and
stdio functions, following, cut and flood markers, the file mirror's rotation,
and the failed call's own lines."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import BUSYBOX, PYTHON, Daemon

pytestmark = pytest.mark.docker

CHATTY = r"""
import sys, threading, time
sys.path.insert(0, "/fn")
import fdk

def later(tag):
    time.sleep(1.0)
    print("between " + tag, flush=True)

def handle(body, headers):
    text = body.decode()
    if text == "long":
        print("x" * 3000, flush=True)
    elif text.startswith("flood"):
        for i in range(int(text[5:] or 3000)):
            print("flood line %d" % i)
        sys.stdout.flush()
    elif text == "fail":
        print("about to fail", file=sys.stderr, flush=True)
        raise RuntimeError("it failed on purpose")
    elif text.startswith("later"):
        threading.Thread(target=later, args=(text,)).start()
    print("out " + text, flush=True)
    print("err " + text, file=sys.stderr, flush=True)
    return b"ok"

fdk.serve(handle)
"""

FUNCTIONS: dict[str, dict[str, Any]] = {
    "chatty": {
        "image": PYTHON,
        "cmd": ["python3", "-c", CHATTY],
        "format": "http-stream",
        "memory": "64MiB",
        "max_containers": 1,
    },
    "calm": {
        "image": PYTHON,
        "cmd": ["python3", "-c", CHATTY],
        "format": "http-stream",
        "memory": "64MiB",
        "max_containers": 1,
    },
    "errs": {
        "image": BUSYBOX,
        "cmd": ["sh", "-c", "echo to-stderr-$(cat) >&2; echo done"],
        "memory": "32MiB",
    },
}

LOGS = {
    "max_line": "1KiB",
    "rate": 200,
    "burst": 500,
    "mirror": True,
    "file_size": "8KiB",
    "file_count": 2,
}


@pytest.fixture
def kiln(start_daemon: Callable[..., Daemon]) -> Daemon:
    return start_daemon(FUNCTIONS, logs=LOGS)


def lines(kiln: Daemon, name: str, **params: str) -> list[dict[str, Any]]:
    with kiln.control() as c:
        r = c.get(
            f"/functions/{name}/logs", params=params, headers={"Accept": "application/x-ndjson"}
        )
    assert r.status_code == 200, r.text
    return [json.loads(x) for x in r.text.splitlines()]


@pytest.fixture
def follow(
    kiln: Daemon,
) -> Iterator[Callable[[str, Callable[[dict[str, Any]], bool]], dict[str, Any]]]:
    """Follow a function's log (NDJSON) until a line matches; the stream stays open meanwhile."""
    clients: list[httpx.Client] = []

    def wait_for(name: str, match: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        client = kiln.control()
        clients.append(client)
        with client.stream(
            "GET",
            f"/functions/{name}/logs",
            params={"follow": "1"},
            headers={"Accept": "application/x-ndjson"},
        ) as r:
            for raw in r.iter_lines():
                line = json.loads(raw)
                if match(line):
                    return dict(line)
        raise AssertionError("the follow stream ended")

    yield wait_for
    for c in clients:
        c.close()


def test_lines_carry_their_call_ids(kiln: Daemon, follow: Any) -> None:
    a = kiln.invoke("chatty", b"A")
    b = kiln.invoke("chatty", b"B")
    assert a.status_code == 200, a.text
    assert b.status_code == 200, b.text
    id_a, id_b = a.headers["kiln-call-id"], b.headers["kiln-call-id"]
    follow("chatty", lambda x: x["text"] == "err B")
    got = [(x["call"], x["stream"], x["text"]) for x in lines(kiln, "chatty", call=id_a)]
    # stdout and stderr are separate pipes: their order against each other is not kept
    assert sorted(got) == [(id_a, "stderr", "err A"), (id_a, "stdout", "out A")]
    assert {x["call"] for x in lines(kiln, "chatty") if x["text"].endswith(" B")} == {id_b}
    # the CLI shows the same, as text
    out = kiln.cli("logs", "chatty", "--call", id_b)
    assert out.returncode == 0, out.stderr
    text = out.stdout.decode()
    assert f"{id_b} stdout: out B" in text
    assert f"{id_b} stderr: err B" in text
    assert "out A" not in text
    assert "kiln_call_id=" not in text  # Fn's log frames are swallowed
    # -n and --json
    last = kiln.cli("logs", "chatty", "-n", "1", "--json")
    [only] = [json.loads(x) for x in last.stdout.decode().splitlines()]
    assert only["text"] in ("out B", "err B")
    assert only["call"] == id_b


def test_stdio_stderr_has_the_call_id(kiln: Daemon) -> None:
    r = kiln.invoke("errs", b"x1")
    assert r.status_code == 200, r.text
    got = lines(kiln, "errs", call=r.headers["kiln-call-id"])
    assert [(x["stream"], x["text"]) for x in got] == [("stderr", "to-stderr-x1")]
    # `docker logs` has nothing: the containers log to the none driver


def test_lines_between_calls_have_no_call(kiln: Daemon, follow: Any) -> None:
    r = kiln.invoke("chatty", b"later1")
    assert r.status_code == 200
    line = follow("chatty", lambda x: x["text"] == "between later1")
    assert line["call"] is None
    assert line["stream"] == "stdout"


def test_follow_with_the_cli(kiln: Daemon) -> None:
    assert kiln.invoke("chatty", b"before").status_code == 200
    proc = subprocess.Popen(
        [sys.executable, "-m", "kiln.cli", "logs", "chatty", "-f", "--socket", kiln.socket],
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        # the backlog comes first: once it is out, the follower is attached
        for raw in proc.stdout:
            if b"stderr: err before" in raw:
                break
        assert kiln.invoke("chatty", b"live").status_code == 200
        for raw in proc.stdout:
            if b"stdout: out live" in raw:
                break
        else:
            raise AssertionError("kiln logs -f ended before the live line")
    finally:
        proc.terminate()
        proc.wait(10)


def test_long_lines_are_cut_with_a_marker(kiln: Daemon, follow: Any) -> None:
    r = kiln.invoke("chatty", b"long")
    assert r.status_code == 200
    line = follow("chatty", lambda x: x["text"].startswith("xxx"))
    assert line["text"] == "x" * 1024 + " …[kiln: line cut, 1976 more bytes]"


def test_flood_is_limited_with_a_counted_marker_and_others_stay_fast(
    kiln: Daemon, follow: Any
) -> None:
    r = kiln.invoke("chatty", b"flood3000")
    assert r.status_code == 200
    # a line a second later (the bucket has refilled by then) brings the marker
    assert kiln.invoke("chatty", b"later-flood").status_code == 200
    follow("chatty", lambda x: x["text"] == "between later-flood")
    got = lines(kiln, "chatty")
    markers = [x["text"] for x in got if x["stream"] == "kiln"]
    assert markers
    assert all("line(s) dropped: the function logged faster than 200 lines/s" in m for m in markers)
    dropped = sum(int(m.split()[1]) for m in markers)
    kept = [x for x in got if x["text"].startswith("flood line")]
    assert len(kept) + dropped >= 3000
    metrics = httpx.get(f"{kiln.url}/metrics").text
    assert f'kiln_function_log_lines_dropped_total{{function="chatty"}} {float(dropped)}' in metrics
    assert len(kept) < 3000
    # another function's calls are not held up by the flood
    t0 = time.monotonic()
    assert kiln.invoke("calm", b"quick").status_code == 200
    assert kiln.invoke("calm", b"quick").status_code == 200
    assert time.monotonic() - t0 < 10


def test_file_mirror_rotates(kiln: Daemon, follow: Any) -> None:
    for i in range(20):
        assert kiln.invoke("chatty", b"rotate-%d-" % i + b"y" * 600).status_code == 200
    follow("chatty", lambda x: x["text"].startswith("err rotate-19-"))
    state = Path(kiln.config_path.parent / f"{kiln.daemon_id}-state" / "logs")
    files = sorted(p.name for p in state.iterdir())
    assert files == ["chatty.log", "chatty.log.1"]
    for p in state.iterdir():
        assert p.stat().st_size <= 8192
    assert "rotate-19-" in (state / "chatty.log").read_text()


def test_failed_call_lines_are_kept_for_its_id(kiln: Daemon, follow: Any) -> None:
    r = kiln.invoke("chatty", b"fail")
    assert r.status_code == 502
    assert "it failed on purpose" in r.json()["error"]["message"]
    call = r.headers["kiln-call-id"]
    follow("chatty", lambda x: "RuntimeError" in x["text"])
    text = kiln.cli("logs", "chatty", "--call", call).stdout.decode()
    assert "about to fail" in text
    assert "Traceback" in text


def test_unknown_function_and_bad_query(kiln: Daemon) -> None:
    with kiln.control() as c:
        assert c.get("/functions/nope/logs").status_code == 404
        r = c.get("/functions/chatty/logs", params={"since": "yesterday"})
        assert r.status_code == 400
        assert "since" in r.json()["error"]["message"]
