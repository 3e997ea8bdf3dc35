"""Raw HTTP requests against a live daemon's invoke port (real Docker, a hot echo
function): no 5xx that the caller caused, no traceback or ERROR in the log, and
the daemon answers afterwards. Bounded for CI; ``bench/fuzz_soak.py`` runs the
same generator for longer and prints the figures."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, given, settings

from tests.integration.conftest import PYTHON, Daemon
from tests.security.httpfuzz import RawRequest, exchange, healthy, raw_requests

pytestmark = pytest.mark.docker

FUNCTIONS = {
    "echo": {
        "image": PYTHON,
        "cmd": ["python3", "/fn/echo_fdk.py"],
        "format": "http-stream",
        "memory": "64MiB",
        "min_warm": 1,
    }
}
#: Short, so that a request whose body never completes costs a second, not a minute.
DAEMON = {"body_timeout": 1}
EXAMPLES = 150


def test_raw_http_fuzz_on_the_invoke_port(start_daemon: Callable[..., Daemon]) -> None:
    kiln = start_daemon(FUNCTIONS, daemon=DAEMON)
    url = urlsplit(kiln.url)
    host, port = str(url.hostname), int(url.port or 80)
    assert kiln.invoke("echo", b"warm").status_code == 200
    counts: Counter[int | str] = Counter()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,  # the same requests in every run; bench/fuzz_soak.py goes further
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(request=raw_requests())
    def one(request: RawRequest) -> None:
        got = exchange(host, port, request, timeout=5)
        for status in got.statuses:
            counts[status] += 1
        if not got.statuses:
            counts["no answer"] += 1
        assert all(status < 500 for status in got.statuses), (got.raw[:500], kiln.log()[-3000:])

    one()
    print(
        f"\nraw HTTP fuzz, {sum(counts.values())} answers: {dict(sorted(counts.items(), key=str))}"
    )
    assert healthy(host, port)
    with kiln.control() as control:
        assert control.get("/status").status_code == 200
    assert kiln.invoke("echo", b"still here").content == b"still here"
    log = kiln.log()
    assert "Traceback" not in log, log[-5000:]
    assert " ERROR " not in log, log[-5000:]
