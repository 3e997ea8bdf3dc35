"""Prometheus metrics (prometheus_client), one registry per daemon.

Counters and histograms are updated where things happen (a call ends, a
Docker request returns). Gauges that mirror state — memory, queue depth,
containers by state, limiter figures — are read from the components'
``statistics()`` snapshots at scrape time by a custom collector, so nothing
runs between scrapes (idle means asleep).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from kiln.admission.hostmem import HostResources
    from kiln.admission.memory import MemoryBudget
    from kiln.admission.ratelimit import DockerLimiter
    from kiln.asyncq.dispatcher import Dispatcher
    from kiln.asyncq.queue import AsyncQueue
    from kiln.calls.lifecycle import Calls
    from kiln.containers.janitor import Janitor
    from kiln.functions.registry import FunctionRegistry
    from kiln.hot.supervisors import Supervisors
    from kiln.logs.service import Logs

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
)


PHASES = ("queue", "start", "run")

# The `_created` series double every counter and histogram for a timestamp no
# dashboard reads; this process never wants them.
disable_created_metrics()  # type: ignore[no-untyped-call]


@dataclass(frozen=True, slots=True)
class _CallSeries:
    """One function's call series (label children)."""

    queue: Histogram
    start: Histogram
    run: Histogram
    total: Histogram
    cold: Counter


def operation_label(operation: str) -> str:
    """A Docker operation as a label value: its verb and object, words joined by
    ``_`` (``create container`` → ``create_container``; ``inspect image x:y`` →
    ``inspect_image``, so image names never become label values)."""
    words = operation.split()[:2]
    return re.sub(r"[^a-z0-9_]", "_", "_".join(words).lower()) or "unknown"


