"""The root nursery: everything the daemon runs lives (and dies) under it.

::

    root nursery
    ├── signals: SIGTERM/SIGINT → graceful stop (a second one: stop now), SIGHUP → reload
    ├── daemon parts (kiln.wiring.Daemon.run)
    │   ├── janitor
    │   └── supervisors nursery → one supervisor per hot function → its containers
    ├── servers: invoke + control API (kiln.http: h11 on Trio)
    │   └── one task per connection; a call runs in its connection's task
    └── systemd watchdog

The parts themselves are built in :mod:`kiln.wiring` (the tests build the same
ones on a fake Docker engine); this module adds the process around them.

Cancelling the root cancels every call, and every call's ``finally`` removes
its container (shielded, bounded), so a stopped daemon leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path

import trio

from kiln import __version__
from kiln.admission.hostmem import plan_capacity, read_host_resources
from kiln.admission.ratelimit import DockerLimiter
from kiln.api.control import AnotherKilnRunning, open_control_socket
from kiln.api.operations import Operations, merge_functions
from kiln.asyncq.queue import default_host, open_store
from kiln.asyncq.store import Store, StoreError
from kiln.calls.errors import CallError
from kiln.config import Config
from kiln.containers.spec import Identity
from kiln.containers.sweep import sweep_orphans
from kiln.docker import Docker, DockerError, DockerTimeout, DockerUnreachable
from kiln.functions.policy import HostPolicy, host_cpus
from kiln.functions.spec import FunctionSpec
from kiln.functions.store import FunctionStore
from kiln.hot.iofs import IofsRoot, IofsUnsafe
from kiln.http import Limits, open_listeners, serve_asgi
from kiln.logs.journal import open_forwarder
from kiln.logs.service import Logs
from kiln.metrics import Metrics
from kiln.systemd import Notifier
from kiln.units import format_size
from kiln.wiring import Daemon, log_settings

log = logging.getLogger("kiln.daemon")


#: How long the servers may take to finish writing responses once the drain is over.
SERVER_GRACE = 2.0

#: Caller headers Kiln accepts on the invoke API, and so forwards to a function:
#: few and small enough for the HTTP servers inside function images (some take
#: no more than 100 headers or an 8 KiB head), with room for Kiln's own.
INVOKE_MAX_HEADERS = 64
INVOKE_MAX_HEADER_BYTES = 6 * 1024
#: The control API's clients are the operator's tools: a small, fixed cap.
CONTROL_LIMITS = Limits(max_connections=64)


def invoke_limits(config: Config) -> Limits:
    """What the invoke API accepts from callers (see :class:`kiln.http.Limits`)."""
    return Limits(
        body_timeout=config.daemon.body_timeout,
        max_headers=INVOKE_MAX_HEADERS,
        max_header_bytes=INVOKE_MAX_HEADER_BYTES,
        max_connections=config.daemon.max_connections or None,
    )


class FatalStartupError(Exception):
    """The daemon cannot run (e.g. a Docker engine too old)."""


def check_functions_fit(functions: Iterable[FunctionSpec], policy: HostPolicy) -> None:
    """A config-file function this host can never run is refused at start, not at call time."""
    for spec in functions:
        problem = policy.problem(spec)
        if problem is not None:
            raise FatalStartupError(problem)


def host_policy(config: Config) -> HostPolicy:
    """What this host lets functions have; ``kiln daemon --check`` applies the same."""
    plan = plan_capacity(read_host_resources(), cap=config.limits.memory)
    return HostPolicy(plan.capacity, networks=config.limits.networks, cpus=host_cpus())


async def watch_signals(
    on_stop: Callable[[], None], on_force: Callable[[], None], on_reload: Callable[[], None]
) -> None:
    """SIGTERM/SIGINT → drain; a second one → stop at once; SIGHUP → reload."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        stopping = False
        async for signum in signals:
            name = signal.Signals(signum).name
            if signum == signal.SIGHUP:
                on_reload()
            elif not stopping:
                log.info("%s: draining (send again to stop at once)", name)
                stopping = True
                on_stop()
            else:
                log.warning("%s again: stopping now", name)
                on_force()


