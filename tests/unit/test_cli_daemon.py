"""``kiln daemon --check``: a config checked as the daemon would, without starting it."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.cli import parser


def test_check_of_a_good_config_says_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "kiln.toml"
    path.write_text("")
    assert parser.main(["daemon", "--check", "--config", str(path)]) == 0
    assert capsys.readouterr().out == f"{path}: ok (0 function(s))\n"


def test_check_of_a_bad_config_exits_2_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "kiln.toml"
    path.write_text("nonsense = [\n")
    assert parser.main(["daemon", "--check", "--config", str(path)]) == 2
    assert capsys.readouterr().err.startswith(f"kiln: bad config: {path}: not valid TOML")
