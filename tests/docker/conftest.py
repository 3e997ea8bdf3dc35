"""The kiln.docker suite: every test runs under asyncio AND Trio (anyio's pytest plugin)
against the real Docker Engine. Everything a test creates is named with ``PREFIX`` and
labelled ``LABEL=RUN``; the session ends by removing exactly that.

Docker missing: the tests fail when ``CI`` is set and skip otherwise.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

DOCKER_SOCK = os.environ.get("KILN_TEST_DOCKER_SOCKET", "/var/run/docker.sock")
BUSYBOX = "kiln-test/busybox:latest"
RUN = secrets.token_hex(4)
PREFIX = f"kilndt-{RUN}"
LABEL = "kiln.test.docker"
LABELS = {LABEL: RUN}
FILTERS = {"label": [f"{LABEL}={RUN}"]}
HERE = Path(__file__).parent


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """pytest-trio's trio_mode marks every async test as a Trio test; the ones here are
    anyio's (parametrized over both backends), so that mark comes off."""
    for item in items:
        if HERE in Path(str(item.fspath)).parents and item.get_closest_marker("anyio"):
            item.own_markers = [m for m in item.own_markers if m.name != "trio"]


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _missing(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} — Docker tests must not be skipped in CI")
    pytest.skip(reason)


def _api() -> httpx.Client:
    return httpx.Client(
        transport=httpx.HTTPTransport(uds=DOCKER_SOCK), base_url="http://docker/v1.41", timeout=60
    )


@pytest.fixture(autouse=True)
def _needs_docker(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("docker"):
        request.getfixturevalue("real_docker")


@pytest.fixture(scope="session")
def real_docker() -> Iterator[None]:
    """Docker is there with the test image; afterwards, remove what this run made."""
    try:
        with _api() as api:
            api.get("/_ping").raise_for_status()
            if api.get(f"/images/{BUSYBOX}/json").status_code != 200:
                _missing(f"test image {BUSYBOX} is missing: run tests/images/build.sh")
    except (httpx.HTTPError, OSError) as e:
        _missing(f"Docker is not reachable at {DOCKER_SOCK}: {e}")
    yield
    with _api() as api, contextlib.suppress(httpx.HTTPError):
        filters = json.dumps(FILTERS)
        for c in api.get("/containers/json", params={"all": "1", "filters": filters}).json():
            api.delete(f"/containers/{c['Id']}", params={"force": "1", "v": "1"})
        for v in api.get("/volumes", params={"filters": filters}).json().get("Volumes") or []:
            api.delete(f"/volumes/{v['Name']}", params={"force": "1"})
        for n in api.get("/networks", params={"filters": filters}).json():
            api.delete(f"/networks/{n['Id']}")
        for image in api.get("/images/json", params={"all": "1"}).json():
            for tag in image.get("RepoTags") or []:
                if PREFIX in tag:
                    api.delete(f"/images/{tag}", params={"force": "1"})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def registry() -> Iterator[str]:
    """A private registry (Debian's docker-registry) on 127.0.0.1: its ``host:port``."""
    binary = "/usr/bin/docker-registry"
    if not Path(binary).exists():
        _missing("docker-registry is not installed (scripts/setup.sh installs it)")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="kiln-registry-") as tmp:
        config = Path(tmp, "config.yml")
        config.write_text(
            "version: 0.1\n"
            "log:\n  level: error\n"
            f"storage:\n  filesystem:\n    rootdirectory: {tmp}/data\n  delete:\n    enabled: true\n"
            f"http:\n  addr: 127.0.0.1:{port}\n"
        )
        proc = subprocess.Popen(
            [binary, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    httpx.get(f"http://127.0.0.1:{port}/v2/", timeout=1).raise_for_status()
                    break
                except httpx.HTTPError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        err = proc.stderr.read().decode() if proc.stderr else ""
                        pytest.fail(f"docker-registry did not start: {err[-2000:]}")
                    time.sleep(0.1)  # a subprocess's port: nothing to wait on but polling
            yield f"127.0.0.1:{port}"
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
