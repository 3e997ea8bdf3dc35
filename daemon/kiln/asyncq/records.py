"""One async call as stored: its request, its state, its attempts and its result.

Pure data. Times are wall-clock seconds since the epoch (they outlive the
process and are shared between hosts); the dispatcher derives them from
Trio's clock (:class:`kiln.asyncq.dispatcher.WallClock`), so tests on a
``MockClock`` drive them.

States::

    queued ──claim──▶ running ──finish──▶ succeeded | failed
      ▲                  │
      └──retry/recover───┘
    queued ──cancel──▶ cancelled
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

State = Literal["queued", "running", "succeeded", "failed", "cancelled"]
STATES: tuple[State, ...] = ("queued", "running", "succeeded", "failed", "cancelled")
#: States a call never leaves; such calls are purged after the retention.
FINISHED: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
#: States that count toward ``[async] queue_max``.
PENDING: frozenset[str] = frozenset({"queued", "running"})

Headers = tuple[tuple[bytes, bytes], ...]

#: Longest accepted Idempotency-Key.
MAX_KEY = 200


def new_call_id() -> str:
    """A call id: 128 random bits, hex (unguessable: it is the only handle on a result)."""
    return secrets.token_hex(16)


def valid_call_id(text: str) -> bool:
    return len(text) == 32 and all(c in "0123456789abcdef" for c in text)


@dataclass(frozen=True)
class NewCall:
    """What an accept stores."""

    id: str
    function: str
    body: bytes
    headers: Headers
    idempotency_key: str | None
    created: float


@dataclass(frozen=True)
class Outcome:
    """How one attempt ended, as recorded."""

    status: int
    headers: Headers
    body: bytes
    truncated: bool
    error: str | None


@dataclass(frozen=True)
class CallRecord:
    id: str
    function: str
    body: bytes
    headers: Headers
    idempotency_key: str | None
    state: State
    attempts: int
    created: float
    due: float
    started: float | None = None
    finished: float | None = None
    lease_until: float | None = None
    host: str | None = None
    status: int | None = None
    result_headers: Headers = ()
    result_body: bytes | None = None
    truncated: bool = False
    error: str | None = None

    @property
    def done(self) -> bool:
        return self.state in FINISHED

    def to_json(self, *, with_result: bool = True) -> dict[str, Any]:
        """The record as ``GET /calls/{id}`` shows it (bodies base64 unless UTF-8 text)."""
        out: dict[str, Any] = {
            "id": self.id,
            "function": self.function,
            "state": self.state,
            "attempts": self.attempts,
            "created": self.created,
            "due": self.due,
            "started": self.started,
            "finished": self.finished,
            "host": self.host,
            "error": self.error,
        }
        if self.idempotency_key is not None:
            out["idempotency_key"] = self.idempotency_key
        if self.status is not None:
            out["status"] = self.status
        if with_result and self.result_body is not None:
            out["result"] = {
                "status": self.status,
                "headers": [
                    [k.decode("latin-1"), v.decode("latin-1")] for k, v in self.result_headers
                ],
                **encode_body(self.result_body),
                "truncated": self.truncated,
            }
        return out


def encode_body(body: bytes) -> dict[str, str]:
    """``{"body": text}`` when the bytes are UTF-8, else ``{"body_base64": ...}``."""
    try:
        return {"body": body.decode("utf-8")}
    except UnicodeDecodeError:
        return {"body_base64": base64.b64encode(body).decode("ascii")}


def truncate(body: bytes, limit: int) -> tuple[bytes, bool]:
    """The result body as stored: at most ``limit`` bytes, and whether it was cut."""
    if len(body) <= limit:
        return body, False
    return body[:limit], True


# ---- headers as stored (a compact, unambiguous text form) ----------------------


def pack_headers(headers: Sequence[tuple[bytes, bytes]]) -> bytes:
    """Headers → bytes: ``name: value`` lines. Names and values never hold CR/LF
    (HTTP forbids them and the server's parser refuses them)."""
    return b"".join(k + b": " + v + b"\n" for k, v in headers)


def unpack_headers(raw: bytes | None) -> Headers:
    if not raw:
        return ()
    out: list[tuple[bytes, bytes]] = []
    for line in raw.split(b"\n"):
        if not line:
            continue
        k, _, v = line.partition(b": ")
        out.append((k, v))
    return tuple(out)
