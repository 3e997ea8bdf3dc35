"""Fault injection on the mock clock: Docker stalls, fails, dies, vanishes; callers
leave. For each: the caller gets the documented status, reserved memory returns
to exactly 0, no container is left in the fake, and no Kiln task is left running."""

from __future__ import annotations

from functools import partial

import pytest
import trio
import trio.testing

from kiln.units import MiB
from tests.asgi import Reply, request
from tests.harness import Stack, functions, kiln_tasks, stack

FNS = functions(
    echo={"image": "busybox", "cmd": ["cat"], "timeout": 10, "memory": "128MiB"},
    slow={"image": "busybox", "cmd": ["slowcat"], "timeout": 30, "memory": "128MiB"},
    dies={"image": "busybox", "cmd": ["dies"], "memory": "128MiB"},
)


def assert_clean(s: Stack) -> None:
    stats = s.memory.statistics()
    assert stats.reserved == 0
    assert stats.reservations == 0
    assert stats.waiting == 0
    assert s.fake.containers == {}
    # only the long-lived, sleeping components remain: no call or container task
    assert set(kiln_tasks()) <= {
        "kiln.wiring.Daemon.run",
        "kiln.containers.janitor.Janitor.run",
        "kiln.hot.supervisors.Supervisors.run",
    }
    assert s.janitor.pending == 0


async def test_create_stalls_a_minute(autojump_clock: trio.testing.MockClock) -> None:
    async with stack(FNS, docker_timeout=30) as s:
        s.fake.stall["create"] = 60
        t0 = trio.current_time()
        reply = await request(s.app, "POST", "/invoke/echo", b"x")
        assert reply.status == 503
        assert reply.json()["error"]["code"] == "docker_unavailable"
        assert "retry-after" in reply.headers
        assert trio.current_time() - t0 == pytest.approx(30)
        assert_clean(s)


async def test_create_returns_500(autojump_clock: trio.testing.MockClock) -> None:
    async with stack(FNS) as s:
        s.fake.fail["create"] = (500, "devmapper: Thin Pool has 0 free data blocks")
        reply = await request(s.app, "POST", "/invoke/echo", b"x")
        assert reply.status == 502
        assert reply.json()["error"]["code"] == "docker_error"
        assert "Thin Pool" in reply.json()["error"]["message"]
        assert_clean(s)


async def test_container_dies_right_after_start(autojump_clock: trio.testing.MockClock) -> None:
    async with stack(FNS) as s:
        reply = await request(s.app, "POST", "/invoke/dies", b"x" * 100_000)
        assert reply.status == 502
        assert "code 139" in reply.json()["error"]["message"]
        assert_clean(s)


async def test_docker_unreachable_mid_call(autojump_clock: trio.testing.MockClock) -> None:
    async with stack(FNS) as s:
        replies: list[Reply] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: _collect(replies, s, "slow"))
            await trio.sleep(1)  # the call is running (slowcat takes 5 s)
            assert len(s.fake.containers) == 1
            s.fake.crash()
        assert replies[0].status == 503
        assert replies[0].json()["error"]["code"] == "docker_unavailable"
        assert s.memory.statistics().reserved == 0
        # the container could not be removed while Docker was down: the janitor keeps it
        assert s.janitor.pending == 1
        s.fake.unreachable = False  # Docker is back
        await s.janitor.wait_empty()  # on its backoff deadline, in virtual time
        assert_clean(s)


async def _collect(replies: list[Reply], s: Stack, name: str, body: bytes = b"x") -> None:
    replies.append(await request(s.app, "POST", f"/invoke/{name}", body))


async def test_caller_disconnects_while_running(autojump_clock: trio.testing.MockClock) -> None:
    async with stack(FNS) as s:
        gone = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                partial(request, s.app, "POST", "/invoke/slow", b"x", disconnect=gone)
            )
            await trio.sleep(1)
            assert s.memory.statistics().reserved == 128 * MiB
            gone.set()
        assert_clean(s)


async def test_caller_disconnects_while_queued(autojump_clock: trio.testing.MockClock) -> None:
    async with stack(FNS, capacity=128 * MiB) as s:
        gone = trio.Event()
        replies: list[Reply] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: _collect(replies, s, "slow"))
            await trio.sleep(0.5)
            nursery.start_soon(
                partial(request, s.app, "POST", "/invoke/slow", b"x", disconnect=gone)
            )
            await trio.sleep(0.5)
            assert s.memory.statistics().waiting == 1
            gone.set()
            await trio.sleep(0.1)
            assert s.memory.statistics().waiting == 0
        assert replies[0].status == 200
        assert s.fake.created_total == 1  # the one that left never got a container
        assert_clean(s)


