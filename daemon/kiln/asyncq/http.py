"""HTTP for async calls: the accept path and the ``/calls`` routes.

``POST /invoke/{name}`` with ``Kiln-Invoke-Type: async`` (or Fn's
``Fn-Invoke-Type: detached``) is answered ``202 Accepted`` with
``Kiln-Call-Id`` and ``Location: /calls/{id}`` only after the call is committed
to the store. ``Idempotency-Key`` makes a repeat return the first call.

Routes (both APIs unless noted)::

    GET    /calls/{id}[?wait=SECONDS]   the call: state, attempts, timings, result when done
    DELETE /calls/{id}                  cancel a queued call (409 if it already started)
    GET    /calls?function=F&state=S&limit=N   newest first (control API only)
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

import trio

from kiln.api.invoke import read_call_body, respond, send_error
from kiln.asyncq.headers import idempotency_key, with_request
from kiln.asyncq.queue import AsyncQueue
from kiln.asyncq.records import STATES, State, valid_call_id
from kiln.asyncq.store import QueueFull, StoreError
from kiln.calls.errors import CallError, NotFound, Unavailable
from kiln.calls.lifecycle import CallerGone
from kiln.fncontract import PLAIN_POST, HttpRequest
from kiln.functions.registry import unknown_function
from kiln.http.asgi import Receive, Scope, Send

#: The longest ``?wait=`` a reader may ask for, in seconds.
MAX_WAIT = 60.0
QUEUE_FULL_RETRY = 5.0
STORE_RETRY = 5.0


def _json(data: Any) -> bytes:
    return json.dumps(data, indent=2).encode() + b"\n"


class CallsRoutes:
    """The accept path and the ``/calls`` routes of one API."""

    def __init__(
        self,
        queue: AsyncQueue,
        known: Callable[[str], bool],
        *,
        max_body: int,
        listing: bool = False,
    ) -> None:
        self.queue = queue
        self.known = known
        self.max_body = max_body
        self.listing = listing

    async def accept(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        name: str,
        http: HttpRequest = PLAIN_POST,
    ) -> None:
        """Answer an async call of ``name`` (``http``: the caller's method and URL,
        kept with the call)."""
        call_id = "-"
        try:
            if not self.known(name):
                raise unknown_function(name)
            if not self.queue.accepting:
                raise Unavailable(
                    "kiln is draining: not accepting calls", code="draining", retry_after=5
                )
            key = idempotency_key(scope["headers"])
            body = await read_call_body(scope, receive, self.max_body)
            headers = with_request(scope["headers"], http)
            try:
                accepted = await self.queue.accept(name, body, headers, key)
            except QueueFull:
                raise Unavailable(
                    f"the async queue is full ([async] queue_max = {self.queue.queue_max})",
                    code="queue_full",
                    retry_after=QUEUE_FULL_RETRY,
                ) from None
            except StoreError as e:
                raise Unavailable(
                    f"the async store is unavailable: {e}",
                    code="store_unavailable",
                    retry_after=STORE_RETRY,
                ) from None
        except CallerGone:
            return
        except CallError as e:
            await send_error(send, call_id, e)
            return
        record = accepted.record
        location = f"/calls/{record.id}"
        await respond(
            send,
            202,
            record.id,
            _json({"id": record.id, "state": record.state, "location": location}),
            json_ct=True,
            extra=[(b"location", location.encode())],
        )

    async def route(self, scope: Scope, receive: Receive, send: Send) -> bool:
        """Serve ``/calls`` and ``/calls/{id}``; False if the path is not ours."""
        path: str = scope["path"]
        if path != "/calls" and not path.startswith("/calls/"):
            return False
        method: str = scope["method"]
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        call_id = path[len("/calls/") :] if path.startswith("/calls/") else ""
        try:
            if path == "/calls" or path == "/calls/":
                if not self.listing or method != "GET":
                    raise NotFound(f"no route {method} {path}")
                await self._list(send, query)
            elif method == "GET":
                await self._get(send, call_id, query)
            elif method == "DELETE":
                await self._cancel(send, call_id)
            else:
                raise CallError(
                    "use GET or DELETE on a call", status=405, code="method_not_allowed"
                )
        except StoreError as e:
            await send_error(
                send,
                call_id or "-",
                Unavailable(
                    f"the async store is unavailable: {e}",
                    code="store_unavailable",
                    retry_after=STORE_RETRY,
                ),
            )
        except CallError as e:
            await send_error(send, call_id or "-", e)
        return True

    @staticmethod
    def _unknown(call_id: str) -> NotFound:
        return NotFound(f"no call {call_id!r} (never accepted, or purged)", code="unknown_call")

    async def _get(self, send: Send, call_id: str, query: dict[str, list[str]]) -> None:
        if not valid_call_id(call_id):
            raise self._unknown(call_id)
        wait = 0.0
        if "wait" in query:
            try:
                wait = float(query["wait"][0])
            except ValueError:
                raise CallError(
                    "wait must be a number of seconds", status=400, code="bad_request"
                ) from None
            if not math.isfinite(wait) or wait < 0:
                raise CallError("wait must be a number of seconds", status=400, code="bad_request")
            wait = min(wait, MAX_WAIT)
        record = await self.queue.get(call_id)
        if record is not None and not record.done and wait > 0:
            with trio.move_on_after(wait):
                await self.queue.wait_finished(call_id)
            record = await self.queue.get(call_id)
        if record is None:
            raise self._unknown(call_id)
        await respond(send, 200, call_id, _json(record.to_json()), json_ct=True)

    async def _cancel(self, send: Send, call_id: str) -> None:
        if not valid_call_id(call_id):
            raise self._unknown(call_id)
        record = await self.queue.cancel(call_id)
        if record is None:
            raise self._unknown(call_id)
        if record.state != "cancelled":
            raise CallError(
                f"call {call_id} is {record.state}: only a queued call can be cancelled",
                status=409,
                code="not_cancellable",
            )
        await respond(send, 200, call_id, _json(record.to_json()), json_ct=True)

    async def _list(self, send: Send, query: dict[str, list[str]]) -> None:
        function = query.get("function", [None])[0]
        state_text = query.get("state", [None])[0]
        if state_text is not None and state_text not in STATES:
            raise CallError(
                f"state must be one of {', '.join(STATES)}", status=400, code="bad_request"
            )
        state: State | None = state_text  # checked above
        try:
            limit = int(query.get("limit", ["100"])[0])
        except ValueError:
            raise CallError("limit must be an integer", status=400, code="bad_request") from None
        limit = max(1, min(limit, 10_000))
        records = await self.queue.find(function=function, state=state, limit=limit)
        body = _json({"calls": [r.to_json(with_result=False) for r in records]})
        await respond(send, 200, "-", body, json_ct=True)
