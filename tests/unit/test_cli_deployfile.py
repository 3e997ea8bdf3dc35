"""The TOML files ``kiln deploy`` reads (Fn's func.yaml: tests/unit/test_fnyaml.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.cli.deployfile import read_deploy_file
from kiln.cli.output import CliError


def write(tmp_path: Path, text: str | bytes, name: str = "f.toml") -> str:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return str(path)


def test_one_function_with_a_name(tmp_path: Path) -> None:
    path = write(tmp_path, 'name = "hello"\nimage = "i"\n')
    assert read_deploy_file(path) == {"hello": {"image": "i"}}


def test_functions_tables(tmp_path: Path) -> None:
    path = write(tmp_path, '[functions.a]\nimage = "i"\n[functions.b]\nimage = "j"\n')
    assert read_deploy_file(path) == {"a": {"image": "i"}, "b": {"image": "j"}}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('image = "i"\n', "give the function a name"),
        ('x = 1\n[functions.a]\nimage = "i"\n', r"under \[functions.NAME\] and nothing else"),
        ('name = "a"\nimage = "i"\ntimout = 3\n', "timout"),
        (b'name = "\xff"\n', "not UTF-8 text"),
    ],
)
def test_bad_files_are_cli_errors_naming_the_file(
    tmp_path: Path, text: str | bytes, message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(CliError, match=message) as e:
        read_deploy_file(path)
    assert path in str(e.value)


def test_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CliError, match="cannot read"):
        read_deploy_file(str(tmp_path / "none.toml"))
