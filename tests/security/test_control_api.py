"""Bad specs against a live daemon's control API: every one is a 400 naming the
key, nothing is persisted, no traceback is logged, the daemon keeps answering,
and a persisted spec that no longer validates never stops a start."""

from __future__ import annotations

import json
import math
import secrets
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.conftest import BUSYBOX, REPO, Daemon, kiln_containers, write_config
from tests.security.specfuzz import SPEC_KEYS, json_values

pytestmark = pytest.mark.docker

MISSING_IMAGE = "kiln-test/not-there:never"  # a deploy that slips through starts nothing


def state_files(kiln: Daemon) -> dict[str, bytes]:
    config = kiln.config_path.read_text()
    state_dir = Path(config.split('state_dir = "', 1)[1].split('"', 1)[0]) / "functions"
    if not state_dir.is_dir():
        return {}
    return {p.name: p.read_bytes() for p in sorted(state_dir.iterdir())}


def assert_healthy(kiln: Daemon) -> None:
    with kiln.control() as control:
        assert control.get("/status").status_code == 200
    assert "Traceback" not in kiln.log()
    assert " ERROR " not in kiln.log()


RAW_BODIES: list[tuple[bytes, str]] = [
    (b'{"image": "x", "rate": Infinity}', "functions.bad.rate"),
    (b'{"image": "x", "rate": NaN}', "functions.bad.rate"),
    (b'{"image": "x", "rate": -Infinity}', "functions.bad.rate"),
    (b'{"image": "x", "timeout": NaN}', "functions.bad.timeout"),
    (b'{"image": "x", "cpus": 1e300}', "functions.bad.cpus"),
    (b'{"image": "x", "cpus": 1e400}', "functions.bad.cpus"),  # JSON's 1e400 is inf
    (b'{"image": "x", "idle_timeout": NaN}', "functions.bad.idle_timeout"),
    (b'{"image": "x", "start_timeout": Infinity}', "functions.bad.start_timeout"),
    (b'{"image": "x", "pids_limit": 9223372036854775808}', "functions.bad.pids_limit"),
    (b'{"image": "x", "memory": 1' + b"0" * 4000 + b"}", "functions.bad.memory"),
    (b'{"image": "x", "timeout": 1' + b"0" * 4000 + b"}", "functions.bad.timeout"),
    (b'{"image": "x\\u0000y"}', "functions.bad.image"),
    (b'{"image": "x", "env": {"A": "\\u0000"}}', "functions.bad.env.A"),
    (b'{"image": "x", "cmd": ["sh", "-c\\u0000"]}', "functions.bad.cmd[1]"),
    (b'{"image": "x", "network": "host"}', "functions.bad.network"),
    (b'{"image": "x", "network": "container:abc"}', "functions.bad.network"),
    (b'{"image": "x", "network": "somebodys-net"}', "functions.bad.network"),
    (b'{"image": "x", "memory": "999999TiB"}', "functions.bad.memory"),
    (b"[" * 100_000, "JSON"),
    (b'{"a":' * 5000 + b"1" + b"}" * 5000, "JSON"),
    (b'{"image": ' + b"[" * 500 + b"]" * 500 + b"}", "JSON"),
    (b'{"image": "x", "memory": 1' + b"0" * 5000 + b"}", "JSON"),  # beyond int's digit limit
    (b"\xff\xfe{}", "JSON"),
]


def test_bad_specs_are_refused_and_persist_nothing(start_daemon: Callable[..., Daemon]) -> None:
    kiln = start_daemon({})
    before = state_files(kiln)
    with kiln.control() as control:
        for body, named in RAW_BODIES:
            r = control.put("/functions/bad", content=body)
            assert r.status_code == 400, (body[:80], r.text)
            assert named in r.json()["error"]["message"], (body[:80], r.text)
            assert len(r.content) < 2000
            assert state_files(kiln) == before, body[:80]
        assert control.get("/functions/bad").status_code == 404
        r = control.post("/functions/x/scale", json={"max_containers": 10**30})
        assert r.status_code in (400, 404)
    assert_healthy(kiln)


spec_keys = st.sampled_from([*SPEC_KEYS, "bogus"])


