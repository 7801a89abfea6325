"""Retry transient failures with jittered backoff under one deadline per call."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable

import anyio
import attrs
import tenacity

from dlgraph.backend import Request, Result
from dlgraph.engine.ledger import Ledger
from dlgraph.engine.stage import Call
from dlgraph.errors import RateLimited, RetriesExhausted, TransientError


@attrs.frozen
class RetryPolicy:
    deadline_s: float = 120.0
    """Give up once this much time has passed since the first attempt."""
    initial_wait_s: float = 0.5
    max_wait_s: float = 20.0


def _wait_for(policy: RetryPolicy, jitter: random.Random) -> Callable[[tenacity.RetryCallState], float]:
    backoff = tenacity.wait_random_exponential(multiplier=policy.initial_wait_s, max=policy.max_wait_s)

    def wait(state: tenacity.RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, RateLimited) and error.retry_after_s is not None:
            return error.retry_after_s * (1.0 + 0.2 * jitter.random())
        return float(backoff(state))

    return wait


@attrs.define(eq=False)
class Retry:
    """Only TransientError is retried; everything else passes through at once."""

    inner: Call
    ledger: Ledger
    policy: RetryPolicy = attrs.field(factory=RetryPolicy)
    sleep: Callable[[float], Awaitable[None]] = anyio.sleep
    jitter: random.Random = attrs.field(factory=random.Random)

    async def __call__(self, request: Request) -> Result:
        retrying = tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception_type(TransientError),
            wait=_wait_for(self.policy, self.jitter),
            stop=tenacity.stop_after_delay(self.policy.deadline_s),
            before_sleep=lambda _: self.ledger.add(request, retries=1),
            sleep=self.sleep,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self.inner(request)
        except tenacity.RetryError as error:
            last = error.last_attempt.exception()
            raise RetriesExhausted(
                f"gave up after {error.last_attempt.attempt_number} attempts: {last}"
            ) from last
        raise AssertionError("unreachable: tenacity neither returned nor raised")
