"""The short calls' sans-IO HTTP/1.1 (kiln.docker.http1): answers framed by length, by
chunks or by the connection's end, in any split; what may and may not be reused; bad
HTTP refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kiln.docker.errors import DockerProtocolError, DockerUnreachable
from kiln.docker.http1 import ResponseReader, request_head

PING = b"HTTP/1.1 200 OK\r\nApi-Version: 1.47\r\nContent-Length: 2\r\n\r\nOK"


def chunked(*pieces: bytes, trailer: bytes = b"") -> bytes:
    out = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    for piece in pieces:
        out += b"%x\r\n%s\r\n" % (len(piece), piece)
    return out + b"0\r\n" + trailer + b"\r\n"


def read(wire: bytes, cuts: list[int] | None = None, *, eof: bool = False) -> ResponseReader:
    reader = ResponseReader()
    last = 0
    for cut in [*(cuts or []), len(wire)]:
        if cut > last and reader.feed(wire[last:cut]):
            return reader
        last = max(last, cut)
    assert eof, "the answer should have been whole"
    reader.eof()
    return reader


def test_a_whole_answer_in_one_piece() -> None:
    reader = read(PING)
    assert (reader.status, reader.body, reader.reusable) == (200, b"OK", True)
    assert reader.headers == [(b"Api-Version", b"1.47"), (b"Content-Length", b"2")]


@given(st.data())
def test_any_split_gives_the_same_answer(data: st.DataObject) -> None:
    pieces = data.draw(st.lists(st.binary(min_size=1, max_size=40), max_size=5))
    wire = data.draw(
        st.sampled_from([PING, chunked(*pieces), chunked(*pieces, trailer=b"X: y\r\n")])
    )
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=30)))
    reader = read(wire, cuts)
    assert reader.reusable
    assert reader.body == (b"OK" if wire is PING else b"".join(pieces))


@given(st.binary(max_size=300), st.data())
def test_any_split_of_a_body_by_length_or_until_the_end(body: bytes, data: st.DataObject) -> None:
    by_length = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    until_end = b"HTTP/1.1 200 OK\r\n\r\n" + body
    for wire, eof in ((by_length, False), (until_end, True)):
        cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=20)))
        reader = read(wire, cuts, eof=eof)
        assert (reader.body, reader.reusable) == (body, not eof)


def test_chunk_extensions_and_upper_case_sizes() -> None:
    wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nA;x=1\r\n0123456789\r\n0\r\n\r\n"
    assert read(wire).body == b"0123456789"


def test_interim_answers_are_skipped() -> None:
    reader = read(b"HTTP/1.1 100 Continue\r\n\r\n" + PING)
    assert (reader.status, reader.body) == (200, b"OK")


@pytest.mark.parametrize("status", [204, 304])
def test_bodiless_statuses(status: int) -> None:
    reader = read(b"HTTP/1.1 %d X\r\n\r\n" % status)
    assert (reader.status, reader.body, reader.reusable) == (status, b"", True)


def test_head_answer_has_no_body() -> None:
    reader = ResponseReader(head_only=True)
    assert reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
    assert reader.body == b""


@pytest.mark.parametrize(
    "wire",
    [
        PING.replace(b"HTTP/1.1", b"HTTP/1.0"),
        PING.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"),
        PING + b"junk",  # more than announced
        chunked(b"ab") + b"junk",
        chunked(b"ab").replace(b"\r\n\r\n", b"\r\nContent-Length: 5\r\n\r\n", 1),
    ],
)
def test_connections_not_to_reuse(wire: bytes) -> None:
    assert read(wire).reusable is False


def test_body_until_the_connection_ends() -> None:
    reader = read(b"HTTP/1.1 200 OK\r\n\r\nall of it", eof=True)
    assert (reader.body, reader.reusable) == (b"all of it", False)


@pytest.mark.parametrize("wire", [b"", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab"])
def test_connection_ending_early_is_unreachable(wire: bytes) -> None:
    with pytest.raises(DockerUnreachable):
        read(wire, eof=True)


@pytest.mark.parametrize(
    "wire",
    [
        b"HTTP/2 200 OK\r\n\r\n",
        b"HTTP/1.1 20 OK\r\n\r\n",
        b"ICY 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Header: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n folded\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x2\r\nab\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n",
    ],
)
def test_bad_http_is_a_protocol_error(wire: bytes) -> None:
    with pytest.raises(DockerProtocolError):
        ResponseReader().feed(wire)


def test_a_head_that_never_ends_is_refused() -> None:
    reader = ResponseReader()
    reader.feed(b"HTTP/1.1 200 OK\r\n")
    with pytest.raises(DockerProtocolError, match="head over"):
        reader.feed(b"X-Filler: " + b"x" * 70_000)


def test_request_head() -> None:
    head = request_head("POST", "/v1.41/containers/create?name=a", b"docker", [(b"A", b"b")])
    assert bytes(head) == (
        b"POST /v1.41/containers/create?name=a HTTP/1.1\r\nHost: docker\r\nA: b\r\n\r\n"
    )
    with pytest.raises(ValueError, match="bad header"):
        request_head("GET", "/", b"docker", [(b"A", b"b\r\nInjected: 1")])
