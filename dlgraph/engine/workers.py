"""Reusable tasks in the engine's task group, for work that must outlive its first caller.

Spawning an anyio task costs tens of microseconds; a call through the engine should cost
less than a hundred in all. A finished worker waits for its next job instead of exiting, so
the engine spawns only as many tasks as calls were ever in flight at once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import anyio.abc
import attrs

Job = Callable[[], Awaitable[None]]
MAX_IDLE = 1024


@attrs.define(eq=False)
class _Worker:
    wake: anyio.Event = attrs.field(factory=anyio.Event)
    job: Job | None = None


@attrs.define(eq=False)
class Workers:
    """Runs jobs in `task_group`; a job must not raise (it reports its own outcome)."""

    task_group: anyio.abc.TaskGroup
    spawned: int = attrs.field(default=0, init=False)
    _idle: list[_Worker] = attrs.field(factory=list, init=False)

    def submit(self, job: Job) -> None:
        if self._idle:
            worker = self._idle.pop()
            worker.job = job
            worker.wake.set()
        else:
            self.spawned += 1
            self.task_group.start_soon(self._work, job)

    async def _work(self, job: Job) -> None:
        worker = _Worker()
        while True:
            await job()
            if len(self._idle) >= MAX_IDLE:
                return
            worker.wake, worker.job = anyio.Event(), None
            self._idle.append(worker)
            await worker.wake.wait()
            assert worker.job is not None
            job = worker.job