#: The oldest Docker Engine API Kiln speaks (Docker 20.10); every call is pinned to it.
DOCKER_API = "1.41"


def _api_tuple(text: str) -> tuple[int, int]:
    try:
        major, minor = text.split(".")[:2]
        return int(major), int(minor)
    except ValueError:
        return (0, 0)


async def check_docker(docker: Docker) -> None:
    """Refuse engines older than :data:`DOCKER_API`; Docker down is not fatal."""
    try:
        data = await docker.version()
        api = str(data.get("ApiVersion", "0.0"))
        if _api_tuple(api) < _api_tuple(DOCKER_API):
            raise FatalStartupError(
                f"Docker Engine {data.get('Version', '?')} speaks API {api}; Kiln needs "
                f"API {DOCKER_API} or newer (Docker 20.10+): upgrade Docker"
            )
        log.info("Docker Engine %s at %s", data.get("Version", "?"), docker.url)
    except (DockerUnreachable, DockerTimeout) as e:
        log.warning("%s; calls get 503 until Docker is back", e)
    except DockerError as e:
        raise FatalStartupError(str(e)) from e


async def run_daemon(
    config: Config,
    *,
    handle_signals: bool = True,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the daemon until it is drained (SIGTERM, ``kiln drain``) or cancelled."""
    identity = Identity(config.daemon.id)
    log.info(
        "kiln %s starting: daemon id %s, instance %s, config %s",
        __version__,
        identity.daemon_id,
        identity.instance,
        config.source,
    )
    store = FunctionStore(config.daemon.state_dir)
    host = read_host_resources()
    plan = plan_capacity(host, cap=config.limits.memory)
    log.info("memory for containers: %s", plan.explain())
    log.info("CPUs: %g (%s)", host.cpus, host.cpu_source)
    policy = HostPolicy(plan.capacity, networks=config.limits.networks, cpus=host_cpus())
    check_functions_fit(config.functions.values(), policy)
    # A persisted spec this version or host refuses is skipped (logged), never fatal.
    functions = merge_functions(config.functions, store.load(policy.problem))
    limiter = DockerLimiter(
        create_rate=config.docker.create_rate,
        create_burst=config.docker.create_burst,
        max_inflight=config.docker.max_inflight,
    )
    metrics = Metrics(per_function=config.metrics.per_function)
    try:
        forwarder = open_forwarder(config.logs.forward)
    except OSError as e:
        raise FatalStartupError(f"[logs] forward = {config.logs.forward!r}: {e}") from e
    logs = Logs(log_settings(config.logs, config.daemon.state_dir), forwarder=forwarder)
    drain_requested = trio.Event()
    stop_now = trio.CancelScope()
    notifier = Notifier()
    try:
        control_sock = open_control_socket(
            config.daemon.control_socket, config.daemon.control_group
        )
    except (AnotherKilnRunning, OSError) as e:
        raise FatalStartupError(f"control socket {config.daemon.control_socket}: {e}") from e
    iofs = IofsRoot(Path(config.daemon.run_dir) / "iofs", config.limits.iofs_size)
    try:
        try:
            iofs.prepare()
        except (IofsUnsafe, OSError) as e:
            raise FatalStartupError(f"listener dirs: {e}") from e
        async with Docker(
            f"unix://{config.docker.socket}",
            api_version="v" + DOCKER_API,
            timeout=config.docker.timeout,
            limiter=limiter,
            pool_size=config.docker.max_inflight,
            observer=metrics.observe_docker,
        ) as docker:
            await check_docker(docker)
            async_store = await open_async_store(config)
            daemon = Daemon.build(
                config,
                docker=docker,
                identity=identity,
                functions=functions,
                store=store,
                capacity=plan.capacity,
                policy=policy,
                on_drain=drain_requested.set,
                metrics=metrics,
                limiter=limiter,
                host=host,
                async_store=async_store,
                logs=logs,
            )
            if daemon.tokens is not None and not len(daemon.tokens):
                log.warning(
                    'auth = "token" and no token exists yet: every call gets 401 until one '
                    "is made with `kiln token create`"
                )
            operations = daemon.operations
            calls = daemon.calls
            try:
                invoke_listeners = await open_listeners(config.daemon.listen)
            except OSError as e:
                raise FatalStartupError(
                    f"cannot listen on {config.daemon.listen} ([daemon] listen): {e.strerror or e}"
                ) from e
            control_listeners = await open_listeners(f"fd://{control_sock.detach()}")
            async with trio.open_nursery() as root:

                async def reload() -> None:
                    await notifier.reloading()
                    try:
                        result = await operations.reload()
                        log.info("SIGHUP reload: %s", result)
                    except CallError as e:
                        log.error("SIGHUP reload refused: %s", e.message)
                    await notifier.ready(status_line(operations))

                def force() -> None:
                    drain_requested.set()
                    stop_now.cancel()

                if handle_signals:
                    root.start_soon(
                        watch_signals, drain_requested.set, force, lambda: root.start_soon(reload)
                    )
                # Before serving: what a crashed run left is gone before we start anew
                # (bounded in time; see kiln.containers.sweep).
                await sweep_orphans(docker, identity)
                iofs.sweep(keep=identity.instance)
                await root.start(daemon.run)
                servers_down = trio.Event()
                servers_stop = trio.Event()

                async def servers(task_status: trio.TaskStatus[list[str]]) -> None:
                    # Both APIs; they stop together (after the drain), giving
                    # responses being written a moment to finish.
                    async with trio.open_nursery() as n:
                        binds = await n.start(
                            partial(
                                serve_asgi,
                                daemon.invoke_app,
                                invoke_listeners,
                                shutdown=servers_stop,
                                grace=SERVER_GRACE,
                                limits=invoke_limits(config),
                            )
                        )
                        await n.start(
                            partial(
                                serve_asgi,
                                daemon.control_app,
                                control_listeners,
                                shutdown=servers_stop,
                                grace=SERVER_GRACE,
                                limits=CONTROL_LIMITS,
                            )
                        )
                        task_status.started(binds)
                    servers_down.set()

                binds: list[str] = await root.start(servers)
                log.info(
                    "invoke API listening on %s, control API on %s",
                    ", ".join(binds),
                    config.daemon.control_socket,
                )
                await root.start(notifier.watchdog)
                await notifier.ready(status_line(operations))
                task_status.started(binds)

                await drain_requested.wait()
                daemon.drain()
                await notifier.stopping()
                n = calls.inflight
                log.info(
                    "draining: %d call(s) in flight, waiting up to %g s",
                    n,
                    config.daemon.drain_timeout,
                )
                with stop_now, trio.move_on_after(config.daemon.drain_timeout) as waited:
                    await calls.wait_idle()
                if waited.cancelled_caught or stop_now.cancelled_caught:
                    log.warning("drain: cancelling %d call(s) still in flight", calls.inflight)
                else:
                    servers_stop.set()  # let finished calls' responses go out
                    with trio.move_on_after(SERVER_GRACE + 1):
                        await servers_down.wait()
                # Cancel the tree: servers stop, calls still running are cancelled, and
                # every container task removes its container (shielded, bounded).
                root.cancel_scope.cancel()
            # Removals Docker refused a moment ago (it was down): one last try.
            await daemon.janitor.flush()
            if daemon.asyncq is not None:
                await daemon.asyncq.store.close()
    finally:
        iofs.close()
        with contextlib.suppress(OSError):
            os.unlink(config.daemon.control_socket)
        notifier.close()
        logs.close()
    log.info("kiln stopped")


async def open_async_store(config: Config) -> Store:
    """Open ``[async] store`` (in a thread: it may connect to a database and
    create or migrate its schema)."""
    try:
        store = await trio.to_thread.run_sync(open_store, config)
    except StoreError as e:
        raise FatalStartupError(f"[async] store: {e}") from e
    log.info(
        "async calls: %s store, host %s",
        "shared PostgreSQL" if store.shared else "SQLite",
        default_host(config),
    )
    return store


def status_line(operations: Operations) -> str:
    m = operations.memory.statistics()
    return (
        f"{len(operations.registry)} function(s), {operations.calls.inflight} call(s) in flight, "
        f"{format_size(m.reserved)} of {format_size(m.capacity)} reserved"
    )