async def test_queue_full_and_no_memory(autojump_clock: trio.testing.MockClock) -> None:
    async with stack(FNS, capacity=128 * MiB, queue_max=1, queue_wait=3) as s:
        replies: list[Reply] = []
        t0 = trio.current_time()
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(lambda: _collect(replies, s, "slow"))
                await trio.sleep(0.1)
        by_code = sorted(
            (r.status, r.json()["error"]["code"] if r.status != 200 else "") for r in replies
        )
        assert by_code == [(200, ""), (503, "no_memory"), (503, "queue_full")]
        for r in replies:
            if r.status == 503:
                assert int(r.headers["retry-after"]) >= 1
                assert (
                    "needs 128 MiB" in r.json()["error"]["message"]
                    or "queue" in r.json()["error"]["message"]
                )
        del t0
        assert_clean(s)


async def test_caller_disconnects_during_a_slow_create(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Docker takes 5 s to create; the caller leaves at 2 s. The create finishes
    (mutations are shielded) and the container it made is removed all the same."""
    async with stack(FNS) as s:
        s.fake.stall["create"] = 5
        gone = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                partial(request, s.app, "POST", "/invoke/slow", b"x", disconnect=gone)
            )
            await trio.sleep(2)
            gone.set()
        assert s.fake.created_total == 1
        assert_clean(s)


HOT = functions(
    hot={
        "image": "fnimage",
        "cmd": ["hot_echo"],
        "format": "http-stream",
        "memory": "128MiB",
        "idle_timeout": 3600,
    },
    echo={"image": "busybox", "cmd": ["cat"], "memory": "128MiB"},
)


async def test_docker_down_hot_containers_keep_serving(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with stack(HOT, queue_wait=1) as s:
        assert (await request(s.app, "POST", "/invoke/hot", b"a")).status == 200
        [cid] = [c.id for c in s.fake.live()]
        s.fake.down()  # dockerd dies; containerd keeps the container running
        await trio.sleep(30)  # its /wait stream broke long ago
        served = await request(s.app, "POST", "/invoke/hot", b"b")
        assert served.status == 200
        assert served.body == b"b"
        # a second container, or a stdio call, needs Docker: 503, and their creates,
        # which never reached Docker, are not handed to the janitor
        replies: list[Reply] = []
        async with trio.open_nursery() as nursery:
            for name in ("hot", "hot", "echo"):
                nursery.start_soon(_collect, replies, s, name)
        codes = sorted(
            (r.status, r.json()["error"]["code"] if r.status != 200 else "") for r in replies
        )
        assert codes == [(200, ""), (503, "docker_unavailable"), (503, "docker_unavailable")]
        assert s.janitor.pending == 0
        s.fake.up()
        await trio.sleep(10)  # the /wait is asked again on its backoff, and answers
        assert (await request(s.app, "POST", "/invoke/hot", b"c")).status == 200
        assert [c.id for c in s.fake.live()] == [cid]
        # once Docker is back, a container that died meanwhile is noticed and replaced
        s.fake.kill_container(cid)
        await trio.sleep(1)
        assert (await request(s.app, "POST", "/invoke/hot", b"d")).status == 200
        assert s.janitor.pending == 0


PICKY = functions(picky={"image": "fnimage", "cmd": ["hot_picky"], "format": "http-stream"})


async def test_a_request_the_fdk_refuses_does_not_kill_the_container(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with stack(PICKY) as s:
        assert (await request(s.app, "POST", "/invoke/picky", b"a")).status == 200
        [cid] = [c.id for c in s.fake.live()]
        many = [(b"x-h%d" % i, b"v") for i in range(20)]
        refused = await request(s.app, "POST", "/invoke/picky", b"b", headers=many)
        assert refused.status == 431
        assert refused.json()["error"]["code"] == "request_rejected"
        assert (await request(s.app, "POST", "/invoke/picky", b"c")).status == 200
        assert [c.id for c in s.fake.live()] == [cid]  # the same container, never killed
        assert s.fake.created_total == 1


async def test_janitor_flush_at_shutdown_and_names_shown_whole(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from kiln.containers.janitor import shown

    assert shown("a" * 64) == "a" * 12
    assert (
        shown("kiln-d-function-with-a-long-name-abc-1") == "kiln-d-function-with-a-long-name-abc-1"
    )
    async with stack(FNS) as s:
        s.fake.unreachable = True
        s.janitor.remove_later("kiln-test-echo-gone-1", "echo")
        assert await s.janitor.flush(timeout=5) == 1
        s.fake.unreachable = False
        assert await s.janitor.flush(timeout=5) == 0
