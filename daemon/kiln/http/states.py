"""The states of one HTTP request/response exchange and the transitions between
them, in one place (:class:`kiln.http.cycle.Cycle` changes its state only through
them); and what the connection does after an exchange.

::

    AWAITING ──start──▶ HEAD ──body, more──▶ SENDING ──last body──▶ COMPLETE
       │                 │ └──────────last body─────────────────────▲   │
       │                 │                                               │
       ├─────────────────┴──request unreadable──▶ REFUSED               │
       └──────── any state ──client gone / write failed──▶ GONE ◀──────┘

``AWAITING``: the app has not started its response. ``HEAD``: it has
(``http.response.start``), but the head is only buffered, so a 500 (the app
failed) or the server's refusal can still replace it. ``SENDING``: the head is
written, more body to come. ``COMPLETE``: the last body message went to h11.
``REFUSED``: the request body could not be read — a malformed chunk (400), the
body deadline passed (408), the connection was evicted to make room (503) —
and the server answers that itself once the app returned. ``GONE``: the client
went away or a write failed; nothing more is written.
"""

from __future__ import annotations

import enum


class State(enum.Enum):
    AWAITING = "awaiting"  # the app has not started its response
    HEAD = "head"  # response started; the head is buffered, not written
    SENDING = "sending"  # head written, more body to come
    COMPLETE = "complete"  # the last body message went out
    REFUSED = "refused"  # the request body is unreadable; the server answers it
    GONE = "gone"  # the client is gone or the connection broke


TRANSITIONS: dict[State, frozenset[State]] = {
    State.AWAITING: frozenset({State.HEAD, State.REFUSED, State.GONE}),
    State.HEAD: frozenset({State.SENDING, State.COMPLETE, State.REFUSED, State.GONE}),
    State.SENDING: frozenset({State.COMPLETE, State.GONE}),
    State.COMPLETE: frozenset({State.GONE}),
    State.REFUSED: frozenset({State.GONE}),
    State.GONE: frozenset(),
}


class Outcome(enum.Enum):
    """What the connection does after a cycle."""

    KEEP = "keep"  # keep-alive: read the next request
    CLOSE = "close"  # close now
    LINGER = "linger"  # close after a bounded lingering read (the client may still send)
