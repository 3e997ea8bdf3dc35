"""The CLI's requests to the control socket: which socket, a daemon that is not
there, an error answer as one line."""

from __future__ import annotations

import argparse
from pathlib import Path

import httpx
import pytest

from kiln.cli.client import DEFAULT_SOCKET, http_error, request, socket_path
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


def test_an_error_answer_is_the_daemons_message_and_code() -> None:
    response = httpx.Response(404, json={"error": {"message": "no 'x'", "code": "not_found"}})
    assert str(http_error(response, strip=True)) == "no 'x' (not_found, HTTP 404)"


def test_an_error_answer_without_an_error_body_is_the_status_and_text() -> None:
    response = httpx.Response(502, text="  bad gateway\n")
    assert str(http_error(response, strip=True)) == "HTTP 502: bad gateway"
    assert str(http_error(response, strip=False)) == "HTTP 502:   bad gateway\n"
