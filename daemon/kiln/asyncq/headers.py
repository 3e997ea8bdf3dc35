"""The request headers that steer an async call. Pure."""

from __future__ import annotations

from collections.abc import Iterable

from kiln.asyncq.records import MAX_KEY
from kiln.calls.errors import CallError

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
