"""The client's commands without a daemon: invoke's flags, show's output."""

from __future__ import annotations

import argparse
import io
import sys
from typing import Any

import httpx
import pytest

from kiln.cli import commands, parser
from kiln.cli.output import CliError
from kiln.units import MiB


def test_parse_header() -> None:
    assert commands.parse_header("X-Trace: abc d") == ("X-Trace", "abc d")
    assert commands.parse_header("X-Empty:") == ("X-Empty", "")
    for bad in ("no colon", ": v", " X: v"):
        with pytest.raises(CliError, match="'Name: value'"):
            commands.parse_header(bad)


class Recorder:
    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.calls: list[dict[str, Any]] = []

    def __call__(self, args: argparse.Namespace, method: str, path: str, **kw: Any) -> Any:
        self.calls.append({"method": method, "path": path, **kw})
        return self.response


class FakeStdout:
    def __init__(self) -> None:
        self.buffer = io.BytesIO()

    def flush(self) -> None:
        pass


def run_invoke(
    monkeypatch: pytest.MonkeyPatch, response: httpx.Response, *argv: str
) -> tuple[int, bytes, Recorder]:
    recorder = Recorder(response)
    out = FakeStdout()
    monkeypatch.setattr(commands, "request", recorder)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"body")))
    monkeypatch.setattr(sys, "stdout", out)
    args = parser.build_parser().parse_args(["invoke", *argv])
    code = args.func(args)
    return code, out.buffer.getvalue(), recorder


def test_invoke_sends_headers_and_content_type(monkeypatch: pytest.MonkeyPatch) -> None:
    response = httpx.Response(200, content=b"answer")
    code, out, rec = run_invoke(
        monkeypatch, response, "hello", "-H", "X-A: 1", "-H", "X-B: 2", "--content-type", "text/x"
    )
    assert (code, out) == (0, b"answer")
    (call,) = rec.calls
    assert call["path"] == "/functions/hello/invoke"
    assert call["content"] == b"body"
    assert call["headers"] == [("X-A", "1"), ("X-B", "2"), ("Content-Type", "text/x")]
    assert call["check"] is True


def test_invoke_include_shows_status_headers_and_call_id(monkeypatch: pytest.MonkeyPatch) -> None:
    response = httpx.Response(
        201, headers=[("kiln-call-id", "abc123"), ("x-custom", "1")], content=b"made"
    )
    code, out, rec = run_invoke(monkeypatch, response, "created", "-i")
    assert code == 0
    head, _, body = out.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 201 Created"
    assert "kiln-call-id: abc123" in lines
    assert "x-custom: 1" in lines
    assert body == b"made"
    assert rec.calls[0]["check"] is False


def test_invoke_include_of_an_error_exits_non_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    response = httpx.Response(502, content=b'{"error": {}}')
    code, out, _ = run_invoke(monkeypatch, response, "fail", "-i")
    assert code == 1
    assert out.startswith(b"HTTP/1.1 502 Bad Gateway\r\n")


def test_show_prints_sizes_and_env_lines(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    info = {
        "name": "hello",
        "source": "deployed",
        "spec": {"image": "i", "memory": 128 * MiB, "env": {"B": "2", "A": "x=y"}},
        "containers": [],
    }
    monkeypatch.setattr(commands, "request", Recorder(httpx.Response(200, json=info)))
    args = parser.build_parser().parse_args(["show", "hello"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "  memory          128 MiB\n" in out
    assert "  env\n    A=x=y\n    B=2\n" in out
