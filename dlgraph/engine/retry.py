"""Retry transient failures with jittered backoff, under one deadline per call.

The first attempt runs bare: the common case pays for no retry machinery. After a failure the
retries run under one deadline that starts at that failure, measured on the engine's clock: a
wait ends at the deadline at the latest and no attempt starts after it, and a scope of the same
length cuts an attempt that hangs past it. Retry n waits a full-jitter backoff under an
exponential ceiling, except after a 429, where the limiter's one shared pause does the waiting
for every call at once. Only TransientError is retried.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Awaitable, Callable

import anyio
import attrs

from dlgraph._validate import number
from dlgraph.engine.ledger import Ledger
from dlgraph.engine.stage import Call, Outcome, Work
from dlgraph.errors import RateLimited, RetriesExhausted, TransientError

MAX_DOUBLINGS = 1023
"""2.0 ** 1024 overflows a float; the backoff's ceiling has long reached `max_wait_s` by then."""


@attrs.frozen(kw_only=True)
class RetryPolicy:
    deadline_s: float = attrs.field(default=300.0, validator=number(0, above=True))
    """Give up once this much time has passed since the first failure."""
    initial_wait_s: float = attrs.field(default=0.25, validator=number(0))
    max_wait_s: float = attrs.field(default=10.0, validator=number(0))


@attrs.define(eq=False)
class Retry:
    inner: Call
    ledger: Ledger
    policy: RetryPolicy = attrs.field(factory=RetryPolicy)
    sleep: Callable[[float], Awaitable[None]] = anyio.sleep
    jitter: random.Random = attrs.field(factory=lambda: random.Random(0))
    clock: Callable[[], float] = anyio.current_time

    async def __call__(self, work: Work) -> Outcome:
        try:
            return await self.inner(work)
        except TransientError as failure:
            return await self._retry(work, failure)

    async def _retry(self, work: Work, failure: TransientError) -> Outcome:
        last = failure
        deadline = self.clock() + self.policy.deadline_s
        with anyio.move_on_after(self.policy.deadline_s):
            for retry in itertools.count(1):
                remaining_s = deadline - self.clock()
                if remaining_s <= 0:
                    break
                self.ledger.add(work, retries=1)
                await self.sleep(min(self.backoff_s(last, retry), remaining_s))
                if self.clock() >= deadline:
                    break
                try:
                    return await self.inner(work)
                except TransientError as error:
                    last = error
        raise RetriesExhausted(
            f"no success within the retry deadline of {self.policy.deadline_s:g} s; "
            f"last error: {last}"
        ) from last

    def backoff_s(self, error: TransientError, retry: int) -> float:
        """The wait before retry number `retry` (1-based): full jitter under 2^(n-1) × initial,
        at most `max_wait_s`. The power stops growing at 2^1023, the largest a float holds, so
        that any number of retries (a long deadline, a server failing at once) stays finite."""
        if isinstance(error, RateLimited):
            return 0.0
        growth = 2.0 ** min(retry - 1, MAX_DOUBLINGS)
        ceiling = min(self.policy.max_wait_s, self.policy.initial_wait_s * growth)
        return self.jitter.uniform(0, ceiling)