class Metrics:
    """``per_function``: the call-phase histograms carry a ``function`` label —
    one series set (phases × buckets) per deployed function. Hosts with
    thousands of functions can turn it off (``[metrics] per_function = false``)."""

    def __init__(self, *, per_function: bool = True) -> None:
        self.per_function = per_function
        self.registry = CollectorRegistry(auto_describe=True)
        self.calls = Counter(
            "kiln_calls",
            "Calls by function and outcome (HTTP status)",
            ["function", "status"],
            registry=self.registry,
        )
        fn_label = ["function"] if per_function else []
        self.phase = Histogram(
            "kiln_call_phase_seconds",
            "Call phases: queue (waiting), start (container start), run",
            [*fn_label, "phase"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.total = Histogram(
            "kiln_call_seconds",
            "Whole calls, as the caller waited for them",
            fn_label,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.cold_starts = Counter(
            "kiln_cold_starts",
            "Calls that started a container",
            ["function"],
            registry=self.registry,
        )
        self.docker = Histogram(
            "kiln_docker_request_seconds",
            "Docker API requests by operation and status",
            ["operation", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

        #: Each function's series, looked up once (a ``labels()`` call validates and
        #: locks; a call records up to seven series).
        self._series: dict[str, _CallSeries] = {}
        self._outcomes: dict[tuple[str, int], Counter] = {}

        self.async_store = Histogram(
            "kiln_async_store_seconds",
            "Async store operations by kind (accept, claim, finish, ...)",
            ["operation"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def observe_call(
        self,
        function: str,
        status: int,
        queue: float,
        start: float,
        run: float,
        cold: bool,
        total: float | None = None,
    ) -> None:
        outcome = self._outcomes.get((function, status))
        if outcome is None:
            outcome = self._outcomes[function, status] = self.calls.labels(function, str(status))
        outcome.inc()
        series = self._series.get(function)
        if series is None:
            series = self._series[function] = self._call_series(function)
        series.queue.observe(queue)
        if cold:
            series.start.observe(start)
            series.cold.inc()
        series.run.observe(run)
        if total is not None:
            series.total.observe(total)

    def _call_series(self, function: str) -> _CallSeries:
        fn = (function,) if self.per_function else ()
        return _CallSeries(
            queue=self.phase.labels(*fn, "queue"),
            start=self.phase.labels(*fn, "start"),
            run=self.phase.labels(*fn, "run"),
            total=self.total.labels(function) if self.per_function else self.total,
            cold=self.cold_starts.labels(function),
        )

    def forget(self, function: str) -> None:
        """A removed function's series go with it (cardinality follows deployed functions)."""
        self._series.pop(function, None)
        for key in [key for key in self._outcomes if key[0] == function]:
            del self._outcomes[key]
        for metric in (self.calls,):
            for labels in list(_label_sets(metric)):
                if labels[0] == function:
                    with contextlib.suppress(KeyError):
                        metric.remove(*labels)
        with contextlib.suppress(KeyError):
            self.cold_starts.remove(function)
        if self.per_function:
            for phase in PHASES:
                with contextlib.suppress(KeyError):
                    self.phase.remove(function, phase)
            with contextlib.suppress(KeyError):
                self.total.remove(function)

    def observe_async_store(self, operation: str, seconds: float) -> None:
        self.async_store.labels(operation).observe(seconds)

    def attach_async(self, queue: AsyncQueue, dispatcher: Dispatcher) -> None:
        """Read the async queue's figures at every scrape."""
        self.registry.register(_AsyncCollector(queue, dispatcher))

    def attach_logs(self, logs: Logs) -> None:
        """Function log lines kept and dropped (flood limit), read at every scrape."""
        self.registry.register(_LogsCollector(logs))

    def observe_docker(self, operation: str, status: str, seconds: float) -> None:
        self.docker.labels(operation_label(operation), status).observe(seconds)

    def attach(
        self,
        *,
        memory: MemoryBudget,
        supervisors: Supervisors,
        limiter: DockerLimiter | None,
        calls: Calls,
        registry: FunctionRegistry,
        janitor: Janitor | None = None,
        host: HostResources | None = None,
    ) -> None:
        """Read these components' statistics at every scrape."""
        self.registry.register(
            _StateCollector(memory, supervisors, limiter, calls, registry, janitor, host)
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _LogsCollector(Collector):
    def __init__(self, logs: Logs) -> None:
        self.logs = logs

    def collect(self) -> Iterator[CounterMetricFamily]:
        kept = CounterMetricFamily(
            "kiln_function_log_lines", "Lines functions wrote that Kiln kept", labels=["function"]
        )
        dropped = CounterMetricFamily(
            "kiln_function_log_lines_dropped",
            "Lines dropped by the per-function flood limit ([logs] rate)",
            labels=["function"],
        )
        for function, (n_kept, n_dropped) in self.logs.statistics().items():
            kept.add_metric([function], n_kept)
            dropped.add_metric([function], n_dropped)
        yield kept
        yield dropped


def _label_sets(metric: Counter) -> list[tuple[str, ...]]:
    return [tuple(labels) for labels in metric._metrics]


class _StateCollector(Collector):
    def __init__(
        self,
        memory: MemoryBudget,
        supervisors: Supervisors,
        limiter: DockerLimiter | None,
        calls: Calls,
        functions: FunctionRegistry,
        janitor: Janitor | None,
        host: HostResources | None,
    ) -> None:
        self.memory = memory
        self.supervisors = supervisors
        self.limiter = limiter
        self.calls = calls
        self.functions = functions
        self.janitor = janitor
        self.host = host

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        m = self.memory.statistics()
        mem = GaugeMetricFamily("kiln_memory_bytes", "Memory for containers", labels=["kind"])
        mem.add_metric(["total"], m.capacity)
        mem.add_metric(["reserved"], m.reserved)
        yield mem
        yield GaugeMetricFamily("kiln_queue_depth", "Requests waiting for memory", value=m.waiting)
        rejected = CounterMetricFamily(
            "kiln_admission_rejected", "Admission rejections", labels=["reason"]
        )
        rejected.add_metric(["queue_full"], m.rejected_queue_full)
        rejected.add_metric(["no_memory"], m.rejected_timeout)
        yield rejected
        containers = GaugeMetricFamily(
            "kiln_containers", "Hot containers by state", labels=["function", "state"]
        )
        evictions = CounterMetricFamily(
            "kiln_evictions", "Idle containers evicted for memory", labels=["function"]
        )
        waiting = GaugeMetricFamily(
            "kiln_calls_waiting", "Calls waiting for a hot container", labels=["function"]
        )
        failures = GaugeMetricFamily(
            "kiln_hot_consecutive_start_failures",
            "Failed starts (or deaths soon after ready) in a row; 0 when healthy",
            labels=["function"],
        )
        held = GaugeMetricFamily(
            "kiln_hot_restart_backoff_seconds",
            "Seconds until the restart backoff lets min_warm containers start again",
            labels=["function"],
        )
        for s in self.supervisors.statistics():
            for state in ("starting", "idle", "busy", "retiring"):
                containers.add_metric([s.function, state], getattr(s, state))
            evictions.add_metric([s.function], s.evicted_total)
            waiting.add_metric([s.function], s.waiting)
            failures.add_metric([s.function], s.consecutive_failures)
            held.add_metric([s.function], s.restart_in)
        yield containers
        yield evictions
        yield waiting
        yield failures
        yield held
        yield GaugeMetricFamily(
            "kiln_calls_in_flight", "Calls in flight", value=self.calls.inflight
        )
        yield GaugeMetricFamily("kiln_draining", "1 while draining", value=int(self.calls.draining))
        yield from self._rate_limits()
        if self.janitor is not None:
            js = self.janitor.statistics()
            yield GaugeMetricFamily(
                "kiln_janitor_pending",
                "Containers whose removal failed, waiting to be removed again",
                value=js.pending,
            )
            yield CounterMetricFamily(
                "kiln_janitor_removed", "Containers the janitor removed", value=js.removed_total
            )
            yield CounterMetricFamily(
                "kiln_janitor_attempts",
                "Removals the janitor tried",
                value=js.attempts_total,
            )
        if self.host is not None:
            yield GaugeMetricFamily(
                "kiln_host_cpus",
                "CPUs this daemon may use (host or cgroup quota)",
                value=self.host.cpus,
            )
        if self.limiter is not None:
            ls = self.limiter.statistics()
            yield GaugeMetricFamily(
                "kiln_docker_inflight", "Docker API calls in flight", value=ls.inflight
            )
            yield CounterMetricFamily(
                "kiln_docker_create_waits",
                "Container creates that waited for a rate-limit token",
                value=ls.create.total_waits,
            )
            yield CounterMetricFamily(
                "kiln_docker_create_wait_seconds",
                "Time creates spent waiting for a token",
                value=ls.create.total_wait_time,
            )

    def _rate_limits(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        allowed = CounterMetricFamily(
            "kiln_invoke_rate_allowed",
            "Calls a function's invoke rate let through",
            labels=["function"],
        )
        rejected = CounterMetricFamily(
            "kiln_invoke_rate_rejected",
            "Calls refused (429) by a function's invoke rate",
            labels=["function"],
        )
        tokens = GaugeMetricFamily(
            "kiln_invoke_rate_tokens",
            "Calls a function's invoke rate would let through now",
            labels=["function"],
        )
        for name, rs in self.functions.rate_statistics().items():
            allowed.add_metric([name], rs.allowed)
            rejected.add_metric([name], rs.rejected)
            tokens.add_metric([name], rs.tokens)
        yield allowed
        yield rejected
        yield tokens


class _AsyncCollector(Collector):
    """The async queue: what happened to calls here, and the queue as last read
    from the store (refreshed whenever the dispatcher goes idle)."""

    def __init__(self, queue: AsyncQueue, dispatcher: Dispatcher) -> None:
        self.queue = queue
        self.dispatcher = dispatcher

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        c = self.queue.counters
        events = CounterMetricFamily(
            "kiln_async_calls", "Async calls by event on this host", labels=["event"]
        )
        for event in ("accepted", "started", "succeeded", "failed", "retried", "cancelled"):
            events.add_metric([event], getattr(c, event))
        yield events
        depth = GaugeMetricFamily(
            "kiln_async_queue_depth", "Async calls in the store by state", labels=["state"]
        )
        depth.add_metric(["queued"], c.stats.queued)
        depth.add_metric(["running"], c.stats.running)
        yield depth
        oldest = c.stats.oldest_due
        yield GaugeMetricFamily(
            "kiln_async_oldest_due_age_seconds",
            "How long the oldest due async call has waited (0: none due)",
            value=0.0 if oldest is None else max(0.0, self.queue.clock.now() - oldest),
        )
        held = GaugeMetricFamily(
            "kiln_async_held_bytes",
            "Memory held by async calls running here, and the cap",
            labels=["kind"],
        )
        held.add_metric(["held"], self.dispatcher.held)
        held.add_metric(["share"], self.dispatcher.async_capacity)
        yield held
