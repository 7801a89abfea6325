"""How many calls may be in flight at once."""

from __future__ import annotations

import anyio
import attrs

from dlgraph.backend import Request, Result
from dlgraph.engine.stage import Call


@attrs.frozen
class LimiterStatistics:
    limit: float
    in_flight: int
    waiting: int


@attrs.define(eq=False)
class Limiter:
    """A concurrency limit on one CapacityLimiter; its `total_tokens` may change in use."""

    inner: Call
    capacity: anyio.CapacityLimiter

    async def __call__(self, request: Request) -> Result:
        async with self.capacity:
            return await self.inner(request)

    def statistics(self) -> LimiterStatistics:
        stats = self.capacity.statistics()
        return LimiterStatistics(
            limit=stats.total_tokens, in_flight=stats.borrowed_tokens, waiting=stats.tasks_waiting
        )
