"""Access to the invoke API with a real daemon: bearer tokens (CLI, 401/403/200,
revocation, hashes only on disk), the refusal to listen beyond loopback, CORS
with curl, per-function metrics checked by the real ``promtool``, and nginx
(Debian's package) in front with TLS and HTTP/2, from docs/nginx-kiln.conf."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import BUSYBOX, REPO, Daemon, free_port

pytestmark = pytest.mark.docker

ECHO = {"image": BUSYBOX, "cmd": ["cat"], "memory": "32MiB"}
WEB = {**ECHO, "cors_origins": ["https://app.example"]}


def need(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(
                f"{tool} is missing (Debian package {package}; scripts/setup.sh installs it)"
            )
        pytest.skip(f"{tool} is missing (apt-get install {package})")
    return path


def test_tokens_guard_the_invoke_api(start_daemon: Callable[..., Daemon]) -> None:
    kiln = start_daemon({"echo": ECHO, "other": ECHO}, daemon={"auth": "token"})
    assert kiln.wait_log("no token exists yet")
    assert kiln.invoke("echo", b"x").status_code == 401
    made = kiln.cli("token", "create", "--name", "ci", "-F", "echo", "--json")
    assert made.returncode == 0, made.stderr
    token = json.loads(made.stdout)["token"]
    auth = {"Authorization": f"Bearer {token}"}
    r = kiln.invoke("echo", b"hello", headers=auth)
    assert r.status_code == 200
    assert r.content == b"hello"
    r = kiln.invoke("other", b"x", headers=auth)
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "forbidden"
    r = kiln.invoke("echo", b"x")
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert (
        kiln.invoke("echo", b"x", headers={"Authorization": "Bearer kiln_nope"}).status_code == 401
    )
    assert httpx.get(f"{kiln.url}/healthz").status_code == 200
    # hashes only on disk
    state = kiln.config_path.parent / f"{kiln.daemon_id}-state" / "tokens.json"
    on_disk = state.read_text()
    assert token not in on_disk
    assert token[14:] not in on_disk
    assert "hmac_sha256" in on_disk
    listed = kiln.cli("token", "ls")
    assert b"ci" in listed.stdout
    assert token.encode() not in listed.stdout
    # revoked: 401 at once
    assert kiln.cli("token", "rm", "ci").returncode == 0
    assert kiln.invoke("echo", b"x", headers=auth).status_code == 401


def test_metrics_can_need_a_token(start_daemon: Callable[..., Daemon]) -> None:
    kiln = start_daemon({"echo": ECHO}, daemon={"auth": "token"}, metrics={"require_token": True})
    assert httpx.get(f"{kiln.url}/metrics").status_code == 401
    token = json.loads(kiln.cli("token", "create", "--json").stdout)["token"]
    r = httpx.get(f"{kiln.url}/metrics", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200


def test_public_listen_without_auth_is_refused(start_daemon: Callable[..., Daemon]) -> None:
    kiln = start_daemon({}, daemon={"listen": f"0.0.0.0:{free_port()}"}, expect_ready=False)
    kiln.expected_exit = 2
    assert kiln.proc.wait(30) == 2
    assert kiln.wait_log("allow_unauthenticated")
    assert "daemon.listen" in kiln.log()


def test_public_listen_with_auth_starts(start_daemon: Callable[..., Daemon]) -> None:
    port = free_port()
    kiln = start_daemon({"echo": ECHO}, daemon={"listen": f"0.0.0.0:{port}", "auth": "token"})
    kiln.url = f"http://127.0.0.1:{port}"
    assert kiln.invoke("echo", b"x").status_code == 401


def test_cors_preflight_and_request_with_curl(start_daemon: Callable[..., Daemon]) -> None:
    curl = need("curl", "curl")
    kiln = start_daemon({"web": WEB, "closed": ECHO})
    pre = (
        subprocess.run(
            [
                curl,
                "-si",
                "-X",
                "OPTIONS",
                f"{kiln.url}/invoke/web",
                "-H",
                "Origin: https://app.example",
                "-H",
                "Access-Control-Request-Method: POST",
                "-H",
                "Access-Control-Request-Headers: content-type",
            ],
            capture_output=True,
            check=True,
            timeout=30,
        )
        .stdout.decode()
        .lower()
    )
    assert pre.startswith("http/1.1 204")
    assert "access-control-allow-origin: https://app.example" in pre
    assert "access-control-allow-methods: post, options" in pre
    assert "access-control-allow-headers: content-type" in pre
    actual = subprocess.run(
        [
            curl,
            "-si",
            f"{kiln.url}/invoke/web",
            "-H",
            "Origin: https://app.example",
            "--data-binary",
            "hi",
        ],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout.decode()
    assert actual.startswith("HTTP/1.1 200")
    assert "access-control-allow-origin: https://app.example" in actual.lower()
    assert actual.endswith("hi")
    refused = subprocess.run(
        [
            curl,
            "-si",
            "-X",
            "OPTIONS",
            f"{kiln.url}/invoke/closed",
            "-H",
            "Origin: https://app.example",
            "-H",
            "Access-Control-Request-Method: POST",
        ],
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout.decode()
    assert refused.startswith("HTTP/1.1 403")
    assert "access-control-allow-origin" not in refused.lower()


def test_per_function_metrics_pass_promtool(start_daemon: Callable[..., Daemon]) -> None:
    promtool = need("promtool", "prometheus")
    kiln = start_daemon({"echo": ECHO, "echo2": ECHO})
    assert kiln.invoke("echo", b"x").status_code == 200
    assert kiln.invoke("echo2", b"x").status_code == 200
    text = httpx.get(f"{kiln.url}/metrics").text
    assert 'kiln_call_phase_seconds_count{function="echo",phase="run"} 1.0' in text
    assert 'kiln_call_seconds_count{function="echo2"} 1.0' in text
    assert "_created" not in text
    assert 'operation="create_container"' in text
    check = subprocess.run(
        [promtool, "check", "metrics"],
        input=text.encode(),
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout + check.stderr == b"", (check.stdout + check.stderr).decode()
    # removing a function removes its series
    assert kiln.cli("deploy", str(_deployable(kiln))).returncode == 0
    assert kiln.invoke("gone", b"x").status_code == 200
    assert 'function="gone"' in httpx.get(f"{kiln.url}/metrics").text
    assert kiln.cli("rm", "gone").returncode == 0
    assert 'function="gone"' not in httpx.get(f"{kiln.url}/metrics").text


def _deployable(kiln: Daemon) -> Path:
    path = kiln.config_path.parent / "gone.toml"
    path.write_text(f'name = "gone"\nimage = "{BUSYBOX}"\ncmd = ["cat"]\nmemory = "32MiB"\n')
    return path


def test_metrics_without_the_function_label(start_daemon: Callable[..., Daemon]) -> None:
    kiln = start_daemon({"echo": ECHO}, metrics={"per_function": False})
    assert kiln.invoke("echo", b"x").status_code == 200
    text = httpx.get(f"{kiln.url}/metrics").text
    assert 'kiln_call_phase_seconds_count{phase="run"} 1.0' in text
    assert "kiln_call_seconds_count 1.0" in text


# ---- nginx in front ------------------------------------------------------------------------


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Callable[[str], int]]:
    """Start Debian's nginx with docs/nginx-kiln.conf in front of ``host:port``; its TLS port."""
    binary = need("nginx", "nginx-light")
    openssl = need("openssl", "openssl")
    procs: list[subprocess.Popen[bytes]] = []

    def start(kiln_addr: str) -> int:
        prefix = tmp_path / "nginx"
        prefix.mkdir()
        subprocess.run(
            [
                openssl,
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=localhost",
                "-keyout",
                str(prefix / "key.pem"),
                "-out",
                str(prefix / "cert.pem"),
            ],
            capture_output=True,
            check=True,
            timeout=60,
        )
        port = free_port()
        site = (REPO / "docs" / "nginx-kiln.conf").read_text()
        for key, value in {
            "KILN": kiln_addr,
            "PORT": str(port),
            "SERVER_NAME": "localhost",
            "CERT": str(prefix / "cert.pem"),
            "KEY": str(prefix / "key.pem"),
        }.items():
            site = site.replace("{{" + key + "}}", value)
        (prefix / "kiln.conf").write_text(site)
        temp = "\n".join(
            f"    {kind}_temp_path {prefix}/{kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        (prefix / "nginx.conf").write_text(
            f"""daemon off;
user root;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log;
events {{}}
http {{
    access_log {prefix}/access.log;
{temp}
    include {prefix}/kiln.conf;
}}
"""
        )
        proc = subprocess.Popen(
            [binary, "-p", str(prefix), "-c", str(prefix / "nginx.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        procs.append(proc)
        deadline = time.monotonic() + 30
        while True:  # readiness: nginx says nothing when it listens
            if proc.poll() is not None:
                assert proc.stderr is not None
                pytest.fail(f"nginx exited: {proc.stderr.read().decode()}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return port
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("nginx did not listen within 30 s")
                time.sleep(0.05)

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(30)


def test_through_nginx_with_tls_and_http2(
    start_daemon: Callable[..., Daemon], nginx: Callable[[str], int]
) -> None:
    curl = need("curl", "curl")
    kiln = start_daemon({"echo": ECHO})
    port = nginx(kiln.url.removeprefix("http://"))
    out = subprocess.run(
        [
            curl,
            "-sk",
            "--http2",
            f"https://localhost:{port}/invoke/echo",
            "--data-binary",
            "through nginx",
            "-H",
            "X-Forwarded-For: 203.0.113.7",
            "-D",
            "-",
            "-o",
            "-",
            "-w",
            "\nversion=%{http_version}",
        ],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout.decode()
    assert out.startswith("HTTP/2 200")
    assert "kiln-call-id:" in out.lower()
    assert "through nginx" in out
    assert out.endswith("version=2")
    call_id = next(
        line.split(":", 1)[1].strip()
        for line in out.splitlines()
        if line.lower().startswith("kiln-call-id:")
    )
    assert kiln.wait_log(f"id={call_id} status=200 client=203.0.113.7,127.0.0.1,127.0.0.1")


PAGE = """<!doctype html><html><body>waiting<script>
async function call(name) {
  try {
    const r = await fetch("KILN/invoke/" + name, {
      method: "POST",
      body: "from the browser",
      headers: {"Content-Type": "text/plain", "X-Test": "preflighted"},
    });
    return "status=" + r.status + " body=" + (await r.text()) + " call=" + r.headers.get("Kiln-Call-Id");
  } catch (e) {
    return "failed: " + e;
  }
}
(async () => {
  const web = await call("web");
  const closed = await call("closed");
  document.body.textContent = "WEB[" + web + "] CLOSED[" + closed + "]";
})();
</script></body></html>"""


def test_cors_in_a_real_browser(start_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    """A page on one origin calls Kiln on another with fetch(): the allowed
    function answers (after a preflight, for the custom header), the other is
    blocked by the browser."""
    import http.server
    import threading

    chromium = need("chromium", "chromium")
    page_port = free_port()
    origin = f"http://127.0.0.1:{page_port}"
    kiln = start_daemon({"web": {**ECHO, "cors_origins": [origin]}, "closed": ECHO})
    (tmp_path / "index.html").write_text(PAGE.replace("KILN", kiln.url))

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a: object, **kw: object) -> None:
            super().__init__(*a, directory=str(tmp_path), **kw)  # type: ignore[arg-type]

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", page_port), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        out = subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--disable-default-apps",
                "--no-default-browser-check",
                "--disable-domain-reliability",
                f"--user-data-dir={tmp_path / 'profile'}",
                "--virtual-time-budget=10000",
                "--dump-dom",
                f"{origin}/index.html",
            ],
            capture_output=True,
            timeout=120,
            check=False,
        )
    finally:
        server.shutdown()
        server.server_close()
    dom = out.stdout.decode()
    assert "WEB[status=200 body=from the browser call=" in dom, dom + out.stderr.decode()[-2000:]
    assert "CLOSED[failed: TypeError: Failed to fetch]" in dom, dom
    # the preflight reached Kiln; the blocked one never got to run its call
    assert kiln.wait_log("call fn=web")
    assert "call fn=closed" not in kiln.log()
