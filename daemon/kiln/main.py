"""The root nursery: everything the daemon runs lives (and dies) under it.

::

    root nursery
    ├── signals: SIGTERM/SIGINT → graceful stop (a second one: stop now)
    ├── Docker client (one httpx.AsyncClient on the socket)
    └── invoke API server (hypercorn, Trio worker)

Cancelling the root cancels every call, and every call's ``finally`` removes
its container (shielded, bounded), so a stopped daemon leaves nothing behind.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable, Iterable
from pathlib import Path

import trio
from hypercorn.config import Config as HyperConfig
from hypercorn.trio import serve

from kiln.admission import MemoryPool
from kiln.api import InvokeApp
from kiln.config import Config
from kiln.containers import Identity
from kiln.docker import DockerClient, DockerError, DockerTimeout, DockerUnreachable
from kiln.functions import FunctionSpec
from kiln.hostmem import plan_capacity, read_host_resources
from kiln.invoke import Invoker
from kiln.janitor import Janitor
from kiln.ratelimit import DockerLimiter
from kiln.supervisors import Supervisors
from kiln.sweep import sweep_orphans
from kiln.systemd import Notifier
from kiln.units import format_size

log = logging.getLogger("kiln.daemon")


class FatalStartupError(Exception):
    """The daemon cannot run (e.g. a Docker engine too old)."""


def check_functions_fit(functions: Iterable[FunctionSpec], capacity: int) -> None:
    """A function whose memory can never fit is refused at load time, not at call time."""
    for spec in functions:
        if spec.memory > capacity:
            raise FatalStartupError(
                f"functions.{spec.name}.memory: {format_size(spec.memory)} can never fit: "
                f"Kiln has {format_size(capacity)} for containers on this host ([limits] memory)"
            )


def hypercorn_config(listen: str, graceful_timeout: float) -> HyperConfig:
    hc = HyperConfig()
    hc.bind = [listen]
    hc.accesslog = None
    hc.errorlog = logging.getLogger("kiln.http")
    hc.graceful_timeout = graceful_timeout
    hc.keep_alive_timeout = 75.0
    hc.include_server_header = False
    return hc


async def watch_signals(on_stop: Callable[[], None], on_force: Callable[[], None]) -> None:
    """SIGTERM/SIGINT → graceful stop; a second one → stop at once."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        stopping = False
        async for signum in signals:
            name = signal.Signals(signum).name
            if not stopping:
                log.info("%s: stopping (waiting for calls in flight; send again to stop now)", name)
                stopping = True
                on_stop()
            else:
                log.warning("%s again: stopping now", name)
                on_force()


async def check_docker(docker: DockerClient) -> None:
    try:
        version = await docker.check_version()
        log.info("Docker Engine %s at %s", version, docker.socket_path)
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
    """Run the daemon until a signal (or cancellation) stops it."""
    identity = Identity(config.daemon.id)
    log.info(
        "kiln starting: daemon id %s, instance %s, %d function(s) from %s",
        identity.daemon_id,
        identity.instance,
        len(config.functions),
        config.source,
    )
    shutdown = trio.Event()
    plan = plan_capacity(read_host_resources(), cap=config.limits.memory)
    log.info("memory for containers: %s", plan.explain())
    check_functions_fit(config.functions.values(), plan.capacity)
    limiter = DockerLimiter(
        create_rate=config.docker.create_rate,
        create_burst=config.docker.create_burst,
        max_inflight=config.docker.max_inflight,
    )
    memory = MemoryPool(
        plan.capacity,
        queue_max=config.limits.queue_max,
        queue_wait=config.limits.queue_wait,
        async_fraction=config.limits.async_fraction,
    )
    async with DockerClient(
        config.docker.socket,
        timeout=config.docker.timeout,
        limiter=limiter,
        pool_size=config.docker.max_inflight,
    ) as docker:
        await check_docker(docker)
        janitor = Janitor(docker)
        supervisors = Supervisors(
            janitor=janitor,
            docker=docker,
            memory=memory,
            identity=identity,
            iofs_root=Path(config.daemon.run_dir) / "iofs" / identity.instance,
            queue_max=config.limits.queue_max,
            queue_wait=config.limits.queue_wait,
        )
        memory.evictor = supervisors
        invoker = Invoker(
            docker=docker,
            identity=identity,
            functions=config.functions,
            max_response=config.daemon.max_response,
            memory=memory,
            supervisors=supervisors,
            janitor=janitor,
        )
        app = InvokeApp(invoker, max_body=config.daemon.max_body)
        hc = hypercorn_config(config.daemon.listen, config.daemon.drain_timeout)
        notifier = Notifier()
        async with trio.open_nursery() as root:

            def stop() -> None:
                invoker.draining = True
                shutdown.set()
                root.start_soon(notifier.stopping)

            async def serve_api(task_status: trio.TaskStatus[list[str]]) -> None:
                # Returns once shutdown is set and calls in flight are done (or
                # drain_timeout passed and hypercorn cancelled them); then the
                # rest of the tree (signal watcher, ...) is cancelled too.
                await serve(app, hc, shutdown_trigger=shutdown.wait, task_status=task_status)  # type: ignore[arg-type]
                root.cancel_scope.cancel()

            if handle_signals:
                root.start_soon(watch_signals, stop, root.cancel_scope.cancel)
            await root.start(janitor.run)
            root.start_soon(sweep_orphans, docker, identity)
            await root.start(supervisors.run, config.functions)
            binds: list[str] = await root.start(serve_api)
            log.info("invoke API listening on %s", ", ".join(binds))
            await root.start(notifier.watchdog)
            await notifier.ready(
                f"serving {len(config.functions)} function(s) on {', '.join(binds)}; "
                f"{format_size(plan.capacity)} for containers"
            )
            task_status.started(binds)
        notifier.close()
    log.info("kiln stopped")
