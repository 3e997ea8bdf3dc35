"""stdio calls end to end against the fake Docker engine, on the mock clock."""

from __future__ import annotations

from functools import partial

import pytest
import trio
import trio.testing

from kiln.calls.errors import FunctionFailed
from kiln.calls.stdio import ExitInfo, outcome
from kiln.containers.logtail import StderrTail
from kiln.containers.spec import LABEL_DAEMON, LABEL_FUNCTION, LABEL_INSTANCE
from kiln.functions.spec import FunctionSpec
from kiln.units import MiB
from tests.asgi import request
from tests.harness import functions, stack

FNS = functions(
    echo={"image": "busybox", "cmd": ["cat"], "timeout": 10},
    fail={"image": "busybox", "cmd": ["fail"]},
    slow={"image": "busybox", "cmd": ["sleep"], "timeout": 10},
    oom={"image": "busybox", "cmd": ["oom"], "memory": "64MiB"},
    noimage={"image": "nothere", "cmd": ["nothere"]},
)


# ---- the pure mapping ---------------------------------------------------


def spec() -> FunctionSpec:
    return FunctionSpec(name="f", image="i", memory=256 * MiB)


def test_exit_zero_is_success() -> None:
    assert outcome(spec(), ExitInfo(0, False, "")) is None


def test_nonzero_exit_is_502_with_code_and_tail() -> None:
    err = outcome(spec(), ExitInfo(3, False, "boom"))
    assert isinstance(err, FunctionFailed)
    assert err.status == 502
    assert "exited with code 3" in err.message
    assert "boom" in err.message


def test_oom_says_raise_memory() -> None:
    err = outcome(spec(), ExitInfo(137, True, ""))
    assert err is not None
    assert err.status == 502
    assert err.code == "out_of_memory"
    assert "256 MiB" in err.message
    assert "raise `memory`" in err.message


def test_exit_137_without_oom_flag_still_hints_memory() -> None:
    err = outcome(spec(), ExitInfo(137, False, ""))
    assert err is not None
    assert err.code == "out_of_memory"


def test_stderr_tail_keeps_last_lines() -> None:
    tail = StderrTail(max_lines=3, max_bytes=100)
    for i in range(10):
        tail.feed(f"line {i}\n".encode()[:3])
        tail.feed(f"line {i}\n".encode()[3:])
    assert tail.text() == "line 7\nline 8\nline 9"


# ---- through the API, fake Docker ------------------------------------------


async def test_echo_round_trip_and_container_removed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with stack(FNS) as s:
        body = bytes(range(256)) * 4096  # 1 MiB
        reply = await request(s.app, "POST", "/invoke/echo", body)
        assert reply.status == 200
        assert reply.body == body
        assert reply.headers["kiln-call-id"]
        assert reply.headers["kiln-cold"] == "1"
        assert s.fake.containers == {}
        created = s.fake.created_total
        assert created == 1


async def test_container_is_labelled_and_hardened(autojump_clock: trio.testing.MockClock) -> None:
    async with stack(FNS) as s:
        seen = {}
        orig = s.fake._create

        def spy(req):  # type: ignore[no-untyped-def]
            resp = orig(req)
            seen.update(next(iter(s.fake.containers.values())).config)
            return resp

        s.fake._create = spy  # type: ignore[method-assign]
        assert (await request(s.app, "POST", "/invoke/echo", b"x")).status == 200
        labels = seen["Labels"]
        assert labels[LABEL_DAEMON] == "test"
        assert labels[LABEL_FUNCTION] == "echo"
        assert labels[LABEL_INSTANCE]
        hc = seen["HostConfig"]
        assert hc["Init"] is True
        assert hc["ReadonlyRootfs"] is True
        assert "/tmp" in hc["Tmpfs"]
        assert hc["Memory"] == hc["MemorySwap"] == 128 * MiB
        assert hc["CapDrop"] == ["ALL"]
        assert hc["SecurityOpt"] == ["no-new-privileges"]
        assert hc["NetworkMode"] == "none"
        assert hc["PidsLimit"] > 0
        assert hc["Ulimits"][0]["Name"] == "nofile"


async def test_nonzero_exit_gives_502_with_stderr(autojump_clock: trio.testing.MockClock) -> None:
    async with stack(FNS) as s:
        reply = await request(s.app, "POST", "/invoke/fail", b"x")
        assert reply.status == 502
        err = reply.json()["error"]
        assert err["code"] == "function_error"
        assert "code 3" in err["message"]
        assert "really wrong" in err["message"]
        assert s.fake.containers == {}


async def test_timeout_kills_and_gives_504_exactly_on_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with stack(FNS) as s:
        t0 = trio.current_time()
        reply = await request(s.app, "POST", "/invoke/slow", b"x")
        assert reply.status == 504
        assert reply.json()["error"]["code"] == "timeout"
        assert trio.current_time() - t0 == pytest.approx(10.0)
        assert ("kill", next(c for op, c in s.fake.calls if op == "kill")) in s.fake.calls
        assert s.fake.containers == {}


async def test_oom_gives_502_naming_memory(autojump_clock: trio.testing.MockClock) -> None:
    async with stack(FNS) as s:
        reply = await request(s.app, "POST", "/invoke/oom", b"x")
        assert reply.status == 502
        err = reply.json()["error"]
        assert err["code"] == "out_of_memory"
        assert "64 MiB" in err["message"]
        assert s.fake.containers == {}


async def test_unknown_function_404(autojump_clock: trio.testing.MockClock) -> None:
    async with stack(FNS) as s:
        reply = await request(s.app, "POST", "/invoke/nope", b"x")
        assert reply.status == 404
        assert reply.json()["error"]["code"] == "unknown_function"
        assert reply.headers["kiln-call-id"]
        assert s.fake.created_total == 0


async def test_body_over_limit_413(autojump_clock: trio.testing.MockClock) -> None:
    async with stack(FNS, max_body=1000) as s:
        reply = await request(s.app, "POST", "/invoke/echo", b"x" * 1001)
        assert reply.status == 413
        assert "max_body" in reply.json()["error"]["message"]
        assert s.fake.created_total == 0


async def test_missing_image_502_names_it(autojump_clock: trio.testing.MockClock) -> None:
    async with stack(FNS) as s:
        reply = await request(s.app, "POST", "/invoke/noimage", b"x")
        assert reply.status == 502
        assert reply.json()["error"]["code"] == "image_not_found"
        assert "nothere" in reply.json()["error"]["message"]


async def test_docker_unreachable_503_and_daemon_keeps_going(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with stack(FNS) as s:
        s.fake.unreachable = True
        reply = await request(s.app, "POST", "/invoke/echo", b"x")
        assert reply.status == 503
        assert reply.json()["error"]["code"] == "docker_unavailable"
        assert "unreachable" in reply.json()["error"]["message"]
        assert "retry-after" in reply.headers
        s.fake.unreachable = False
        assert (await request(s.app, "POST", "/invoke/echo", b"back")).body == b"back"


async def test_caller_disconnect_cancels_and_removes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with stack(FNS) as s:
        gone = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                partial(request, s.app, "POST", "/invoke/slow", b"x", disconnect=gone)
            )
            await trio.sleep(2)
            assert len(s.fake.containers) == 1
            gone.set()
        assert s.fake.containers == {}
