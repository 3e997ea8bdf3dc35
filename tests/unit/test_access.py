"""Tokens, CORS and the gate in front of the invoke API; the listen-address rule;
per-function metrics checked by the real ``promtool``."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pytest

from kiln.api import cors
from kiln.api.access import AccessGate
from kiln.api.auth import TokenError, Tokens, Verdict, bearer
from kiln.config import ConfigError, parse
from kiln.metrics import Metrics, operation_label

# ---- tokens -------------------------------------------------------------------------


def test_tokens_scoped_revoked_and_stored_as_hashes_only(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    tokens = Tokens(path)
    t_all, _ = tokens.create("ci", None)
    t_echo, e_echo = tokens.create(None, ["echo"])
    assert tokens.check(t_all, "anything") is Verdict.OK
    assert tokens.check(t_echo, "echo") is Verdict.OK
    assert tokens.check(t_echo, "other") is Verdict.FORBIDDEN
    assert tokens.check(None, "echo") is Verdict.MISSING
    assert (
        tokens.check(t_echo[:-1] + ("A" if t_echo[-1] != "A" else "B"), "echo") is Verdict.INVALID
    )
    assert tokens.check("kiln_00000000_" + "a" * 43, "echo") is Verdict.INVALID
    assert tokens.check("nonsense", None) is Verdict.INVALID
    on_disk = path.read_text()
    assert t_all[14:] not in on_disk
    assert t_echo[14:] not in on_disk
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # a restart reads them back; revoking works by id or name
    again = Tokens(path)
    assert again.check(t_echo, "echo") is Verdict.OK
    again.remove(e_echo.id)
    again.remove("ci")
    assert again.check(t_echo, "echo") is Verdict.INVALID
    assert Tokens(path).check(t_all, "x") is Verdict.INVALID
    with pytest.raises(KeyError):
        again.remove("ci")


def test_token_names_and_scopes_are_checked(tmp_path: Path) -> None:
    tokens = Tokens(tmp_path / "t.json")
    tokens.create("a", None)
    for name, fns in (("a", None), ("bad name", None), ("b", [])):
        with pytest.raises(TokenError):
            tokens.create(name, fns)


def test_a_corrupt_token_file_opens_nothing(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    path.write_text("{not json")
    assert len(Tokens(path)) == 0
    path.write_text(json.dumps({"tokens": [{"id": "x"}, 5]}))
    assert len(Tokens(path)) == 0


def test_bearer_header() -> None:
    assert bearer(b"Bearer abc") == "abc"
    assert bearer(b"bearer  abc ") == "abc"
    assert bearer(b"Basic abc") is None
    assert bearer(None) is None
    assert bearer(b"Bearer ") is None


# ---- CORS ------------------------------------------------------------------------------


def test_cors_origins() -> None:
    assert cors.allowed(("https://a.example",), b"https://a.example") == b"https://a.example"
    assert cors.allowed(("https://a.example",), b"https://b.example") is None
    assert cors.allowed(("*",), b"https://b.example") == b"*"
    assert cors.allowed((), b"https://a.example") is None
    assert cors.allowed(("https://a.example",), None) is None
    hs = dict(cors.preflight_headers(b"https://a.example", b"authorization, content-type"))
    assert hs[b"access-control-allow-headers"] == b"authorization, content-type"
    assert b"access-control-allow-headers" not in dict(cors.preflight_headers(b"*", b"bad\x00"))


def test_cors_origins_are_validated() -> None:
    fn = {"image": "x"}
    spec = parse({"functions": {"f": {**fn, "cors_origins": ["https://app.example:8443"]}}})
    assert spec.functions["f"].cors_origins == ("https://app.example:8443",)
    assert parse({"functions": {"f": {**fn, "cors_origins": []}}}).functions["f"].cors_origins == ()
    for bad in (["https://a.example/path"], ["a.example"], "https://a.example", [5]):
        with pytest.raises(ConfigError, match="cors_origins"):
            parse({"functions": {"f": {**fn, "cors_origins": bad}}})


# ---- the gate -------------------------------------------------------------------------


class App:
    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls += 1
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x", b"1")]})
        await send({"type": "http.response.body", "body": b"ok"})


async def run(
    gate: AccessGate, method: str, path: str, headers: dict[str, str]
) -> tuple[int, dict[bytes, bytes]]:
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(m: MutableMapping[str, Any]) -> None:
        sent.append(m)

    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }
    await gate(scope, receive, send)
    return sent[0]["status"], dict(sent[0]["headers"])


async def test_gate_auth_statuses(tmp_path: Path) -> None:
    tokens = Tokens(tmp_path / "t.json")
    t_echo, _ = tokens.create("e", ["echo"])
    app = App()
    gate = AccessGate(app, tokens=tokens, metrics_need_token=True)
    status, hs = await run(gate, "POST", "/invoke/echo", {})
    assert status == 401
    assert hs[b"www-authenticate"].startswith(b"Bearer")
    assert (await run(gate, "POST", "/invoke/other", {"Authorization": f"Bearer {t_echo}"}))[
        0
    ] == 403
    assert (await run(gate, "POST", "/invoke/echo", {"Authorization": f"Bearer {t_echo}"}))[
        0
    ] == 200
    status, hs = await run(gate, "POST", "/invoke/echo", {"Authorization": "Bearer kiln_x"})
    assert status == 401
    assert b"invalid_token" in hs[b"www-authenticate"]
    assert (await run(gate, "GET", "/healthz", {}))[0] == 200
    assert (await run(gate, "GET", "/metrics", {}))[0] == 401
    assert (await run(gate, "GET", "/metrics", {"Authorization": f"Bearer {t_echo}"}))[0] == 200
    assert app.calls == 3


async def test_gate_cors_preflight_and_actual_request(tmp_path: Path) -> None:
    tokens = Tokens(tmp_path / "t.json")
    tok, _ = tokens.create("e", None)
    app = App()
    gate = AccessGate(
        app,
        tokens=tokens,
        origins=lambda name: ("https://app.example",) if name == "echo" else (),
    )
    pre = {
        "Origin": "https://app.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    status, hs = await run(gate, "OPTIONS", "/invoke/echo", pre)
    assert status == 204
    assert hs[b"access-control-allow-origin"] == b"https://app.example"
    assert b"POST" in hs[b"access-control-allow-methods"]
    assert hs[b"access-control-allow-headers"] == b"authorization, content-type"
    assert (await run(gate, "OPTIONS", "/invoke/echo", {**pre, "Origin": "https://evil.example"}))[
        0
    ] == 403
    assert (await run(gate, "OPTIONS", "/invoke/other", pre))[0] == 403
    status, hs = await run(
        gate,
        "POST",
        "/invoke/echo",
        {"Origin": "https://app.example", "Authorization": f"Bearer {tok}"},
    )
    assert status == 200
    assert hs[b"access-control-allow-origin"] == b"https://app.example"
    assert b"Kiln-Call-Id" in hs[b"access-control-expose-headers"]
    status, hs = await run(gate, "POST", "/invoke/echo", {"Origin": "https://app.example"})
    assert status == 401
    assert hs[b"access-control-allow-origin"] == b"https://app.example"
    status, hs = await run(
        gate,
        "POST",
        "/invoke/echo",
        {"Origin": "https://evil.example", "Authorization": f"Bearer {tok}"},
    )
    assert status == 200
    assert b"access-control-allow-origin" not in hs
    assert app.calls == 2


# ---- listening beyond loopback ---------------------------------------------------------


@pytest.mark.parametrize(
    "listen", ["127.0.0.1:8080", "localhost:1", "[::1]:80", "127.8.9.1:5", "unix:/run/k.sock"]
)
def test_local_listen_needs_no_auth(listen: str) -> None:
    assert parse({"daemon": {"listen": listen}}).daemon.listen == listen


@pytest.mark.parametrize("listen", ["0.0.0.0:8080", "[::]:8080", "192.0.2.1:80", "kiln.example:80"])
def test_public_listen_is_refused_without_auth(listen: str) -> None:
    with pytest.raises(
        ConfigError, match=r"daemon\.listen: .*auth = \"token\".*allow_unauthenticated"
    ):
        parse({"daemon": {"listen": listen}})
    assert parse({"daemon": {"listen": listen, "auth": "token"}}).daemon.auth == "token"
    assert (
        parse({"daemon": {"listen": listen, "allow_unauthenticated": True}}).daemon.listen == listen
    )


def test_metrics_token_needs_auth() -> None:
    with pytest.raises(ConfigError, match=r"metrics\.require_token"):
        parse({"metrics": {"require_token": True}})


def test_logs_section() -> None:
    c = parse(
        {"logs": {"lines_per_function": 50, "max_line": "1KiB", "mirror": True, "forward": "off"}}
    )
    assert c.logs.lines_per_function == 50
    assert c.logs.max_line == 1024
    assert c.logs.mirror
    with pytest.raises(ConfigError, match=r"logs\.forward"):
        parse({"logs": {"forward": "syslog"}})
    with pytest.raises(ConfigError, match=r"logs\.bogus"):
        parse({"logs": {"bogus": 1}})


# ---- metrics -----------------------------------------------------------------------------


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing (Debian's prometheus package; scripts/setup.sh)")
        pytest.skip("promtool is missing (apt-get install prometheus)")
    return path


def test_per_function_metrics_pass_promtool() -> None:
    m = Metrics(per_function=True)
    m.observe_call("echo", 200, 0.001, 0.2, 0.003, True, total=0.21)
    m.observe_call("hot-echo", 502, 0.0, 0.0, 0.01, False, total=0.01)
    m.observe_docker("create container", "201", 0.05)
    m.observe_docker("inspect image kiln-test/python:latest", "200", 0.01)
    text = m.render().decode()
    assert 'kiln_call_phase_seconds_bucket{function="echo",le="0.005",phase="queue"}' in text
    assert 'kiln_call_seconds_count{function="hot-echo"} 1.0' in text
    assert 'operation="create_container"' in text
    assert 'operation="inspect_image"' in text
    assert "_created" not in text
    result = subprocess.run(
        [promtool(), "check", "metrics"], input=text.encode(), capture_output=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == b""
    m.forget("echo")
    text = m.render().decode()
    assert 'function="echo"' not in text
    assert 'function="hot-echo"' in text


def test_metrics_without_function_label() -> None:
    m = Metrics(per_function=False)
    m.observe_call("echo", 200, 0.001, 0.2, 0.003, True, total=0.21)
    text = m.render().decode()
    assert 'kiln_call_phase_seconds_count{phase="run"} 1.0' in text
    assert "kiln_call_seconds_count 1.0" in text


def test_operation_label() -> None:
    assert operation_label("create container") == "create_container"
    assert operation_label("inspect image a/b:c") == "inspect_image"
    assert operation_label("ping") == "ping"
