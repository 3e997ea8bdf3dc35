"""The Docker stream demultiplexer, fed bytes in every split."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kiln.docker.errors import DockerProtocolError
from kiln.docker.frames import STDERR, STDOUT, Frame, FrameDecoder, FrameTexts, encode_frame


def test_one_frame_whole() -> None:
    assert FrameDecoder().feed(encode_frame(STDOUT, b"hello")) == [Frame(STDOUT, b"hello")]


def test_frame_split_across_reads_byte_by_byte() -> None:
    data = encode_frame(STDOUT, b"abc") + encode_frame(STDERR, b"oops")
    d = FrameDecoder()
    frames: list[Frame] = []
    for i in range(len(data)):
        frames += d.feed(data[i : i + 1])
    assert frames == [Frame(STDOUT, b"abc"), Frame(STDERR, b"oops")]
    d.eof()


def test_header_split_mid_way_waits_for_rest() -> None:
    data = encode_frame(STDOUT, b"x" * 10)
    d = FrameDecoder()
    assert d.feed(data[:5]) == []
    assert d.pending == 5
    assert d.feed(data[5:]) == [Frame(STDOUT, b"x" * 10)]
    assert d.pending == 0


def test_32k_cut_frames_reassemble() -> None:
    payload = bytes(range(256)) * 400  # 100 KiB, Docker cuts this at 32 KiB
    chunks = [payload[i : i + 32768] for i in range(0, len(payload), 32768)]
    wire = b"".join(encode_frame(STDOUT, c) for c in chunks)
    frames = FrameDecoder().feed(wire)
    assert [len(f.data) for f in frames] == [32768, 32768, 32768, 4096]
    assert b"".join(f.data for f in frames) == payload


def test_interleaved_stdout_stderr_keep_order() -> None:
    wire = b"".join(
        encode_frame(STDOUT if i % 2 else STDERR, f"line {i}\n".encode()) for i in range(10)
    )
    frames = FrameDecoder().feed(wire)
    assert [f.stream for f in frames] == [STDERR, STDOUT] * 5
    assert b"".join(f.data for f in frames if f.stream == STDOUT) == b"".join(
        f"line {i}\n".encode() for i in range(1, 10, 2)
    )


def test_empty_frame() -> None:
    assert FrameDecoder().feed(encode_frame(STDOUT, b"")) == [Frame(STDOUT, b"")]


def test_bad_header_is_a_protocol_error() -> None:
    with pytest.raises(DockerProtocolError, match="TTY"):
        FrameDecoder().feed(b"hello world, this is a TTY stream")


def test_eof_inside_a_frame_is_an_error() -> None:
    d = FrameDecoder()
    d.feed(encode_frame(STDOUT, b"abcdef")[:-2])
    with pytest.raises(DockerProtocolError, match="inside a frame"):
        d.eof()


@given(
    st.lists(st.tuples(st.sampled_from([STDOUT, STDERR]), st.binary(max_size=300)), max_size=20),
    st.lists(st.integers(min_value=1, max_value=50), min_size=1, max_size=30),
)
def test_any_split_gives_the_same_frames(frames: list[tuple[int, bytes]], cuts: list[int]) -> None:
    wire = b"".join(encode_frame(s, d) for s, d in frames)
    d = FrameDecoder()
    got: list[Frame] = []
    pos = 0
    i = 0
    while pos < len(wire):
        n = cuts[i % len(cuts)]
        got += d.feed(wire[pos : pos + n])
        pos += n
        i += 1
    d.eof()
    assert got == [Frame(s, data) for s, data in frames]


@given(
    st.lists(st.tuples(st.sampled_from([STDOUT, STDERR]), st.text(max_size=100)), max_size=20),
    st.lists(st.integers(min_value=1, max_value=50), min_size=1, max_size=30),
)
def test_frame_texts_in_any_split(frames: list[tuple[int, str]], cuts: list[int]) -> None:
    """The log sink decodes each frame whole, however the answer's pieces cut it."""
    wire = b"".join(encode_frame(s, text.encode()) for s, text in frames)
    sink = FrameTexts()
    pos = 0
    i = 0
    while pos < len(wire):
        n = cuts[i % len(cuts)]
        sink(memoryview(wire[pos : pos + n]))
        pos += n
        i += 1
    sink.eof()
    assert sink.texts == [text for _, text in frames]


@pytest.mark.parametrize("cut", [3, 8, 10])
def test_frame_texts_refuse_a_cut_answer_or_a_tty_stream(cut: int) -> None:
    sink = FrameTexts()
    sink(memoryview(encode_frame(STDOUT, b"abcdef")[:cut]))
    with pytest.raises(DockerProtocolError, match="inside a frame"):
        sink.eof()
    with pytest.raises(DockerProtocolError, match="TTY"):
        FrameTexts()(memoryview(b"hello world, this is a TTY stream"))
