"""Kiln's HTTP server: HTTP/1.1 on h11 + Trio, serving plain ASGI apps.

- :mod:`kiln.http.listeners` — TCP, Unix and inherited listening sockets; the
  one stale-socket rule; the connection cap derived from ``RLIMIT_NOFILE``.
- :mod:`kiln.http.server` — ``serve_asgi``: accept loops, the connection loop,
  the limits the server enforces itself, shutdown.
- :mod:`kiln.http.capacity` — the connection cap: who may be evicted to make
  room, in which order, and when accepting waits.
- :mod:`kiln.http.cycle` — one request/response exchange (ASGI ``receive`` and
  ``send``) as an explicit state machine.
- :mod:`kiln.http.messages` — the ASGI scope of a request; the server's own
  error responses.
- :mod:`kiln.http.asgi` — what the apps share: ASGI types, the JSON error body,
  the request-body reader.
"""

from kiln.http.asgi import ASGIApp, Message, Receive, Scope, Send
from kiln.http.listeners import SocketInUse, bind_unix, open_listeners
from kiln.http.server import Limits, serve_asgi

__all__ = [
    "ASGIApp",
    "Limits",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "SocketInUse",
    "bind_unix",
    "open_listeners",
    "serve_asgi",
]