def test_fuzzed_specs_never_cause_a_5xx(start_daemon: Callable[..., Daemon]) -> None:
    kiln = start_daemon({})
    control = kiln.control()
    statuses: dict[int, int] = {}

    @settings(
        max_examples=150,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(st.dictionaries(spec_keys, json_values, min_size=1, max_size=2))
    def deploy(mutation: dict[str, Any]) -> None:
        spec = {"image": MISSING_IMAGE, **mutation}
        before = state_files(kiln)
        r = control.put("/functions/fuzz", content=json.dumps(spec).encode())
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        assert r.status_code in (200, 201, 400), r.text
        if r.status_code == 400:
            assert state_files(kiln) == before
        else:
            assert control.delete("/functions/fuzz").status_code == 200

    try:
        deploy()
    finally:
        control.close()
    assert statuses.get(400, 0) > 0
    assert_healthy(kiln)


def test_persisted_spec_that_no_longer_validates_is_skipped(
    start_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemon_id = "tskip" + secrets.token_hex(3)
    state = tmp_path / f"{daemon_id}-state" / "functions"
    state.mkdir(parents=True)
    good = {"image": BUSYBOX, "cmd": ["cat"], "memory": "32MiB"}
    (state / "good.json").write_text(json.dumps(good))
    bad = {
        "inf.json": '{"image": "x", "rate": Infinity}',
        "nan.json": '{"image": "x", "timeout": NaN}',
        "host.json": json.dumps({"image": "x", "network": "host"}),
        "toobig.json": json.dumps({"image": "x", "memory": "1000TiB"}),
        "nul.json": json.dumps({"image": "x\x00"}),
        "deep.json": "[" * 100_000,
        "notjson.json": "{",
        "BadName.json": json.dumps(good),
    }
    for name, text in bad.items():
        (state / name).write_text(text)
    kiln = start_daemon({}, daemon_id=daemon_id)
    for name in bad:
        assert kiln.wait_log(f"skipping persisted function {state / name}: ", timeout=1), name
    assert kiln.invoke("good", b"still here").content == b"still here"
    with kiln.control() as control:
        names = [f["name"] for f in control.get("/functions").json()]
    assert names == ["good"]
    assert "Traceback" not in kiln.log()


@pytest.mark.parametrize(
    ("function", "limits", "refused"),
    [
        ({"rate": math.inf}, {}, "functions.f.rate"),
        ({"timeout": math.nan}, {}, "functions.f.timeout"),
        ({"network": "host"}, {}, "functions.f.network"),
        ({"network": "mynet"}, {}, "functions.f.network"),
        ({"memory": "900TiB"}, {}, "functions.f.memory"),
        ({"cpus": 1000}, {}, "functions.f.cpus"),
        ({}, {"networks": ["host"]}, "limits.networks[0]"),
        ({"network": "mynet"}, {"networks": ["mynet"]}, None),
    ],
)
def test_check_accepts_exactly_what_the_daemon_runs(
    tmp_path: Path, function: dict[str, Any], limits: dict[str, Any], refused: str | None
) -> None:
    path = tmp_path / "k.toml"
    sections: dict[str, dict[str, Any]] = {
        "daemon": {
            "listen": "127.0.0.1:1",
            "state_dir": str(tmp_path / "state"),
            "run_dir": str(tmp_path / "run"),
            "control_socket": str(tmp_path / "c.sock"),
        },
        "limits": limits,
        "functions.f": {"image": BUSYBOX, **function},
    }
    write_config(path, sections)
    text = path.read_text().replace("Infinity", "inf").replace("NaN", "nan")
    path.write_text(text)
    checked = subprocess.run(
        [sys.executable, "-m", "kiln.cli", "daemon", "--config", str(path), "--check"],
        capture_output=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    if refused is None:
        assert checked.returncode == 0, checked.stderr
        return
    assert checked.returncode == 2, checked.stdout
    assert refused in checked.stderr.decode()
    assert b"Traceback" not in checked.stderr
    # ... and the daemon refuses the same file at start, with one line and no traceback.
    started = subprocess.run(
        [sys.executable, "-m", "kiln.cli", "daemon", "--config", str(path)],
        capture_output=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert started.returncode != 0
    assert refused in started.stderr.decode()
    assert b"Traceback" not in started.stderr


def test_functions_run_as_non_root_by_default(
    start_daemon: Callable[..., Daemon], docker: httpx.Client
) -> None:
    kiln = start_daemon(
        {
            "who": {"image": BUSYBOX, "cmd": ["id", "-u"], "memory": "16MiB"},
            "root": {"image": BUSYBOX, "cmd": ["id", "-u"], "memory": "16MiB", "user": "0"},
        }
    )
    assert kiln.invoke("who").content.strip() == b"1000"
    assert kiln.invoke("root").content.strip() == b"0"
    assert kiln_containers(docker, kiln.daemon_id) == []
