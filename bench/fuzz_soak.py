"""Raw HTTP fuzz soak: the generator of ``tests/security/httpfuzz.py`` for longer,
against a live ``kiln daemon`` (real Docker, a hot echo function), with the same
request stream sent to a baseline daemon built from an earlier revision.

    python bench/fuzz_soak.py [--requests 2000] [--before REV|none]

Prints, for each daemon: requests tried, the status counts (``none``: the
connection ended without an answer, as it should for a request cut short or a
client that left), 5xx answers, tracebacks and ERROR lines in its log, whether
it still answered ``/healthz`` and a call afterwards, and the time taken. The
baseline (default: the last revision before ``kiln.http``) runs from a
``git archive`` of that revision in a temporary directory, on this checkout's
virtualenv.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hypothesis import HealthCheck, Phase, given, settings
from tests.security.httpfuzz import RawRequest, exchange, healthy, raw_requests

from _common import PYTHON, REPO, _toml, free_port

ECHO = {
    "image": PYTHON,
    "cmd": ["python3", "/fn/echo_fdk.py"],
    "format": "http-stream",
    "memory": "64MiB",
    "min_warm": 1,
}


@dataclass
class Figures:
    name: str
    tried: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    tracebacks: int = 0
    errors: int = 0
    alive: bool = False
    seconds: float = 0.0

    @property
    def server_errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status.startswith("5"))


@contextmanager
def daemon(
    source: Path | None, daemon_section: dict[str, object]
) -> Iterator[tuple[int, list[str]]]:
    """``kiln daemon`` from ``source`` (a tree holding ``daemon/``; None: this
    checkout); yields (port, log lines)."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="kiln-soak-") as tmp:
        sections: dict[str, dict[str, object]] = {
            "daemon": {
                "listen": f"127.0.0.1:{port}",
                "id": "soak" + os.urandom(3).hex(),
                "run_dir": f"{tmp}/run",
                "state_dir": f"{tmp}/state",
                "control_socket": f"{tmp}/control.sock",
                **daemon_section,
            },
            "functions.echo": ECHO,
        }
        config = Path(tmp) / "kiln.toml"
        config.write_text(
            "\n".join(
                f"[{name}]\n" + "\n".join(f"{k} = {_toml(v)}" for k, v in table.items())
                for name, table in sections.items()
            )
            + "\n"
        )
        env = dict(os.environ)
        if source is not None:
            env["PYTHONPATH"] = str(source / "daemon")
        proc = subprocess.Popen(
            [sys.executable, "-m", "kiln.cli", "daemon", "--config", str(config)],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            cwd=tmp,
            env=env,
        )
        log: list[str] = []
        ready = threading.Event()

        def reader() -> None:
            assert proc.stderr is not None
            for raw in proc.stderr:
                line = raw.decode("utf-8", "replace").rstrip()
                log.append(line)
                if "invoke API listening on" in line:
                    ready.set()
            ready.set()

        threading.Thread(target=reader, daemon=True).start()
        try:
            if not ready.wait(60) or proc.poll() is not None:
                raise SystemExit("kiln daemon did not start:\n" + "\n".join(log[-30:]))
            yield port, log
        finally:
            proc.terminate()
            proc.wait(60)


def soak(
    name: str, source: Path | None, daemon_section: dict[str, object], requests: int
) -> Figures:
    figures = Figures(name)
    with daemon(source, daemon_section) as (port, log):
        warm = exchange(
            "127.0.0.1",
            port,
            RawRequest(
                b"POST /invoke/echo HTTP/1.1\r\nHost: k\r\nContent-Length: 1\r\n\r\nx", "keep"
            ),
            timeout=30,
        )
        assert warm.statuses == [200], warm.raw
        t0 = time.monotonic()

        @settings(
            max_examples=requests,
            deadline=None,
            database=None,
            derandomize=True,  # the same stream for every daemon
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(request=raw_requests())
        def one(request: RawRequest) -> None:
            got = exchange("127.0.0.1", port, request, timeout=2)
            figures.tried += 1
            if not got.statuses:
                figures.statuses["none"] += 1
            for status in got.statuses:
                figures.statuses[str(status)] += 1

        one()
        figures.seconds = time.monotonic() - t0
        call = exchange(
            "127.0.0.1",
            port,
            RawRequest(
                b"POST /invoke/echo HTTP/1.1\r\nHost: k\r\nContent-Length: 1\r\n\r\nx", "keep"
            ),
            timeout=10,
        )
        figures.alive = healthy("127.0.0.1", port) and call.statuses == [200]
        text = "\n".join(log)
        figures.tracebacks = text.count("Traceback")
        figures.errors = sum(" ERROR " in line for line in log)
    return figures


def before_revision() -> str:
    """The last revision with the server before ``kiln.http``."""
    removed = subprocess.run(
        ["git", "log", "-1", "--format=%H", "--diff-filter=D", "--", "daemon/kiln/httpserver.py"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not removed:
        raise SystemExit("cannot find the revision before kiln.http; pass --before REV")
    return subprocess.run(
        ["git", "rev-parse", removed + "^"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()


@contextmanager
def checkout(revision: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="kiln-before-") as tmp:
        archive = subprocess.run(
            ["git", "archive", revision, "daemon", "fdk"], cwd=REPO, capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        yield Path(tmp)


def show(f: Figures) -> None:
    counts = ", ".join(f"{status}: {n}" for status, n in sorted(f.statuses.items()))
    print(
        f"{f.name:>10}: {f.tried} requests in {f.seconds:.0f} s; statuses {{{counts}}}; "
        f"5xx {f.server_errors}; tracebacks {f.tracebacks}; ERROR lines {f.errors}; "
        f"answers afterwards: {'yes' if f.alive else 'NO'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--before", default="auto", help="baseline revision, or 'none'")
    args = parser.parse_args()
    results = []
    if args.before != "none":
        revision = before_revision() if args.before == "auto" else args.before
        with checkout(revision) as tree:
            results.append(soak(f"before ({revision[:8]})", tree, {}, args.requests))
    # a short body deadline keeps requests whose body never completes cheap
    results.append(soak("now", None, {"body_timeout": 1}, args.requests))
    print(f"\nraw HTTP fuzz soak, the same {args.requests} generated requests to each daemon:")
    for figures in results:
        show(figures)


if __name__ == "__main__":
    main()
