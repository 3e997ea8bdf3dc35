"""Async invocations on a durable queue.

``records`` and ``backoff`` are pure; ``store`` is the small interface that
``sqlite`` and ``postgres`` implement; ``threaded`` runs a store's blocking
work in a worker thread; ``dispatcher`` runs due calls; ``http`` is the
accept path and the ``/calls`` routes.
"""
