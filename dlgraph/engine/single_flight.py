"""Identical requests in flight share one call.

The shared call runs in the engine's task group (on a reused worker), not in the first
caller's task, so one
caller's cancellation never cancels a result others await. When the last waiter leaves, the
call is cancelled and forgotten.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

import anyio
import attrs

from dlgraph.engine.stage import Call, Outcome, Work
from dlgraph.engine.workers import Workers


@attrs.define(eq=False)
class Flight:
    done: anyio.Event = attrs.field(factory=anyio.Event)
    scope: anyio.CancelScope = attrs.field(factory=anyio.CancelScope)
    waiters: int = 0
    result: Outcome | None = None
    error: Exception | None = None


@attrs.define(eq=False)
class SingleFlight:
    inner: Call
    key: Callable[[Work], Hashable]
    workers: Workers
    _flights: dict[Hashable, Flight] = attrs.field(factory=dict, init=False)

    @property
    def in_flight(self) -> int:
        return len(self._flights)

    async def __call__(self, work: Work) -> Outcome:
        key = self.key(work)
        flight = self._flights.get(key)
        if flight is None:
            flight = self._flights[key] = Flight()
            self.workers.submit(lambda: self._run(key, flight, work))
        flight.waiters += 1
        try:
            await flight.done.wait()
        finally:
            flight.waiters -= 1
            if flight.waiters == 0 and not flight.done.is_set():
                flight.scope.cancel()
                self._forget(key, flight)
        if flight.error is not None:
            raise flight.error
        assert flight.result is not None
        return flight.result

    async def _run(self, key: Hashable, flight: Flight, request: Work) -> None:
        with flight.scope:
            try:
                flight.result = await self.inner(request)
            except Exception as error:  # handed to every waiter
                flight.error = error
            finally:
                self._forget(key, flight)
                flight.done.set()

    def _forget(self, key: Hashable, flight: Flight) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
