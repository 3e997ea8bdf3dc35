"""Escape attempts by a function, against the real Docker: no network
namespace of the host or another container, no setuid file usable on the
host, not root inside by default, a bounded listener dir."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import BUSYBOX, PYTHON, Daemon

pytestmark = pytest.mark.docker

# A hot function (the repo's FDK) that tries what a hostile one would.
HOSTILE = """
import os, shutil, sys
sys.path.insert(0, "/fn")
import fdk

def handle(body, headers):
    what = body.decode()
    if what == "uid":
        return f"{os.getuid()}:{os.getgid()}".encode()
    if what == "setuid":
        shutil.copy(sys.executable, "/tmp/iofs/escape")
        os.chmod("/tmp/iofs/escape", 0o4755)
        return oct(os.stat("/tmp/iofs/escape").st_mode).encode()
    if what.startswith("fill"):
        written = 0
        try:
            fd = os.open("/tmp/iofs/fill", os.O_WRONLY | os.O_CREAT, 0o600)
            for _ in range(int(what[4:])):
                written += os.write(fd, b"x" * (1 << 20))
        except OSError as e:
            return f"{written} {e.errno}".encode()
        return f"{written} 0".encode()
    return b"?"

fdk.serve(handle)
"""


def hostile(**kw: object) -> dict[str, object]:
    return {
        "image": PYTHON,
        "cmd": ["python3", "-c", HOSTILE],
        "format": "http-stream",
        "memory": "128MiB",
        **kw,
    }


def run_dir(kiln: Daemon) -> Path:
    text = kiln.config_path.read_text()
    return Path(text.split('run_dir = "', 1)[1].split('"', 1)[0])


def test_host_and_container_networks_are_refused(start_daemon: Callable[..., Daemon]) -> None:
    kiln = start_daemon({})
    with kiln.control() as control:
        for network in ("host", "container:kiln-anything", "container:0123456789ab", "other"):
            r = control.put("/functions/esc", json={"image": BUSYBOX, "network": network})
            assert r.status_code == 400, network
            assert "functions.esc.network" in r.json()["error"]["message"]
        ok = control.put("/functions/esc", json={"image": BUSYBOX, "network": "bridge"})
        assert ok.status_code == 201


def test_hot_function_is_not_root_and_its_setuid_file_is_inert_on_the_host(
    start_daemon: Callable[..., Daemon],
) -> None:
    kiln = start_daemon({"hostile": hostile()})
    assert kiln.invoke("hostile", b"uid").content == b"1000:1000"
    planted = kiln.invoke("hostile", b"setuid")
    assert planted.status_code == 200, planted.text
    files = list(run_dir(kiln).glob("iofs/*/*/escape"))
    assert len(files) == 1, files
    escape = files[0]
    st = escape.stat()
    assert st.st_uid == 1000  # not root's: even the setuid bit would only give uid 1000
    flags = os.statvfs(escape).f_flag
    assert flags & os.ST_NOSUID
    assert flags & os.ST_NOEXEC
    with pytest.raises(PermissionError):
        subprocess.run([str(escape), "-c", "print(1)"], check=False, timeout=10)


def test_listener_dir_is_bounded_by_the_tmpfs_size(start_daemon: Callable[..., Daemon]) -> None:
    kiln = start_daemon({"hostile": hostile(memory="256MiB")}, limits={"iofs_size": "8MiB"})
    r = kiln.invoke("hostile", b"fill300")
    assert r.status_code == 200, r.text
    written, err = map(int, r.content.split())
    assert err == errno.ENOSPC
    assert written <= 8 << 20


def test_listener_dir_is_bounded_by_the_functions_memory(
    start_daemon: Callable[..., Daemon], docker: httpx.Client
) -> None:
    kiln = start_daemon({"hostile": hostile(memory="64MiB")}, limits={"iofs_size": "512MiB"})
    r = kiln.invoke("hostile", b"fill300")
    # the container is OOM-killed long before 300 MiB are written
    assert r.status_code == 502, r.text
    assert r.json()["error"]["code"] == "out_of_memory"
    assert "raise `memory`" in r.json()["error"]["message"]
