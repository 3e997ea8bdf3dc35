"""Function logs without Docker: splitting and cutting, the flood limit, the ring,
the file mirror's rotation, followers, call attribution, the logs route."""

from __future__ import annotations

import json
from collections.abc import MutableMapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from kiln.docker.frames import Frame
from kiln.logs.http import BadLogsRequest, parse_request, parse_since, serve_logs
from kiln.logs.hub import Hub
from kiln.logs.journal import StderrForwarder, encode_entry, line_fields, under_journald
from kiln.logs.lines import KILN, FloodLimiter, LineSplitter, LogLine, line_text
from kiln.logs.mirror import FileMirror
from kiln.logs.service import LINGER, Logs, LogSettings
from kiln.logs.store import FunctionRing, LogStore, Query


def line(seq: int, text: str = "x", call: str | None = None, t: float = 0.0) -> LogLine:
    return LogLine(seq, t, "f", "c", call, "stdout", text)


# ---- splitting and cutting ------------------------------------------------------


def test_splitter_joins_pieces_and_strips_cr() -> None:
    s = LineSplitter(100)
    assert s.feed(b"hel") == []
    assert s.feed(b"lo\r\nwor") == [(b"hello", 0)]
    assert s.feed(b"ld\n\n") == [(b"world", 0), (b"", 0)]
    assert s.flush() == []


def test_splitter_cuts_long_lines_and_counts_the_rest() -> None:
    s = LineSplitter(10)
    assert s.feed(b"0123456789abc") == []
    assert s.feed(b"def\nshort\n") == [(b"0123456789", 6), (b"short", 0)]
    assert s.feed(b"x" * 25) == []
    assert s.flush() == [(b"x" * 10, 15)]
    assert "…[kiln: line cut, 6 more bytes]" in line_text(b"0123456789", 6)


def test_splitter_never_grows_past_its_limit() -> None:
    s = LineSplitter(64)
    for _ in range(1000):
        s.feed(b"y" * 4096)
    assert len(s._partial) == 64
    [(kept, cut)] = s.flush()
    assert len(kept) == 64
    assert cut == 1000 * 4096 - 64


def test_flood_limiter_counts_drops() -> None:
    lim = FloodLimiter(rate=10, burst=5)
    admitted = sum(lim.admit(0.0) for _ in range(20))
    assert admitted == 5
    assert lim.dropped == 15
    assert lim.take_dropped() == 15
    assert lim.dropped == 0
    assert lim.admit(0.1)  # one token back after 0.1 s at 10/s
    assert not lim.admit(0.1)
    assert lim.dropped_total == 16


# ---- the ring --------------------------------------------------------------------


def test_ring_bounded_by_lines_and_bytes() -> None:
    ring = FunctionRing(max_lines=3, max_bytes=10_000)
    for i in range(1, 6):
        ring.append(line(i))
    assert [x.seq for x in ring.lines] == [3, 4, 5]
    ring = FunctionRing(max_lines=100, max_bytes=1000)
    for i in range(1, 20):
        ring.append(line(i, "z" * 200))
    assert ring.bytes <= 1000
    assert len(ring.lines) == 3


def test_query_filters() -> None:
    store = LogStore(max_lines=100, max_bytes=1 << 20)
    for i in range(10):
        store.add("f", "c", "a" if i % 2 else "b", "stdout", f"l{i}", float(i))
    assert [x.text for x in store.query("f", Query(call="a"))] == ["l1", "l3", "l5", "l7", "l9"]
    assert [x.text for x in store.query("f", Query(call="a", tail=2))] == ["l7", "l9"]
    assert [x.text for x in store.query("f", Query(since=7.0))] == ["l7", "l8", "l9"]
    assert [x.text for x in store.query("f", Query(since=5.0, tail=2))] == ["l8", "l9"]
    assert store.query("f", Query(tail=0)) == []
    assert store.query("nope", Query()) == []
    store.forget("f")
    assert store.query("f", Query()) == []


# ---- the mirror ---------------------------------------------------------------------


def test_mirror_rotates_by_size_and_count(tmp_path: Path) -> None:
    m = FileMirror(tmp_path / "logs", max_size=200, count=3)
    for i in range(40):
        m.write(LogLine(i, 0.0, "fn", "c", None, "stdout", f"line {i:02d}"))
        m.flush()
    m.close()
    files = sorted(p.name for p in (tmp_path / "logs").iterdir())
    assert files == ["fn.log", "fn.log.1", "fn.log.2"]
    for p in (tmp_path / "logs").iterdir():
        assert p.stat().st_size <= 200
    assert "line 39" in (tmp_path / "logs" / "fn.log").read_text()
    assert "line 00" not in "".join(p.read_text() for p in (tmp_path / "logs").iterdir())


