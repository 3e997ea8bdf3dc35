"""What the CLI prints: tables, ``--json``, times."""

from __future__ import annotations

import argparse
import json

import pytest

from kiln.cli.output import emit, table, when


def test_table_pads_columns_to_the_widest_cell_and_upper_cases_the_header() -> None:
    rows = [{"name": "hello", "calls": 3}, {"name": "a", "calls": 12345}]
    assert table(rows, ["name", "calls"]).split("\n") == [
        "NAME   CALLS",
        "hello  3",
        "a      12345",
    ]


def test_table_leaves_missing_cells_blank_and_says_none_when_empty() -> None:
    assert table([{"a": "x"}], ["a", "b"]) == "A  B\nx"
    assert table([], ["a"]) == "(none)"


def test_emit_prints_json_or_the_human_text(capsys: pytest.CaptureFixture[str]) -> None:
    emit(argparse.Namespace(json=True), {"k": [1]}, "human")
    assert json.loads(capsys.readouterr().out) == {"k": [1]}
    emit(argparse.Namespace(json=False), {"k": [1]}, "human")
    assert capsys.readouterr().out == "human\n"


def test_when_is_utc_rfc3339_or_blank() -> None:
    assert when(0.0) == "1970-01-01T00:00:00Z"
    assert when(None) == ""
