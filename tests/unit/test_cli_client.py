"""The CLI's requests to the control socket: which socket, and a daemon that is not there."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from kiln.cli.client import DEFAULT_SOCKET, request, socket_path
from kiln.cli.output import CliError


def test_socket_from_the_option_then_the_environment_then_the_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KILN_SOCKET", "/env.sock")
    assert socket_path(argparse.Namespace(socket="/opt.sock")) == "/opt.sock"
    assert socket_path(argparse.Namespace(socket=None)) == "/env.sock"
    monkeypatch.delenv("KILN_SOCKET")
    assert socket_path(argparse.Namespace(socket=None)) == DEFAULT_SOCKET


def test_no_daemon_is_a_cli_error_naming_the_socket(tmp_path: Path) -> None:
    sock = str(tmp_path / "none.sock")
    with pytest.raises(CliError, match="is the service running"):
        request(argparse.Namespace(socket=sock), "GET", "/status")
