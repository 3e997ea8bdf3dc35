"""Function lines reach a real journald with their structured fields.

The test runs Debian's ``systemd-journald`` in a private mount namespace
(``unshare -m``, tmpfs over /run and /var/log/journal, so the host's journal
is untouched), sends lines through Kiln's log pipeline with the journal
forwarder, and reads them back with ``journalctl KILN_FUNCTION=…``. Needs
root (it mounts); fails, not skips, when ``CI`` is set and a piece is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

JOURNALD = "/lib/systemd/systemd-journald"

SENDER = r"""
import trio
from kiln.docker.frames import Frame
from kiln.logs.journal import open_forwarder
from kiln.logs.service import Logs, LogSettings

async def main():
    logs = Logs(LogSettings(), forwarder=open_forwarder("journal"))
    c = logs.container("jfn", "kiln-test-jfn-1")
    c.feed([Frame(1, b"before any call\n")])
    c.begin_call("call123")
    c.feed([Frame(2, b"hello journal\n"), Frame(1, b"to stdout\n")])
    c.end_call()
    logs.close()

trio.run(main)
"""

SCRIPT = """
set -e
mount -t tmpfs tmpfs /run
mkdir -p /var/log/journal
mount -t tmpfs tmpfs /var/log/journal
{journald} &
J=$!
trap 'kill $J; wait $J 2>/dev/null || true' EXIT
# readiness: journald creates its sockets when it is up
for i in $(seq 200); do
  [ -S /run/systemd/journal/socket ] && [ -S /run/systemd/journal/io.systemd.journal ] && break
  sleep 0.05
done
"{python}" -c "$SENDER"
journalctl --sync
journalctl --no-pager -o json KILN_FUNCTION=jfn
"""


def _need() -> None:
    problems = []
    if not os.path.exists(JOURNALD) or shutil.which("journalctl") is None:
        problems.append("systemd-journald/journalctl missing (Debian package systemd)")
    if shutil.which("unshare") is None:
        problems.append("unshare missing (util-linux)")
    if os.geteuid() != 0:
        problems.append("needs root to mount in a private namespace")
    if problems:
        if os.environ.get("CI"):
            pytest.fail("; ".join(problems))
        pytest.skip("; ".join(problems))


def test_lines_reach_journald_with_fields() -> None:
    _need()
    out = subprocess.run(
        [
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            SCRIPT.format(journald=JOURNALD, python=sys.executable),
        ],
        env={**os.environ, "SENDER": SENDER},
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr.decode()
    entries = [json.loads(line) for line in out.stdout.decode().splitlines() if line.strip()]
    by_message = {e["MESSAGE"]: e for e in entries}
    assert set(by_message) == {
        "jfn call=- stdout: before any call",
        "jfn call=call123 stderr: hello journal",
        "jfn call=call123 stdout: to stdout",
    }
    hello = by_message["jfn call=call123 stderr: hello journal"]
    assert hello["KILN_CALL_ID"] == "call123"
    assert hello["KILN_STREAM"] == "stderr"
    assert hello["KILN_CONTAINER"] == "kiln-test-jfn-1"
    assert hello["SYSLOG_IDENTIFIER"] == "kiln"
    assert hello["PRIORITY"] == "5"
    assert hello["_TRANSPORT"] == "journal"
    assert "KILN_CALL_ID" not in by_message["jfn call=- stdout: before any call"]
