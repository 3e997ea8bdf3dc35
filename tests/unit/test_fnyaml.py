"""Fn's func.yaml read as a Kiln function: the fields, the ignored ones, the bad ones named."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.cli import CliError, read_deploy_file
from kiln.config import load
from kiln.functions.fnyaml import from_fn, load_fn_yaml
from kiln.functions.spec import parse_function
from kiln.functions.validate import ConfigError
from kiln.units import MiB

#: What `fn init --runtime python` writes, plus config and the timeouts.
FN_INIT = """\
schema_version: 20180708
name: pyfn
version: 0.0.1
runtime: python
build_image: fnproject/python:3.11-dev
run_image: fnproject/python:3.11
entrypoint: /python/bin/fdk /function/func.py handler
memory: 256
timeout: 60
idle_timeout: 120
config:
  GREETING: hi
  RETRIES: 3
triggers:
- name: pyfn
  type: http
  source: /pyfn
"""


def write(tmp_path: Path, text: str, name: str = "func.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_fn_init_file_round_trips(tmp_path: Path) -> None:
    fn = load_fn_yaml(write(tmp_path, FN_INIT))
    spec = parse_function(fn.name, fn.table, "f")
    assert spec.name == "pyfn"
    assert spec.image == "pyfn:0.0.1"
    assert spec.memory == 256 * MiB
    assert (spec.timeout, spec.idle_timeout) == (60, 120)
    assert dict(spec.env) == {"GREETING": "hi", "RETRIES": "3"}
    assert spec.format == "http-stream"
    assert parse_function(spec.name, spec.to_json(), "again") == spec
    assert fn.ignored == (
        "schema_version",
        "runtime",
        "build_image",
        "run_image",
        "entrypoint",
        "triggers",
    )
    assert fn.notes()[1] == "runtime: ignored by Kiln (a build hint for fn build)"


def test_defaults_are_fns() -> None:
    spec = parse_function("x", from_fn({"name": "x", "image": "img"}).table, "f")
    assert (spec.image, spec.memory, spec.timeout, spec.idle_timeout) == ("img", 128 * MiB, 30, 30)
    assert spec.format == "http-stream"


def test_image_wins_over_name_and_version() -> None:
    fn = from_fn({"name": "x", "version": "1.2", "image": "reg.local/x:7"})
    assert fn.table["image"] == "reg.local/x:7"
    assert from_fn({"name": "x"}).table["image"] == "x"


def test_format_default_is_stdio() -> None:
    assert from_fn({"name": "x", "format": "default"}).table["format"] == "stdio"


def test_kiln_table_carries_kilns_own_keys() -> None:
    fn = from_fn({"name": "x", "kiln": {"min_warm": 1, "max_containers": 3, "cmd": ["created"]}})
    spec = parse_function("x", fn.table, "f")
    assert (spec.min_warm, spec.max_containers, spec.cmd) == (1, 3, ("created",))


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"name": "x", "memroy": 64}, "memroy: unknown key"),
        ({"name": "x", "memory": "128MiB"}, "memory: is in MiB, as in Fn"),
        ({"name": "x", "memory": 2}, "memory: must be at least 6"),
        ({"name": "x", "timeout": 0}, "timeout: must be above 0"),
        ({"name": "x", "format": "json"}, "format: must be one of 'http-stream', 'default'"),
        ({"name": "x", "config": ["A=1"]}, "config: must be a table"),
        ({"name": "x", "config": {"A": {"b": 1}}}, "config.A: must be a string"),
        ({"name": "Bad Name"}, "name: function name 'Bad Name' must be"),
        ({"image": "x"}, "name: is required"),
        ({"name": "x", "kiln": {"memory": 64}}, "kiln.memory: is Fn's field"),
        ({"name": "x", "kiln": {"warm": 1}}, "kiln.warm: unknown key (Kiln's keys here: cmd"),
        ({"name": "x", "kiln": {"min_warm": -1}}, "kiln.min_warm: must be at least 0"),
        ([1, 2], "must be a table, got a list"),
        (None, "the file is empty"),
    ],
)
def test_bad_fields_are_named(raw: object, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        from_fn(raw)
    assert message in str(e.value)


def test_bad_yaml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"func\.yaml: not valid YAML"):
        load_fn_yaml(path)


def test_a_bad_field_names_the_file_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, "name: x\nmemory: lots\n")
    with pytest.raises(ConfigError) as e:
        load_fn_yaml(path)
    assert str(e.value).startswith(f"{path}: memory: is in MiB")


def test_cli_deploy_reads_func_yaml_and_says_what_it_ignores(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, FN_INIT)
    out = read_deploy_file(str(path))
    assert list(out) == ["pyfn"]
    assert out["pyfn"]["memory"] == 256 * MiB
    err = capsys.readouterr().err
    assert "triggers: ignored by Kiln" in err
    assert "build_image: ignored by Kiln" in err


def test_cli_deploy_names_a_bad_field(tmp_path: Path) -> None:
    path = write(tmp_path, "name: x\nimage: i\ntimout: 3\n", name="f.yml")
    with pytest.raises(CliError, match="timout: unknown key"):
        read_deploy_file(str(path))


def test_config_from_func_yaml(tmp_path: Path) -> None:
    write(tmp_path, FN_INIT, name="pyfn.yaml")
    config = write(
        tmp_path,
        '[functions.hello]\nfrom = "pyfn.yaml"\nmin_warm = 1\nenv = { GREETING = "hello" }\n',
        name="kiln.toml",
    )
    spec = load(config).functions["hello"]
    assert spec.name == "hello"
    assert spec.image == "pyfn:0.0.1"
    assert spec.memory == 256 * MiB
    assert spec.min_warm == 1
    assert dict(spec.env) == {"GREETING": "hello", "RETRIES": "3"}


def test_config_from_a_bad_func_yaml_names_both(tmp_path: Path) -> None:
    write(tmp_path, "name: x\nmemory: -1\n", name="bad.yaml")
    config = write(tmp_path, '[functions.f]\nfrom = "bad.yaml"\n', name="kiln.toml")
    with pytest.raises(ConfigError) as e:
        load(config)
    assert str(e.value).startswith("functions.f.from: ")
    assert "bad.yaml: memory: must be at least 6" in str(e.value)


def test_config_from_a_missing_file(tmp_path: Path) -> None:
    config = write(tmp_path, '[functions.f]\nfrom = "nope.yaml"\n', name="kiln.toml")
    with pytest.raises(ConfigError, match=r"functions\.f\.from: .*nope\.yaml: cannot read"):
        load(config)