def test_mirror_failure_is_contained(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    m = FileMirror(blocker / "sub", max_size=200, count=2)  # a dir under a file: cannot exist
    m.write(LogLine(1, 0.0, "fn", "c", None, "stdout", "x"))
    m.flush()
    m.close()


# ---- journald's wire format ----------------------------------------------------------


def test_journal_entry_fields_and_binary_form() -> None:
    ln = LogLine(1, 0.0, "echo", "kiln-x-echo-1", "abc", "stderr", "boom")
    data = encode_entry(line_fields(ln))
    assert b"KILN_FUNCTION=echo\n" in data
    assert b"KILN_CALL_ID=abc\n" in data
    assert b"MESSAGE=echo call=abc stderr: boom\n" in data
    assert b"PRIORITY=5\n" in data
    multi = encode_entry([("MESSAGE", "a\nb")])
    assert multi == b"MESSAGE\n" + (3).to_bytes(8, "little") + b"a\nb\n"


def test_stderr_forwarder_writes_a_batch_in_the_log_format() -> None:
    import logging
    import os

    r, w = os.pipe()
    fwd = StderrForwarder(w)
    logging.getLogger("kiln.fn").setLevel(logging.INFO)
    fwd.send(
        [
            LogLine(1, 0.0, "echo", "ctr", "abc", "stderr", "one"),
            LogLine(2, 0.0, "echo", "ctr", None, "stdout", "two"),
        ]
    )
    os.close(w)
    out = os.read(r, 4096).decode()
    os.close(r)
    first, second = out.splitlines()
    assert first.endswith(" INFO kiln.fn: fn=echo call=abc container=ctr stderr: one")
    assert second.endswith(" INFO kiln.fn: fn=echo call=- container=ctr stdout: two")
    assert first[:4].isdigit()
    assert first[19] == ","


def test_under_journald_needs_the_stream_to_be_stderr(tmp_path: Path) -> None:
    assert not under_journald({})
    assert not under_journald({"JOURNAL_STREAM": "garbage"})
    with open(tmp_path / "f", "w") as f:
        import os

        st = os.fstat(f.fileno())
        assert under_journald({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, f.fileno())
        assert not under_journald({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"}, f.fileno())


# ---- the service: attribution, flood, cut, followers ----------------------------------


class Collect:
    def __init__(self) -> None:
        self.lines: list[LogLine] = []

    def send(self, lines: Sequence[LogLine]) -> None:
        self.lines.extend(lines)

    def close(self) -> None:
        pass


async def test_lines_belong_to_the_call_being_served() -> None:
    logs = Logs(LogSettings(), wall_clock=lambda: 1000.0)
    c = logs.container("f", "ctr")
    c.feed([Frame(1, b"before\n")])
    c.begin_call("A")
    c.feed([Frame(1, b"in A\n"), Frame(2, b"err A\n")])
    c.end_call()
    c.feed([Frame(1, b"late A\n")])  # the answer beat the line through dockerd
    await trio.sleep(LINGER * 2)
    c.feed([Frame(1, b"between\n")])
    got = [(x.call, x.stream, x.text) for x in logs.query("f", Query())]
    assert got == [
        (None, "stdout", "before"),
        ("A", "stdout", "in A"),
        ("A", "stderr", "err A"),
        ("A", "stdout", "late A"),
        (None, "stdout", "between"),
    ]
    assert logs.call_tail("f", "A") == "in A\nerr A\nlate A"


async def test_log_frames_attribute_exactly_and_are_swallowed() -> None:
    logs = Logs(LogSettings(), wall_clock=lambda: 1000.0)
    c = logs.container("f", "ctr")
    c.begin_call("A")
    c.feed([Frame(1, b"\nkiln_call_id=A\nin A\n")])
    c.end_call()
    c.begin_call("B")  # back to back: A's late line arrives while B runs
    c.feed([Frame(1, b"late A\n\nkiln_call_id=B\nin B\n\n")])
    c.feed([Frame(1, b"kiln_call_id=Z\n")])  # not a call this container served: a plain line
    c.close()
    got = [(x.call, x.text) for x in logs.query("f", Query())]
    assert got == [
        ("A", "in A"),
        ("A", "late A"),
        ("B", "in B"),
        ("B", ""),
        ("B", "kiln_call_id=Z"),
    ]


async def test_an_unframed_line_belongs_to_the_call_served_not_an_old_frame(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Kiln's FDK frames only a call that writes through Python's streams; what a
    later call writes around them (a subprocess) belongs to that later call."""
    logs = Logs(LogSettings(), wall_clock=lambda: 1000.0)
    c = logs.container("f", "ctr")
    c.begin_call("A")
    c.feed([Frame(1, b"\nkiln_call_id=A\nin A\n")])
    c.end_call()
    await trio.sleep(1)  # A is long over
    c.begin_call("B")  # B prints nothing itself: no frame
    c.feed([Frame(1, b"from B's subprocess\n")])
    c.end_call()
    c.feed([Frame(1, b"just after B\n")])  # lingering: still B's
    await trio.sleep(1)
    c.feed([Frame(1, b"between calls\n")])
    c.close()
    got = [(x.call, x.text) for x in logs.query("f", Query())]
    assert got == [
        ("A", "in A"),
        ("B", "from B's subprocess"),
        ("B", "just after B"),
        (None, "between calls"),
    ]


async def test_flooding_function_is_limited_with_a_counted_marker() -> None:
    fwd = Collect()
    logs = Logs(LogSettings(rate=100, burst=10), forwarder=fwd, wall_clock=lambda: 1.0)
    c = logs.container("flood", "ctr")
    c.feed([Frame(1, b"".join(b"line %d\n" % i for i in range(1000)))])
    assert logs.store.usage("flood")[0] == 10
    assert logs.dropped_total("flood") == 990
    assert logs.statistics() == {"flood": (10, 990)}
    await trio.sleep(1)
    c.feed([Frame(1, b"after\n")])
    texts = [x.text for x in logs.query("flood", Query(tail=2))]
    assert texts[0].startswith("[kiln: 990 line(s) dropped")
    assert texts[1] == "after"
    assert logs.query("flood", Query(tail=2))[0].stream == KILN
    # another function is not held back by the flood
    other = logs.container("calm", "ctr2")
    other.feed([Frame(1, b"fine\n")])
    assert [x.text for x in logs.query("calm", Query())] == ["fine"]
    assert len(fwd.lines) == 13


async def test_followers_get_new_lines_and_slow_ones_are_told() -> None:
    hub = Hub()
    with hub.follow("f", buffer=2) as fast, hub.follow("f", call="A") as only_a:
        for i in range(1, 5):
            hub.publish(line(i, call="A" if i % 2 else None))
        assert fast.receive.receive_nowait().seq == 1
        assert fast.take_dropped() == 2
        assert only_a.receive.receive_nowait().seq == 1
        assert only_a.receive.receive_nowait().seq == 3
    assert hub.followers("f") == 0


# ---- the HTTP route ---------------------------------------------------------------------


def test_parse_since_forms() -> None:
    assert parse_since("10m", 1000.0) == 400.0
    assert parse_since("90s", 1000.0) == 910.0
    assert parse_since("2026-12-02T07:00:00Z", 0) == 1796194800.0
    assert parse_since("2026-12-02T08:00:00+01:00", 0) == 1796194800.0
    assert parse_since("1796194800.5", 0) == 1796194800.5
    for bad in ("yesterday", "nan", "1e300", "-5m"):
        with pytest.raises(BadLogsRequest):
            parse_since(bad, 0)


def test_parse_request() -> None:
    r = parse_request(b"since=1m&call=abc&tail=5&follow=1", b"application/x-ndjson", 100.0)
    assert r.query == Query(since=40.0, call="abc", tail=5)
    assert r.follow
    assert r.ndjson
    r = parse_request(b"", b"*/*", 0)
    assert r.query == Query()
    assert not r.follow
    assert not r.ndjson
    for bad in (b"tail=-1", b"tail=x", b"bogus=1", b"follow=maybe", b"tail=99999999999"):
        with pytest.raises(BadLogsRequest):
            parse_request(bad, b"", 0)


async def test_follow_streams_backlog_then_live_lines() -> None:
    logs = Logs(LogSettings(), wall_clock=lambda: 1000.0)
    c = logs.container("f", "ctr")
    c.feed([Frame(1, b"old\n")])
    sent: list[MutableMapping[str, Any]] = []
    got_two = trio.Event()
    leave = trio.Event()

    async def receive() -> dict[str, object]:
        await leave.wait()
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)
        if sum(1 for m in sent if m.get("body")) >= 2:
            got_two.set()

    scope = {
        "type": "http",
        "query_string": b"follow=1",
        "headers": [(b"accept", b"application/x-ndjson")],
    }
    async with trio.open_nursery() as n:
        n.start_soon(partial(serve_logs, logs, "f", scope, receive, send, extra_headers=[]))
        await trio.testing.wait_all_tasks_blocked()
        c.feed([Frame(1, b"new\n")])
        await got_two.wait()
        leave.set()
    bodies = [m["body"] for m in sent if m.get("body")]
    assert [json.loads(b)["text"] for b in bodies] == ["old", "new"]
    assert sent[0]["status"] == 200
    assert logs.hub.followers("f") == 0


def test_fdk_writes_fn_log_frames_when_asked() -> None:
    import fdk

    env = {"FN_LOGFRAME_NAME": "kiln_call_id", "FN_LOGFRAME_HDR": "Fn-Call-Id"}
    assert fdk.log_frame({"fn-call-id": "abc"}, env) == "\nkiln_call_id=abc\n"
    assert fdk.log_frame({"fn-call-id": "abc"}, {}) is None
    assert fdk.log_frame({}, env) is None
    assert fdk.log_frame({"fn-call-id": "a\nb"}, env) is None


def test_docker_log_driver_choice() -> None:
    from kiln.config import parse
    from kiln.containers.runtime import docker_log_config

    assert docker_log_config("none") == {"Type": "none", "Config": {}}
    assert docker_log_config("json-file") == {
        "Type": "json-file",
        "Config": {"max-size": "1m", "max-file": "1"},
    }
    assert parse({}).logs.docker_driver == "none"
    assert parse({"logs": {"docker_driver": "local"}}).logs.docker_driver == "local"
