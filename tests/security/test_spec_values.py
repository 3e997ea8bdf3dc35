"""Every value a function spec or a config can carry is either refused, naming its
key, or one every consumer downstream takes (Docker's create body, the rate
limiter, Trio's clock). No other exception escapes the readers."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kiln.admission.ratelimit import InvokeRateLimiter
from kiln.config import ConfigError, load, parse
from kiln.containers.spec import Identity, container_config
from kiln.functions.policy import HostPolicy
from kiln.functions.spec import FunctionSpec, parse_function
from kiln.units import GiB, MiB
from tests.security.specfuzz import HUGE, SPEC_KEYS, json_values

BAD_FUNCTION_VALUES: list[tuple[str, Any]] = [
    ("rate", math.inf),
    ("rate", math.nan),
    ("rate", -math.inf),
    ("rate", 1e300),
    ("rate", HUGE),
    ("rate", "9" * 400 + "/s"),
    ("timeout", math.nan),
    ("timeout", math.inf),
    ("timeout", HUGE),
    ("timeout", 1e300),
    ("start_timeout", math.nan),
    ("idle_timeout", math.nan),
    ("idle_timeout", math.inf),
    ("cpus", math.inf),
    ("cpus", math.nan),
    ("cpus", 1e300),
    ("cpus", 0.001),
    ("pids_limit", 2**63),
    ("pids_limit", HUGE),
    ("min_warm", HUGE),
    ("max_containers", 2**63),
    ("memory", HUGE),
    ("memory", 2**63),
    ("memory", "9" * 400 + "TiB"),
    ("memory", "2PiB"),
    ("image", "busy\x00box"),
    ("image", "busy box"),
    ("image", "x" * 600),
    ("cmd", ["cat", "a\x00b"]),
    ("env", {"A": "x\x00y"}),
    ("env", {"A\x00B": "x"}),
    ("env", {"A": math.nan}),
    ("env", {"A": math.inf}),
    ("network", "host"),
    ("network", "container:abc"),
    ("network", "a\x00b"),
    ("network", "-bad"),
    ("user", "root\x00"),
    ("user", "a b"),
    ("user", ""),
    ("user", 1000),
]


@pytest.mark.parametrize(("key", "value"), BAD_FUNCTION_VALUES)
def test_bad_function_value_is_refused_naming_the_key(key: str, value: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_function("f", {"image": "busybox", key: value}, "functions.f")
    assert caught.value.path.startswith(f"functions.f.{key}")
    assert len(str(caught.value)) < 400  # a huge value is not echoed whole


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("rate = inf", "rate"),
        ("rate = nan", "rate"),
        ("timeout = nan", "timeout"),
        ("cpus = inf", "cpus"),
        ("cpus = 1e300", "cpus"),
        ("idle_timeout = -inf", "idle_timeout"),
        ("start_timeout = nan", "start_timeout"),
        ("pids_limit = 9223372036854775807", "pids_limit"),
        ('image = "a\\u0000b"', "image"),
        ('env = { A = "\\u0000" }', "env.A"),
        ('network = "host"', "network"),
        ('network = "container:x"', "network"),
        ('network = "mynet"', "network"),
    ],
)
def test_bad_toml_function_value_is_refused(tmp_path: Any, toml: str, key: str) -> None:
    path = tmp_path / "k.toml"
    image = "" if toml.startswith("image") else 'image = "busybox"\n'
    path.write_text(f"[functions.f]\n{image}{toml}\n")
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert f"functions.f.{key}" in str(caught.value)


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("daemon", "drain_timeout", math.nan),
        ("daemon", "drain_timeout", math.inf),
        ("daemon", "max_body", HUGE),
        ("daemon", "state_dir", "/var/\x00lib"),
        ("daemon", "run_dir", "/run/\x00"),
        ("daemon", "control_socket", "/run/" + "x" * 200),
        ("daemon", "listen", "127.0.0.1:80\x00"),
        ("daemon", "id", "x" * 100),
        ("docker", "timeout", math.nan),
        ("docker", "create_rate", math.inf),
        ("docker", "create_burst", HUGE),
        ("docker", "max_inflight", 2**40),
        ("docker", "socket", "/var/run/\x00docker.sock"),
        ("limits", "queue_wait", math.nan),
        ("limits", "queue_max", HUGE),
        ("limits", "async_fraction", math.nan),
        ("limits", "memory", HUGE),
        ("limits", "networks", ["host"]),
        ("limits", "networks", ["container:x"]),
        ("limits", "networks", "mynet"),
    ],
)
def test_bad_config_value_is_refused_naming_the_key(section: str, key: str, value: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        parse({section: {key: value}})
    assert caught.value.path.startswith(f"{section}.{key}")


def test_networks_the_operator_lists_are_allowed() -> None:
    config = parse(
        {
            "limits": {"networks": ["mynet"]},
            "functions": {
                "a": {"image": "busybox", "network": "mynet"},
                "b": {"image": "busybox", "network": "bridge"},
                "c": {"image": "busybox"},
            },
        }
    )
    assert [f.network for f in config.functions.values()] == ["mynet", "bridge", "none"]
    policy = HostPolicy(GiB, networks=config.limits.networks)
    assert all(policy.problem(f) is None for f in config.functions.values())
    other = FunctionSpec(name="d", image="busybox", network="othernet")
    problem = policy.problem(other)
    assert problem is not None
    assert problem.startswith("functions.d.network:")


def test_deeply_nested_documents_are_refused() -> None:
    deep: Any = "x"
    for _ in range(200):
        deep = [deep]
    with pytest.raises(ConfigError, match="nested"):
        parse({"functions": {"f": {"image": "busybox", "cmd": deep}}})


def test_toml_that_python_cannot_read_is_a_config_error(tmp_path: Any) -> None:
    for text in ("a = " + "[" * 5000, "a = " + "9" * 5000, b"\xff\xfe".decode("latin-1")):
        path = tmp_path / "k.toml"
        path.write_text(text)
        with pytest.raises(ConfigError):
            load(path)
    path.write_bytes(b'[daemon]\nid = "\xff"\n')
    with pytest.raises(ConfigError, match="UTF-8"):
        load(path)


def test_user_defaults_to_non_root_and_is_overridable() -> None:
    assert parse_function("f", {"image": "busybox"}, "f").user == "1000:1000"
    spec = parse_function("f", {"image": "busybox", "user": "0"}, "f")
    assert spec.user == "0"
    assert container_config(spec, Identity("d"), stdio=True)["User"] == "0"
    assert parse_function("f", spec.to_json(), "f") == spec


# ---- property: whatever the reader accepts, the consumers take --------------------



@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(SPEC_KEYS), json_values, max_size=6))
def test_accepted_specs_are_ones_docker_and_kiln_take(mutation: dict[str, Any]) -> None:
    raw = {"image": "busybox", **mutation}
    try:
        spec = parse_function("f", raw, "functions.f")
    except ConfigError as e:
        refused: ConfigError | None = e
    else:
        refused = None
    if refused is not None:
        assert refused.path.startswith("functions.f")
        return
    for stdio in (True, False):
        body = container_config(spec, Identity("d"), stdio=stdio)
        text = json.dumps(body, allow_nan=False)  # finite numbers only
        assert "\\u0000" not in text
        host = body["HostConfig"]
        for field in ("Memory", "MemorySwap", "PidsLimit", "NanoCpus"):
            if field in host:
                assert 0 < host[field] < 2**63
        assert host["NetworkMode"] not in ("host",)
        assert ":" not in host["NetworkMode"]
        assert body["User"]
    for seconds in (spec.timeout, spec.start_timeout, spec.idle_timeout):
        assert math.isfinite(seconds)
        assert 0 <= seconds <= 86400
    if spec.rate is not None:
        InvokeRateLimiter(spec.rate, name=spec.name)
    assert spec.memory >= 6 * MiB
    assert parse_function("f", spec.to_json(), "functions.f") == spec
