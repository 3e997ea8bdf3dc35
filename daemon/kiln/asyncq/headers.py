"""The request headers that steer an async call. Pure."""

from __future__ import annotations

from collections.abc import Iterable

from kiln.asyncq.records import MAX_KEY
from kiln.calls.errors import CallError
from kiln.fncontract import HttpRequest

#: Request headers a stored call does not keep: hop-by-hop ones, the body's
#: framing, and the ones that only steer the accept.
NOT_STORED = frozenset(
    {
        b"host",
        b"connection",
        b"keep-alive",
        b"content-length",
        b"transfer-encoding",
        b"te",
        b"upgrade",
        b"expect",
        b"kiln-invoke-type",
        b"fn-invoke-type",
        b"idempotency-key",
    }
)


def is_async(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    for k, v in headers:
        k = k.lower()
        v = v.strip().lower()
        if (k == b"kiln-invoke-type" and v == b"async") or (
            k == b"fn-invoke-type" and v == b"detached"
        ):
            return True
    return False


def idempotency_key(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    for k, v in headers:
        if k.lower() == b"idempotency-key":
            text = v.decode("latin-1").strip()
            if not text or len(text) > MAX_KEY or not all(33 <= ord(c) < 127 for c in text):
                raise CallError(
                    f"Idempotency-Key must be 1-{MAX_KEY} visible ASCII characters",
                    status=400,
                    code="bad_request",
                )
            return text
    return None


#: Pseudo-headers that keep the caller's HTTP request (method, URL after
#: ``/invoke/NAME``) with a stored call; no real header name starts with ":".
METHOD = b":method"
URL = b":url"


def with_request(
    headers: Iterable[tuple[bytes, bytes]], http: HttpRequest
) -> list[tuple[bytes, bytes]]:
    """The headers to store: the caller's (less :data:`NOT_STORED`) and its request."""
    kept = [(k, v) for k, v in headers if k.lower() not in NOT_STORED]
    return [(METHOD, http.method.encode()), (URL, http.url.encode("latin-1")), *kept]


def split_request(
    headers: Iterable[tuple[bytes, bytes]],
) -> tuple[list[tuple[bytes, bytes]], HttpRequest]:
    """Stored headers → (the caller's headers, its HTTP request)."""
    method, url = "POST", "/"
    kept: list[tuple[bytes, bytes]] = []
    for k, v in headers:
        if k == METHOD:
            method = v.decode("latin-1")
        elif k == URL:
            url = v.decode("latin-1")
        else:
            kept.append((k, v))
    return kept, HttpRequest(method, url)
