"""Sans-IO decoder for Docker's streams of JSON objects (pull/push/build progress,
``/events``, ``stats``): objects one after another, usually one per line, cut into
chunks anywhere."""

from __future__ import annotations

import json
from typing import Any

from kiln.docker.errors import DockerProtocolError

_decoder = json.JSONDecoder()
_WHITESPACE = " \t\r\n"


class JsonStreamDecoder:
    """Feed bytes in any split; get whole decoded objects out.

    >>> d = JsonStreamDecoder()
    >>> d.feed(b'{"a": 1}\\n{"b"')
    [{'a': 1}]
    >>> d.feed(b': 2}\\n')
    [{'b': 2}]
    """

    def __init__(self, limit: int = 16 * 1024 * 1024) -> None:
        self._bytes = bytearray()
        self._text = ""
        self._limit = limit

    def feed(self, data: bytes) -> list[Any]:
        self._bytes += data
        # Only whole UTF-8 sequences become text; a split character waits for its rest.
        cut = len(self._bytes)
        for back in range(1, min(4, cut) + 1):
            byte = self._bytes[cut - back]
            if byte < 0x80:
                break
            if byte >= 0xC0:
                need = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
                if back < need:
                    cut -= back
                break
        self._text += self._bytes[:cut].decode("utf-8", "replace")
        del self._bytes[:cut]
        out: list[Any] = []
        text = self._text
        pos = 0
        n = len(text)
        while True:
            while pos < n and text[pos] in _WHITESPACE:
                pos += 1
            if pos >= n:
                break
            try:
                obj, end = _decoder.raw_decode(text, pos)
            except json.JSONDecodeError as e:
                if e.pos >= n - 1 or _incomplete(text, pos):
                    break  # wait for more data
                raise DockerProtocolError(f"bad JSON in Docker's stream: {e}") from e
            out.append(obj)
            pos = end
        self._text = text[pos:]
        if len(self._text) + len(self._bytes) > self._limit:
            raise DockerProtocolError(
                f"a JSON object in Docker's stream is over {self._limit} bytes"
            )
        return out

    def eof(self) -> None:
        """The stream ended: it must not end inside an object."""
        if self._text.strip() or self._bytes:
            raise DockerProtocolError("Docker's JSON stream ended inside an object")


def _incomplete(text: str, pos: int) -> bool:
    """Whether ``text[pos:]`` could still become valid JSON with more data: a line
    without its end yet."""
    return "\n" not in text[pos:]


__all__ = ["JsonStreamDecoder"]
