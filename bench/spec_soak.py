"""Bad-input soak for specs and configs: fuzzed deploys to the control API of a
live ``kiln daemon``, then a restart on the state they left, then mutated config
files through ``kiln daemon --check`` and a real start; the same inputs go to a
baseline daemon built from an earlier revision, in the same run.

    python bench/spec_soak.py [--deploys 2000] [--configs 40] [--before REV|none]

Prints, for each daemon: deploys tried (each to a name of its own) and their
status counts, 5xx answers, refused deploys that still persisted a file (left
in place), tracebacks in its log, whether it started again on the state the
fuzz left; and for configs: how many ``--check``
called ok, how many of those the daemon then refused to start with (``--check``
lied), and tracebacks. The baseline (default: the revision before the
validation work) runs from a ``git archive`` in a temporary directory, on this
checkout's virtualenv. No Docker is needed: the daemons point at a socket that
does not exist (calls would get 503; deploys and starts do not need Docker).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
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
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import REPO, _toml, free_port
from fuzz_soak import checkout

BEFORE = "f3725d7"  # main before the spec/config validation work

HUGE = 10**400
BAD_VALUES: list[Any] = [
    math.inf,
    -math.inf,
    math.nan,
    1e300,
    HUGE,
    2**63,
    -1,
    0,
    "a\x00b",
    "host",
    "container:x",
    "9" * 400 + "/s",
    "9" * 400 + "TiB",
    [[[[[[[[[[[]]]]]]]]]]],
    {"a": {"b": {"c": None}}},
    "",
    True,
]
SPEC_KEYS = [
    "image",
    "cmd",
    "format",
    "memory",
    "cpus",
    "timeout",
    "start_timeout",
    "idle_timeout",
    "min_warm",
    "max_containers",
    "env",
    "rate",
    "network",
    "pids_limit",
    "user",
]
CONFIG_KEYS = {
    "daemon": ["max_body", "drain_timeout", "state_dir", "id", "max_response"],
    "docker": ["timeout", "create_rate", "create_burst", "max_inflight"],
    "limits": ["queue_max", "queue_wait", "async_fraction", "memory"],
    "functions.f": ["rate", "timeout", "cpus", "network", "pids_limit", "memory", "idle_timeout"],
}


def fuzzed_bodies(n: int, seed: int = 14) -> list[bytes]:
    """The same ``n`` deploy bodies for every daemon: a valid spec with one to three
    keys set to bad (or random) values, and raw bodies JSON cannot express."""
    rng = random.Random(seed)
    out: list[bytes] = [
        b"[" * 100_000,
        b'{"a":' * 5000 + b"1" + b"}" * 5000,
        b'{"image": "x", "memory": 1' + b"0" * 5000 + b"}",
        b"\xff\xfe{}",
    ]
    while len(out) < n:
        spec: dict[str, Any] = {"image": "kiln-test/not-there:never"}
        for _ in range(rng.randint(1, 3)):
            key = rng.choice(SPEC_KEYS)
            spec[key] = rng.choice(
                [*BAD_VALUES, rng.random() * 10 ** rng.randint(0, 30), rng.randint(-5, 10**6)]
            )
        if "env" in spec and rng.random() < 0.5:
            spec["env"] = {"A": spec["env"]}
        if "cmd" in spec and rng.random() < 0.5:
            spec["cmd"] = ["sh", spec["cmd"]]
        out.append(json.dumps(spec, allow_nan=True).encode())
    return out


def mutated_configs(n: int, seed: int = 14) -> list[dict[str, dict[str, Any]]]:
    rng = random.Random(seed)
    fixed: list[dict[str, dict[str, Any]]] = [
        {"functions.f": {"rate": math.inf}},
        {"functions.f": {"timeout": math.nan}},
        {"functions.f": {"cpus": math.inf}},
        {"functions.f": {"network": "host"}},
        {"functions.f": {"pids_limit": 2**63}},
        {"limits": {"async_fraction": math.nan}},
    ]
    out = fixed[:n]
    while len(out) < n:
        section = rng.choice(list(CONFIG_KEYS))
        key = rng.choice(CONFIG_KEYS[section])
        value = rng.choice([v for v in BAD_VALUES if not isinstance(v, (list, dict))])
        out.append({section: {key: value}})
    return out


def toml_value(v: Any) -> str:
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if isinstance(v, str):
        return json.dumps(v).replace("\\u0000", "\\u0000")
    return _toml(v)


@dataclass
class Figures:
    name: str
    deploys: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    persisted_on_refusal: int = 0
    tracebacks: int = 0
    restarted: bool = False
    configs: int = 0
    check_ok: int = 0
    check_lied: int = 0
    config_tracebacks: int = 0
    seconds: float = 0.0

    @property
    def server_errors(self) -> int:
        return sum(n for s, n in self.statuses.items() if s.startswith("5"))


def write_config(
    path: Path, tmp: Path, extra: dict[str, dict[str, Any]], state: str = "state"
) -> None:
    sections: dict[str, dict[str, Any]] = {
        "daemon": {
            "listen": f"127.0.0.1:{free_port()}",
            "id": "spec" + os.urandom(3).hex(),
            "run_dir": f"{tmp}/run",
            "state_dir": f"{tmp}/{state}",
            "control_socket": f"{tmp}/control.sock",
        },
        "docker": {"socket": f"{tmp}/no-docker.sock", "timeout": 2},
    }
    for name, table in extra.items():
        sections.setdefault(name, {}).update(table)
    if "functions.f" in sections:
        sections["functions.f"] = {"image": "kiln-test/busybox:latest", **sections["functions.f"]}
    path.write_text(
        "\n".join(
            f"[{name}]\n" + "\n".join(f"{k} = {toml_value(v)}" for k, v in table.items())
            for name, table in sections.items()
        )
        + "\n"
    )


@contextmanager
def daemon(
    source: Path | None, config: Path
) -> Iterator[tuple[subprocess.Popen[bytes], list[str]]]:
    env = dict(os.environ)
    if source is not None:
        env["PYTHONPATH"] = str(source / "daemon")
    proc = subprocess.Popen(
        [sys.executable, "-m", "kiln.cli", "daemon", "--config", str(config)],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        cwd=config.parent,
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
    ready.wait(60)
    try:
        yield proc, log
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(60)


def state_files(tmp: Path) -> dict[str, bytes]:
    d = tmp / "state" / "functions"
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())} if d.is_dir() else {}


def soak(name: str, source: Path | None, bodies: list[bytes], configs: list[Any]) -> Figures:
    f = Figures(name)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="kiln-spec-", dir="/tmp") as tmp_name:
        tmp = Path(tmp_name)
        config = tmp / "kiln.toml"
        write_config(config, tmp, {})
        with daemon(source, config) as (proc, log):
            assert proc.poll() is None, "\n".join(log[-20:])
            control = httpx.Client(
                transport=httpx.HTTPTransport(uds=str(tmp / "control.sock")),
                base_url="http://kiln",
                timeout=30,
            )
            for i, body in enumerate(bodies):
                before = state_files(tmp)
                name = f"fuzz{i}"
                try:
                    r = control.put(f"/functions/{name}", content=body)
                    status = str(r.status_code)
                except httpx.HTTPError:
                    status = "none"
                f.deploys += 1
                f.statuses[status] += 1
                if status.startswith("2"):
                    control.delete(f"/functions/{name}")
                elif state_files(tmp) != before:
                    f.persisted_on_refusal += 1  # left in place: the restart below reads it
            control.close()
            f.tracebacks = sum("Traceback" in line for line in log)
        # a restart on what the fuzz left in state_dir
        with daemon(source, config) as (proc, log):
            f.restarted = proc.poll() is None and any("listening on" in x for x in log)
        for extra in configs:
            f.configs += 1
            path = tmp / "mutated.toml"
            write_config(path, tmp, extra, state="config-state")  # no fuzzed specs
            env = dict(os.environ)
            if source is not None:
                env["PYTHONPATH"] = str(source / "daemon")
            check = subprocess.run(
                [sys.executable, "-m", "kiln.cli", "daemon", "--config", str(path), "--check"],
                capture_output=True,
                env=env,
                timeout=60,
                check=False,
            )
            f.config_tracebacks += b"Traceback" in check.stderr
            if check.returncode != 0:
                continue
            f.check_ok += 1
            with daemon(source, path) as (proc, log):
                started = proc.poll() is None and any("listening on" in x for x in log)
            f.check_lied += not started
            f.config_tracebacks += any("Traceback" in x for x in log)
    f.seconds = time.monotonic() - t0
    return f


def show(f: Figures) -> None:
    counts = ", ".join(f"{s}: {n}" for s, n in sorted(f.statuses.items()))
    print(
        f"{f.name:>8}: {f.deploys} deploys {{{counts}}}; 5xx {f.server_errors}; "
        f"persisted on refusal {f.persisted_on_refusal}; tracebacks {f.tracebacks}; "
        f"restarts on the fuzzed state: {'yes' if f.restarted else 'NO'}; "
        f"configs {f.configs}: --check ok {f.check_ok}, of which the daemon refused "
        f"{f.check_lied}; config tracebacks {f.config_tracebacks}; {f.seconds:.0f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deploys", type=int, default=2000)
    parser.add_argument("--configs", type=int, default=40)
    parser.add_argument("--before", default=BEFORE, help="baseline revision, or 'none'")
    args = parser.parse_args()
    bodies = fuzzed_bodies(args.deploys)
    configs = mutated_configs(args.configs)
    results = []
    if args.before != "none":
        with checkout(args.before) as old:
            results.append(soak("before", old, bodies, configs))
    results.append(soak("after", None, bodies, configs))
    for f in results:
        show(f)
    _ = REPO


if __name__ == "__main__":
    main()
