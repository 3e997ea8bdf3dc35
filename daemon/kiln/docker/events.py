"""``docker.events``: Docker's event stream, fanned out to subscribers.

There is no background task: ``subscribe()`` (synchronous, no nursery) creates the
listener, which opens ``GET /events`` at the client's next call (``since`` the moment of
subscribing, so nothing in between is missed) and is then driven by whichever subscriber
is waiting in ``get()``: it reads the next piece of the stream and hands every event to
every subscriber's queue. A reader that gives up (a timeout) loses nothing — the bytes
stay in the socket. A program that wants a listener running on its own runs
``docker.events.run()`` in a task of its own.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import anyio

from kiln.docker.exceptions import DockerError
from kiln.docker.h11conn import H11Exchange
from kiln.docker.jsonstream import JsonStreamDecoder
from kiln.docker.params import filters_param

if TYPE_CHECKING:
    from kiln.docker.api import Docker


class EventListener:
    """One ``GET /events`` and its decoder."""

    def __init__(self, events: DockerEvents, params: dict[str, Any]) -> None:
        self.events = events
        self.params = params
        self.exchange: H11Exchange | None = None
        self.decoder = JsonStreamDecoder()
        self.busy = False
        self.ended = False

    async def open(self) -> H11Exchange:
        if self.exchange is None:
            exchange = await self.events.docker._open_exchange("GET", "events", self.params)
            if self.ended:  # stopped while opening
                await exchange.aclose()
                raise anyio.ClosedResourceError
            self.exchange = exchange
            self.events.json_stream = exchange
        return self.exchange

    async def pump(self) -> None:
        """Read the next piece of the stream; publish what it completes."""
        exchange = await self.open()
        try:
            chunk = await exchange.next_chunk()
        except DockerError:
            if self.ended:  # stopped while this read waited
                return
            raise
        if chunk is None:
            await self.events._end(self)
            return
        for event in self.decoder.feed(chunk):
            self.events._publish(event)

    async def aclose(self) -> None:
        self.ended = True
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            await exchange.aclose()


class EventSubscriber:
    """``await get()`` → the next event dict, or None once the listener has stopped."""

    def __init__(self, events: DockerEvents) -> None:
        self._events = events
        self._queue: deque[dict[str, Any] | None] = deque()

    async def get(self) -> dict[str, Any] | None:
        events = self._events
        while True:
            if self._queue:
                return self._queue.popleft()
            listener = events.task
            if listener is not None and not listener.busy and not listener.ended:
                listener.busy = True
                try:
                    await listener.pump()
                finally:
                    listener.busy = False
                    events._wake()
            else:
                await events._changed.wait()

    def _put(self, item: dict[str, Any] | None) -> None:
        self._queue.append(item)

    async def __aenter__(self) -> EventSubscriber:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._events._unsubscribe(self)


class DockerEvents:
    def __init__(self, docker: Docker) -> None:
        self.docker = docker
        self.task: EventListener | None = None
        self.json_stream: H11Exchange | None = None
        self._subscribers: list[EventSubscriber] = []
        self._changed_event: anyio.Event | None = None

    @property
    def _changed(self) -> anyio.Event:
        if self._changed_event is None:
            self._changed_event = anyio.Event()
        return self._changed_event

    def _wake(self) -> None:
        event, self._changed_event = self._changed_event, None
        if event is not None:
            event.set()

    def _publish(self, item: dict[str, Any] | None) -> None:
        for subscriber in self._subscribers:
            subscriber._put(item)
        self._wake()

    def _unsubscribe(self, subscriber: EventSubscriber) -> None:
        if subscriber in self._subscribers:
            self._subscribers.remove(subscriber)

    @staticmethod
    def _params(params: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(params)
        if isinstance(out.get("filters"), Mapping):
            out["filters"] = filters_param(out["filters"])
        return out

    def subscribe(self, *, create_task: bool = True, **params: Any) -> EventSubscriber:
        """A new subscriber; with ``create_task`` (the default) also the listener."""
        if create_task and self.task is None:
            params.setdefault("since", f"{time.time():.9f}")
            self.task = EventListener(self, self._params(params))
        subscriber = EventSubscriber(self)
        self._subscribers.append(subscriber)
        return subscriber

    def listen(self) -> EventSubscriber:
        return self.subscribe()

    async def _open_pending(self) -> None:
        """Called before each client call: open a new listener's stream now, so that
        events from this call on reach it."""
        listener = self.task
        if listener is not None and listener.exchange is None and not listener.busy:
            listener.busy = True
            try:
                await listener.open()
            except (DockerError, anyio.ClosedResourceError):
                pass  # the subscriber's get() opens it again and sees the error
            finally:
                listener.busy = False
                self._wake()

    async def run(self, **params: Any) -> None:
        """Drive a listener until the stream ends (or this is cancelled)."""
        listener = self.task
        if listener is None:
            listener = self.task = EventListener(self, self._params(params))
        while listener.busy:
            await self._changed.wait()
        listener.busy = True
        try:
            while not listener.ended:
                await listener.pump()
        finally:
            listener.busy = False
            self._wake()

    async def _end(self, listener: EventListener) -> None:
        await listener.aclose()
        if self.task is listener:
            self.task = None
            self.json_stream = None
        self._publish(None)

    async def stop(self) -> None:
        listener = self.task
        if listener is not None:
            with anyio.CancelScope(shield=True):
                await self._end(listener)


__all__ = ["DockerEvents", "EventListener", "EventSubscriber"]
