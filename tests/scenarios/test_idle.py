"""Idle means asleep: after serving a burst, Kiln's components make no wake-ups
at all for an hour of virtual time (the deploy tool's unstoppable ticker, undone)."""

from __future__ import annotations

import trio
import trio.testing
from trio.abc import Instrument

from tests.asgi import request
from tests.harness import functions, stack

FNS = functions(
    echo={"image": "busybox", "cmd": ["cat"], "memory": "64MiB", "rate": "1000/s"},
)


class StepCounter(Instrument):
    def __init__(self, ignore: trio.lowlevel.Task) -> None:
        self.ignore = ignore
        self.steps: list[str] = []

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is not self.ignore:
            self.steps.append(task.name)


async def test_no_task_steps_for_an_idle_hour_after_a_burst(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with stack(FNS, capacity=256 * 1024 * 1024) as s:
        # a burst: more calls than fit in memory at once, so some queue
        async with trio.open_nursery() as nursery:
            for i in range(40):
                nursery.start_soon(request, s.app, "POST", "/invoke/echo", b"x%d" % i)
        assert s.fake.created_total == 40
        assert s.memory.statistics().reserved == 0
        # The burst's last steps (the fake engine closing its connections) run now,
        # at the same instant; from then on, nothing may wake for an hour.
        await trio.testing.wait_all_tasks_blocked()
        counter = StepCounter(trio.lowlevel.current_task())
        trio.lowlevel.add_instrument(counter)
        try:
            await trio.sleep(3600)
        finally:
            trio.lowlevel.remove_instrument(counter)
        assert counter.steps == []
