"""A simulated clock for the engine's time-driven stages: time moves only when every task
waits, jumping to the next sleeper's wake time. Tests assert what happened when, never how
long it took."""

from __future__ import annotations

import heapq
import itertools

import anyio


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self._sleepers: list[tuple[float, int, anyio.Event]] = []
        self._order = itertools.count()

    def time(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await anyio.sleep(0)
            return
        wake = anyio.Event()
        heapq.heappush(self._sleepers, (self.now + seconds, next(self._order), wake))
        await wake.wait()

    async def drive(self) -> None:
        """Run in a task group beside the code under test; cancel it when done."""
        while True:
            await anyio.wait_all_tasks_blocked()
            if not self._sleepers:
                await anyio.sleep(0.001)  # nobody sleeps on this clock: let real events happen
                continue
            when = self._sleepers[0][0]
            self.now = max(self.now, when)
            while self._sleepers and self._sleepers[0][0] <= self.now:
                heapq.heappop(self._sleepers)[2].set()
