"""kiln.http.cycle: the request/response state machine, driven directly over an
in-memory stream pair (no server), and the server's pure log throttle."""

from __future__ import annotations

import h11
import pytest
import trio
import trio.testing

from kiln.http.cycle import Cycle
from kiln.http.messages import Refusal
from kiln.http.server import LogThrottle
from kiln.http.states import TRANSITIONS, State


def test_every_state_is_reachable_and_gone_is_final() -> None:
    reached = {State.AWAITING}
    frontier = [State.AWAITING]
    while frontier:
        for nxt in TRANSITIONS[frontier.pop()]:
            if nxt not in reached:
                reached.add(nxt)
                frontier.append(nxt)
    assert reached == set(State)
    assert TRANSITIONS[State.GONE] == frozenset()
    for state in State:
        if state is not State.GONE:
            assert State.GONE in TRANSITIONS[state]  # a client can always leave


def state_of(cycle: Cycle) -> State:
    return cycle.state


async def make_cycle(data: bytes) -> tuple[Cycle, trio.abc.Stream]:
    client, server = trio.testing.memory_stream_pair()
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    request = conn.next_event()
    assert isinstance(request, h11.Request)
    return Cycle(conn, server, request, body_deadline=trio.current_time() + 10), client


async def test_an_illegal_transition_is_refused() -> None:
    cycle, _ = await make_cycle(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    with pytest.raises(RuntimeError, match="not a transition"):
        cycle._to(State.SENDING)  # the head must be started first
    with pytest.raises(RuntimeError, match=r"before http\.response\.start"):
        await cycle.send({"type": "http.response.body", "body": b"x"})


async def test_a_refusal_replaces_a_buffered_head_but_not_a_written_one() -> None:
    cycle, _ = await make_cycle(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n")
    await cycle.send({"type": "http.response.start", "status": 200, "headers": []})
    assert state_of(cycle) is State.HEAD
    cycle.refuse(Refusal(408, "request_timeout", "slow"))
    assert state_of(cycle) is State.REFUSED
    assert await cycle.receive() == {"type": "http.disconnect"}
    await cycle.send({"type": "http.response.body", "body": b"dropped"})  # silently

    cycle, _ = await make_cycle(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n")
    await cycle.send({"type": "http.response.start", "status": 200, "headers": []})
    await cycle.send({"type": "http.response.body", "body": b"part", "more_body": True})
    assert state_of(cycle) is State.SENDING
    cycle.refuse(Refusal(408, "request_timeout", "slow"))
    assert state_of(cycle) is State.GONE  # only closing can tell the client now


async def test_the_body_deadline_refuses_with_408(autojump_clock: trio.testing.MockClock) -> None:
    cycle, client = await make_cycle(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n")
    await client.send_all(b"ab")
    first = await cycle.receive()
    assert first == {"type": "http.request", "body": b"ab", "more_body": True}
    assert await cycle.receive() == {"type": "http.disconnect"}
    assert trio.current_time() == pytest.approx(10)
    assert state_of(cycle) is State.REFUSED
    assert cycle.refusal is not None
    assert cycle.refusal.status == 408


def test_log_throttle() -> None:
    throttle = LogThrottle(10)
    assert throttle.allow(0) == 0
    assert throttle.allow(1) is None
    assert throttle.allow(9.9) is None
    assert throttle.allow(10) == 2  # two held back
    assert throttle.allow(25) == 0
