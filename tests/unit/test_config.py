"""Config validation: every bad value is refused with its key path named."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.config import ConfigError, load, parse
from kiln.units import MiB

REPO = Path(__file__).resolve().parents[2]


def fn(**kw: object) -> dict[str, object]:
    return {"functions": {"echo": {"image": "busybox", **kw}}}


def test_example_config_loads() -> None:
    config = load(REPO / "config.example.toml")
    echo = config.functions["echo"]
    assert echo.cmd == ("cat",)
    assert echo.memory == 32 * MiB
    assert config.daemon.listen == "127.0.0.1:8080"
    assert config.daemon.max_body == 6 * MiB
    assert config.limits.memory is None  # "auto"


def test_defaults() -> None:
    config = parse(fn())
    echo = config.functions["echo"]
    assert echo.format == "stdio"
    assert echo.memory == 128 * MiB
    assert echo.timeout == 30
    assert echo.cmd is None
    assert dict(echo.env) == {}
    assert config.docker.socket == "/var/run/docker.sock"


def test_sizes_and_env() -> None:
    config = parse(fn(memory="1GiB", env={"A": "1", "B": 2}, timeout=2.5, cmd=["sh", "-c", "x"]))
    echo = config.functions["echo"]
    assert echo.memory == 1024 * MiB
    assert dict(echo.env) == {"A": "1", "B": "2"}
    assert echo.timeout == 2.5
    assert echo.cmd == ("sh", "-c", "x")


@pytest.mark.parametrize(
    ("raw", "path", "words"),
    [
        ({"daemon": {"listne": "x"}}, "daemon.listne", "unknown key"),
        ({"bogus": {}}, "bogus", "unknown key"),
        (fn(imgae="x"), "functions.echo.imgae", "unknown key"),
        (fn(memory="-5MiB"), "functions.echo.memory", "negative"),
        (fn(memory=-5), "functions.echo.memory", "at least"),
        (fn(memory="lots"), "functions.echo.memory", "not a size"),
        (fn(memory="12 parsecs"), "functions.echo.memory", "unknown unit"),
        (fn(memory="1MiB"), "functions.echo.memory", "at least"),
        (fn(format="json"), "functions.echo.format", "must be one of"),
        (fn(timeout="10"), "functions.echo.timeout", "must be a number"),
        (fn(timeout=0), "functions.echo.timeout", "above 0"),
        (fn(cmd="cat"), "functions.echo.cmd", "list of strings"),
        (fn(cmd=["cat", 1]), "functions.echo.cmd", "list of strings"),
        (fn(env={"A": True}), "functions.echo.env.A", "must be a string"),
        (fn(env="A=1"), "functions.echo.env", "table"),
        (fn(rate="fast"), "functions.echo.rate", "not a rate"),
        (fn(min_warm=5, max_containers=2), "functions.echo.min_warm", "max_containers"),
        ({"functions": {"echo": {"cmd": ["cat"]}}}, "functions.echo.image", "required"),
        ({"functions": {"Bad Name": {"image": "x"}}}, "functions.Bad Name", "function name"),
        ({"functions": {"echo": "busybox"}}, "functions.echo", "must be a table"),
        ({"daemon": {"listen": "8080"}}, "daemon.listen", "HOST:PORT"),
        ({"daemon": {"max_body": "huge"}}, "daemon.max_body", "not a size"),
        ({"limits": {"queue_max": -1}}, "limits.queue_max", "at least 0"),
        ({"limits": {"async_fraction": 2}}, "limits.async_fraction", "at most 1"),
        ({"docker": {"create_rate": 0}}, "docker.create_rate", "above 0"),
    ],
)
def test_bad_config_names_key(raw: dict[str, object], path: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(raw)
    assert info.value.path == path
    assert words in str(info.value)
    assert str(info.value).startswith(path + ":")


def test_unreadable_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[daemon\nlisten=1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(bad)


def test_spec_round_trips_through_json() -> None:
    from kiln.functions.spec import parse_function

    spec = parse(fn(memory="64MiB", rate="5/s", cpus=0.5, env={"K": "v"})).functions["echo"]
    assert parse_function("echo", spec.to_json(), "functions.echo") == spec
