"""The ``kiln`` command's arguments: the client's options before or after the subcommand."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.cli import parser


@pytest.mark.parametrize(
    "argv",
    [
        ["--socket", "/x.sock", "--json", "ls"],
        ["ls", "--socket", "/x.sock", "--json"],
        ["-s", "/x.sock", "ls", "--json"],
        ["--json", "ls", "-s", "/x.sock"],
    ],
)
def test_client_options_before_or_after_the_subcommand(argv: list[str]) -> None:
    args = parser.build_parser().parse_args(argv)
    assert (args.socket, args.json, args.command) == ("/x.sock", True, "ls")


def test_defaults_without_options() -> None:
    args = parser.build_parser().parse_args(["ls"])
    assert (args.socket, args.json) == (None, False)


def test_main_prints_a_cli_error_as_one_line_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert parser.main(["status", "--socket", str(tmp_path / "none.sock")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"kiln: cannot reach kiln at {tmp_path / 'none.sock'}: ")
    assert err.count("\n") == 1
