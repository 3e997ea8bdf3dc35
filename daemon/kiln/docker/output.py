"""A container's output read back through the API: its logs (whole, followed, or as
:class:`~kiln.docker.stream.Message` s) and its resource usage samples."""

from __future__ import annotations

import codecs
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from kiln.docker.frames import FrameDecoder, FrameTexts
from kiln.docker.jsonstream import JsonStreamDecoder
from kiln.docker.stream import Message

if TYPE_CHECKING:
    from kiln.docker.container import DockerContainer


async def log_list(container: DockerContainer, params: dict[str, Any]) -> list[str]:
    """The log up to now, one str per frame (the whole text for a TTY). Whether the
    output is framed is known first (as aiodocker does), so frames are decoded as the
    answer comes."""
    if await container._is_tty():
        response = await container.docker._query(
            container._path("/logs"), params=params, operation="container logs"
        )
        text = response.content.decode("utf-8", "replace")
        return [text] if text else []
    frames = FrameTexts()
    await container.docker._query(
        container._path("/logs"), params=params, operation="container logs", sink=frames
    )
    frames.eof()
    return frames.texts


async def log_stream(container: DockerContainer, params: dict[str, Any]) -> AsyncIterator[str]:
    """The log followed until the container exits, on a connection of its own."""
    tty = await container._is_tty()
    async with container.docker._stream(
        container._path("/logs"), params=params, operation="follow logs"
    ) as response:
        if tty:
            text = codecs.getincrementaldecoder("utf-8")("replace")
            async for chunk in container.docker._stream_chunks(response, "follow logs"):
                piece = text.decode(chunk)
                if piece:
                    yield piece
            return
        decoder = FrameDecoder()
        async for chunk in container.docker._stream_chunks(response, "follow logs"):
            for frame in decoder.feed(chunk):
                yield frame.data.decode("utf-8", "replace")
        decoder.eof()


async def log_messages(
    container: DockerContainer, *, follow: bool, tail: int | str
) -> AsyncIterator[Message]:
    """A non-TTY container's output as messages, on a connection of its own."""
    params = {"stdout": True, "stderr": True, "follow": follow, "tail": tail}
    async with container.docker._stream(
        container._path("/logs"), params=params, operation="container logs"
    ) as response:
        decoder = FrameDecoder()
        async for chunk in container.docker._stream_chunks(response, "container logs"):
            for frame in decoder.feed(chunk):
                yield Message(frame.stream, frame.data)
        decoder.eof()


async def stats_once(container: DockerContainer) -> list[dict[str, Any]]:
    data = await container.docker._query_json(
        container._path("/stats"), params={"stream": False}, operation="container stats"
    )
    return [data]


async def stats_stream(container: DockerContainer) -> AsyncIterator[dict[str, Any]]:
    async with container.docker._stream(
        container._path("/stats"), params={"stream": True}, operation="container stats"
    ) as response:
        decoder = JsonStreamDecoder()
        async for chunk in container.docker._stream_chunks(response, "container stats"):
            for item in decoder.feed(chunk):
                yield item


__all__ = ["log_list", "log_messages", "log_stream", "stats_once", "stats_stream"]
