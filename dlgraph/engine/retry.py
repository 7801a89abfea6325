"""Retry transient failures with jittered backoff, under one deadline per call."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable

import anyio
import attrs
import tenacity

from dlgraph.engine.ledger import Ledger
from dlgraph.engine.stage import Call, Outcome, Work
from dlgraph.errors import RateLimited, RetriesExhausted, TransientError


@attrs.frozen
class RetryPolicy:
    deadline_s: float = 300.0
    """Give up once this much time has passed since the first failure."""
    initial_wait_s: float = 0.25
    max_wait_s: float = 10.0


@attrs.define(eq=False)
class Retry:
    """Only TransientError is retried; anything else passes through at once.

    After a 429 the limiter holds everyone for the pause the server asked for, so a rate
    limited call is retried without a wait of its own.
    """

    inner: Call
    ledger: Ledger
    policy: RetryPolicy = attrs.field(factory=RetryPolicy)
    sleep: Callable[[float], Awaitable[None]] = anyio.sleep
    jitter: random.Random = attrs.field(factory=lambda: random.Random(0))

    def _wait(self, state: tenacity.RetryCallState) -> float:
        return self._wait_after(
            state.outcome.exception() if state.outcome else None, state.attempt_number + 1
        )

    async def __call__(self, work: Work) -> Outcome:
        try:
            return await self.inner(work)  # the common case: no retry machinery at all
        except TransientError as error:
            first_error: TransientError = error
        return await self._retry(work, first_error)

    def _wait_after(self, error: BaseException | None, attempt: int) -> float:
        if isinstance(error, RateLimited):
            return 0.0
        ceiling = min(self.policy.max_wait_s, self.policy.initial_wait_s * 2 ** (attempt - 1))
        return self.jitter.uniform(0, ceiling)  # "full jitter"

    async def _retry(self, work: Work, first_error: TransientError) -> Outcome:
        """Retry under one deadline scope, counted from the first failure."""
        retrying = tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception_type(TransientError),
            wait=self._wait,
            before_sleep=lambda _: self.ledger.add(work, retries=1),
            sleep=self.sleep,
            reraise=True,
        )
        last: list[BaseException] = [first_error]
        try:
            with anyio.fail_after(self.policy.deadline_s):
                self.ledger.add(work, retries=1)
                await self.sleep(self._wait_after(first_error, 1))
                async for attempt in retrying:
                    with attempt:
                        try:
                            return await self.inner(work)
                        except TransientError as error:
                            last[:] = [error]
                            raise
        except TimeoutError:
            cause = last[0] if last else None
            raise RetriesExhausted(
                f"no success within the retry deadline of {self.policy.deadline_s:g} s; last error: {cause}"
            ) from cause
        raise AssertionError("unreachable: tenacity neither returned nor raised")
