"""The connection to a hot container: dialed on demand, closed when idle, and the
reconnect rule (a dead idle connection is retried once; one that died after the
request went out is not). Fake connections, the mock clock."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import trio
import trio.testing

from kiln.hot.dialer import Dialer, Undelivered
from kiln.hot.httpstream import FnProtocolError, FnResponse, RequestNotSent
from kiln.hot.transport import HotConnection

OK = FnResponse(200, [], b"ok")


@dataclass
class Conn:
    """A scripted connection: each call pops the next answer (a response or an exception)."""

    script: list[FnResponse | Exception] = field(default_factory=list)
    is_stale: bool = False
    calls: int = 0
    closed: bool = False

    async def call(self, headers: list[tuple[bytes, bytes]], body: bytes) -> FnResponse:
        await trio.lowlevel.checkpoint()
        self.calls += 1
        answer = self.script.pop(0) if self.script else OK
        if isinstance(answer, Exception):
            raise answer
        return answer

    def stale(self) -> bool:
        return self.is_stale

    async def aclose(self) -> None:
        self.closed = True
        await trio.lowlevel.checkpoint()


class Dials:
    """The dial function: hands out the queued connections, then fresh good ones."""

    def __init__(self, *queued: Conn | Exception) -> None:
        self.queued = list(queued)
        self.made: list[Conn] = []

    async def __call__(self) -> HotConnection:
        await trio.lowlevel.checkpoint()
        item = self.queued.pop(0) if self.queued else Conn()
        if isinstance(item, Exception):
            raise item
        self.made.append(item)
        return item


async def test_dials_on_first_call_and_reuses_while_busy_enough(
    autojump_clock: trio.testing.MockClock,
) -> None:
    dials = Dials()
    dialer = Dialer(dials, idle=1.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(dialer.run)
        for _ in range(5):
            assert (await dialer.call([], b"x")).status == 200
            await trio.sleep(0.5)
        assert len(dials.made) == 1
        assert dials.made[0].calls == 5
        await trio.sleep(0.4)  # 0.9 s since the last call
        assert not dials.made[0].closed
        await trio.sleep(0.2)
        assert dials.made[0].closed
        nursery.cancel_scope.cancel()


async def test_idle_connection_is_closed_after_idle_seconds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    dials = Dials()
    dialer = Dialer(dials, idle=1.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(dialer.run)
        await dialer.connect()
        first = dials.made[0]
        await trio.sleep(0.9)
        assert not first.closed
        await trio.sleep(0.2)
        assert first.closed
        assert not dialer.connected
        await dialer.call([], b"x")  # dials again
        assert len(dials.made) == 2
        assert first.calls == 0
        nursery.cancel_scope.cancel()


async def test_not_closed_while_a_call_runs_past_the_idle_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    slow = Conn()

    async def slow_call(headers: list[tuple[bytes, bytes]], body: bytes) -> FnResponse:
        await trio.sleep(5)
        return OK

    slow.call = slow_call  # type: ignore[method-assign]
    dialer = Dialer(Dials(slow), idle=1.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(dialer.run)
        await dialer.connect()
        assert (await dialer.call([], b"x")).status == 200
        assert not slow.closed
        await trio.sleep(1.1)
        assert slow.closed
        nursery.cancel_scope.cancel()


async def test_stale_idle_connection_is_replaced_before_sending(
    autojump_clock: trio.testing.MockClock,
) -> None:
    dead = Conn(is_stale=True)
    dials = Dials(dead)
    dialer = Dialer(dials)
    await dialer.connect()
    assert (await dialer.call([], b"x")).status == 200
    assert dead.calls == 0
    assert dead.closed
    assert dials.made[1].calls == 1


@pytest.mark.parametrize(
    "first_answer",
    [RequestNotSent("closed on the first write"), FnResponse(408, [], b"Request Timeout")],
    ids=["not-sent", "408"],
)
async def test_reused_connection_dead_before_the_request_is_retried_once(
    first_answer: FnResponse | Exception, autojump_clock: trio.testing.MockClock
) -> None:
    reused = Conn(script=[first_answer])
    dials = Dials(reused)
    dialer = Dialer(dials)
    await dialer.connect()
    assert (await dialer.call([], b"x")).status == 200
    assert reused.calls == 1
    assert reused.closed
    assert len(dials.made) == 2
    assert dials.made[1].calls == 1


async def test_connection_that_died_after_the_request_is_not_retried(
    autojump_clock: trio.testing.MockClock,
) -> None:
    reused = Conn(script=[FnProtocolError("the function closed the connection before answering")])
    dials = Dials(reused)
    dialer = Dialer(dials)
    await dialer.connect()
    with pytest.raises(FnProtocolError, match="before answering"):
        await dialer.call([], b"x")
    assert len(dials.made) == 1
    assert reused.closed


async def test_408_on_a_fresh_connection_is_the_answer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    dialer = Dialer(Dials(Conn(script=[FnResponse(408, [], b"")])))
    assert (await dialer.call([], b"x")).status == 408


async def test_a_retry_is_made_only_once(autojump_clock: trio.testing.MockClock) -> None:
    reused = Conn(script=[RequestNotSent("gone")])
    fresh = Conn(script=[RequestNotSent("gone too")])
    dials = Dials(reused, fresh)
    dialer = Dialer(dials)
    await dialer.connect()
    with pytest.raises(Undelivered):
        await dialer.call([], b"x")
    assert (reused.calls, fresh.calls) == (1, 1)
    assert len(dials.made) == 2


async def test_a_listener_that_cannot_be_reached_is_undelivered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    dialer = Dialer(Dials(RequestNotSent("cannot connect: Connection refused")))
    with pytest.raises(Undelivered, match="Connection refused"):
        await dialer.call([], b"x")


async def test_cancelled_call_drops_the_connection(autojump_clock: trio.testing.MockClock) -> None:
    hung = Conn()

    async def never(headers: list[tuple[bytes, bytes]], body: bytes) -> FnResponse:
        await trio.sleep_forever()
        raise AssertionError

    hung.call = never  # type: ignore[method-assign]
    dialer = Dialer(Dials(hung))
    with trio.move_on_after(1):
        await dialer.call([], b"x")
    assert hung.closed
    assert not dialer.connected


async def test_closed_dialer_refuses_calls(autojump_clock: trio.testing.MockClock) -> None:
    dials = Dials()
    dialer = Dialer(dials)
    await dialer.connect()
    await dialer.aclose()
    assert dials.made[0].closed
    with pytest.raises(Undelivered):
        await dialer.call([], b"x")
