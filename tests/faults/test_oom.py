"""A hot function that runs out of memory, during a call or at start, is
reported like a stdio one: 502 ``out_of_memory``, "raise `memory`"."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.integration.conftest import PYTHON, Daemon

pytestmark = pytest.mark.docker

GREEDY_CALL = """
import sys
sys.path.insert(0, "/fn")
import fdk

def handle(body, headers):
    hog = bytearray(int(body) << 20)
    return b"survived %d" % len(hog)

fdk.serve(handle)
"""


def test_oom_during_a_hot_call(start_daemon: Callable[..., Daemon]) -> None:
    kiln = start_daemon(
        {
            "greedy": {
                "image": PYTHON,
                "cmd": ["python3", "-c", GREEDY_CALL],
                "format": "http-stream",
                "memory": "48MiB",
            }
        }
    )
    assert kiln.invoke("greedy", b"1").status_code == 200
    r = kiln.invoke("greedy", b"300")
    assert r.status_code == 502, r.text
    error = r.json()["error"]
    assert error["code"] == "out_of_memory", error
    assert "raise `memory`" in error["message"]
    assert kiln.invoke("greedy", b"1").status_code == 200  # a fresh container serves again


def test_oom_at_start(start_daemon: Callable[..., Daemon]) -> None:
    kiln = start_daemon(
        {
            "hog": {
                "image": PYTHON,
                "cmd": ["python3", "-c", "x = bytearray(300 << 20)"],
                "format": "http-stream",
                "memory": "48MiB",
            }
        }
    )
    r = kiln.invoke("hog")
    assert r.status_code == 502, r.text
    error = r.json()["error"]
    assert error["code"] == "out_of_memory", error
    assert "raise `memory`" in error["message"]
    assert "before it was ready" in error["message"]
