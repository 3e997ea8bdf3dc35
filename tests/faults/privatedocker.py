"""A private ``dockerd`` for tests that kill and restart Docker.

It has its own ``--host`` socket, ``--data-root``, ``--exec-root`` and
``--pidfile`` in a temp dir, and runs in its **own network namespace** (made
with ``ip netns``, entered with ``nsenter --net`` so it keeps the host's mount
namespace and cgroups): with ``--bridge none`` and no iptables it never
touches the host's networking, so the shared Docker and its ``docker0`` are
left alone. The test images are copied in with ``docker save | docker load``.
Never signals any process but its own dockerd (and, at the end, the
containerd that dockerd started, by its pid file).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

TOOLS = ("dockerd", "docker", "ip", "nsenter")


def missing_tools() -> list[str]:
    return [t for t in TOOLS if shutil.which(t) is None]


class PrivateDocker:
    def __init__(self, images: tuple[str, ...]) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="kpd-", dir="/tmp"))  # short: AF_UNIX paths
        self.netns = f"kiln-faults-{secrets.token_hex(3)}"
        self.socket = str(self.dir / "docker.sock")
        self.pidfile = self.dir / "docker.pid"
        self.images = images
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.dir / "dockerd.log"

    # ---- life -----------------------------------------------------------

    def setup(self) -> None:
        subprocess.run(["ip", "netns", "add", self.netns], check=True, timeout=30)
        subprocess.run(
            ["ip", "netns", "exec", self.netns, "ip", "link", "set", "lo", "up"],
            check=True,
            timeout=30,
        )
        self.start()
        for image in self.images:
            save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
            subprocess.run(
                ["docker", "-H", f"unix://{self.socket}", "load", "-q"],
                stdin=save.stdout,
                check=True,
                timeout=300,
                capture_output=True,
            )
            assert save.wait(60) == 0

    def start(self, timeout: float = 60, attempts: int = 3) -> float:
        """Start dockerd; return the seconds it took to answer. On a loaded machine
        dockerd may give up waiting for its containerd: it is started again."""
        t0 = time.monotonic()
        for _ in range(attempts - 1):
            try:
                self._start_once(timeout)
                return time.monotonic() - t0
            except RuntimeError:
                continue
        self._start_once(timeout)
        return time.monotonic() - t0

    def _start_once(self, timeout: float) -> None:
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [
                "nsenter",
                f"--net=/run/netns/{self.netns}",
                "dockerd",
                "--host",
                f"unix://{self.socket}",
                "--data-root",
                str(self.dir / "data"),
                "--exec-root",
                str(self.dir / "exec"),
                "--pidfile",
                str(self.pidfile),
                "--bridge",
                "none",
                "--iptables=false",
                "--ip6tables=false",
                "--ip-masq=false",
                "--cgroup-parent",
                "kiln-faults",
            ],
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        deadline = t0 + timeout
        while time.monotonic() < deadline:
            if self.ping():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)  # dockerd offers no readiness signal to wait on
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        raise RuntimeError(f"private dockerd did not start:\n{self.log.read_text()[-3000:]}")

    def ping(self) -> bool:
        try:
            with self.client(timeout=2) as c:
                return c.get("/_ping").status_code == 200
        except (httpx.HTTPError, OSError):
            return False

    def kill(self) -> None:
        """SIGKILL dockerd (its containerd and containers live on)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path().unlink()

    def socket_path(self) -> Path:
        return Path(self.socket)

    def teardown(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(httpx.HTTPError, OSError), self.client() as c:
                for ctr in c.get("/containers/json", params={"all": "1"}).json():
                    c.delete(f"/containers/{ctr['Id']}", params={"force": "1", "v": "1"})
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        containerd_pid = self.dir / "exec" / "containerd" / "containerd.pid"
        with contextlib.suppress(OSError, ValueError):
            pid = int(containerd_pid.read_text().strip())
            if f"{self.dir}" in Path(f"/proc/{pid}/cmdline").read_text():
                os.kill(pid, signal.SIGTERM)
        self._reap_shims()
        mounts = [
            line.split()[4]
            for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if line.split()[4].startswith(f"{self.dir}/")
        ]
        for mount in sorted(mounts, reverse=True):
            subprocess.run(["umount", "--lazy", mount], check=False, timeout=30)
        for parent in Path("/sys/fs/cgroup").glob("*/kiln-faults"):
            for cgroup in sorted(parent.glob("*"), reverse=True):
                with contextlib.suppress(OSError):
                    cgroup.rmdir()  # only empty ones: containers of this dockerd, now gone
        subprocess.run(["ip", "netns", "del", self.netns], check=False, timeout=30)
        shutil.rmtree(self.dir, ignore_errors=True)

    def _reap_shims(self) -> None:
        """containerd shims outlive a SIGKILLed dockerd by design: end those of this
        dockerd (found by the socket path in their command line) and their containers."""
        marker = f"-address {self.dir}/"
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                if "containerd-shim" not in cmdline or marker not in cmdline:
                    continue
                shim = int(proc.name)
                children = (proc / "task" / proc.name / "children").read_text().split()
                for child in children:
                    with contextlib.suppress(OSError):
                        os.kill(int(child), signal.SIGKILL)
                os.kill(shim, signal.SIGKILL)

    # ---- looking at it -------------------------------------------------------

    def client(self, timeout: float = 30) -> httpx.Client:
        return httpx.Client(
            transport=httpx.HTTPTransport(uds=self.socket),
            base_url="http://docker/v1.41",
            timeout=timeout,
        )

    def containers(self, daemon_id: str) -> list[dict[str, object]]:
        import json

        with self.client() as c:
            r = c.get(
                "/containers/json",
                params={"all": "1", "filters": json.dumps({"label": [f"kiln.daemon={daemon_id}"]})},
            )
            r.raise_for_status()
            return list(r.json())
