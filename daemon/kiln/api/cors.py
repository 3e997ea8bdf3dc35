"""CORS for ``/invoke/{name}``: per-function allowed origins (``cors_origins``).

Pure: given a function's origins and a request's headers, what to answer.
A preflight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``)
from an allowed origin gets 204 with the ``Access-Control-*`` headers; from
any other origin 403. An actual request from an allowed origin gets
``Access-Control-Allow-Origin`` (and Kiln's headers exposed) on its answer,
whatever its status, so a page can read Kiln's errors too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

ALLOW_METHODS = b"POST, OPTIONS"
#: Headers a page may read from Kiln's answers.
EXPOSE = b"Kiln-Call-Id, Kiln-Timing, Kiln-Cold, Retry-After"
MAX_AGE = b"600"
_HEADER_LIST = re.compile(rb"^[A-Za-z0-9!#$%&'*+.^_`|~-]+(\s*,\s*[A-Za-z0-9!#$%&'*+.^_`|~-]+)*$")


def header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value
    return None


def allowed(origins: Sequence[str], origin: bytes | None) -> bytes | None:
    """The value for ``Access-Control-Allow-Origin``, or None if ``origin`` is not allowed."""
    if origin is None or not origins:
        return None
    if "*" in origins:
        return b"*"
    text = origin.decode("latin-1")
    return origin if text in origins else None


def is_preflight(method: str, headers: Iterable[tuple[bytes, bytes]]) -> bool:
    if method != "OPTIONS":
        return False
    hs = list(headers)
    return (
        header(hs, b"origin") is not None
        and header(hs, b"access-control-request-method") is not None
    )


def preflight_headers(
    allow_origin: bytes, request_headers: bytes | None
) -> list[tuple[bytes, bytes]]:
    out = [
        (b"access-control-allow-origin", allow_origin),
        (b"access-control-allow-methods", ALLOW_METHODS),
        (b"access-control-max-age", MAX_AGE),
        (b"vary", b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers"),
    ]
    if request_headers and _HEADER_LIST.match(request_headers.strip()):
        out.append((b"access-control-allow-headers", request_headers.strip()))
    return out


def response_headers(allow_origin: bytes) -> list[tuple[bytes, bytes]]:
    return [
        (b"access-control-allow-origin", allow_origin),
        (b"access-control-expose-headers", EXPOSE),
        (b"vary", b"Origin"),
    ]
