"""Retry transient failures with jittered backoff, under one deadline per call (tenacity).

The first attempt runs bare: the common case pays for no retry machinery. After a failure,
tenacity's `AsyncRetrying` runs the retries under one deadline that starts at that failure,
measured on the engine's clock: a wait ends at the deadline at the latest, no attempt starts
after it, and a scope of the same length cuts an attempt that hangs past it. Retry n waits a
full-jitter backoff under an exponential ceiling, except after a 429, where the limiter's one
shared pause does the waiting for every call at once. Only TransientError is retried; every
retry is counted in the ledger before its wait. A malformed answer is retried a few times
only (`malformed_attempts` in a row): each is paid, and a server that answers so again and
again (a proxy that drops fields, a hostile server) would otherwise be paid to the deadline.

Tenacity is given the engine's `sleep`, so tests run it on a fake clock, and the failure of
the bare attempt as its first attempt (replayed, not sent again), so that its attempt numbers
are ours: attempt n + 1 is retry n.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable

import anyio
import attrs
from tenacity import AsyncRetrying, RetryCallState, RetryError, retry_if_exception_type

from dlgraph._validate import integer, number
from dlgraph.engine.ledger import Ledger
from dlgraph.engine.stage import Call, Outcome, Work
from dlgraph.errors import MalformedAnswer, RateLimited, RetriesExhausted, TransientError

MAX_DOUBLINGS = 1023
"""2.0 ** 1024 overflows a float; the backoff's ceiling has long reached `max_wait_s` by then."""


@attrs.frozen(kw_only=True)
class RetryPolicy:
    deadline_s: float = attrs.field(default=300.0, validator=number(0, above=True))
    """Give up once this much time has passed since the first failure."""
    initial_wait_s: float = attrs.field(default=0.25, validator=number(0))
    max_wait_s: float = attrs.field(default=10.0, validator=number(0))
    malformed_attempts: int = attrs.field(default=3, validator=integer(1, none=False))
    """A call fails once this many attempts in a row were answered malformed (a server that
    garbles a share p of its answers then fails a call with probability p**this: raise it
    for a flaky proxy)."""


class _DeadlinePassed(Exception):
    """A wait ended at the deadline: no attempt starts after it (never retried)."""


@attrs.define(eq=False)
class _Retries:
    """One call's retries: what tenacity is told to do, and the last failure seen."""

    retry: Retry
    work: Work
    last: TransientError
    deadline: float
    replayed: bool = False
    malformed: int = 0
    """Attempts in a row answered malformed."""

    async def attempt(self) -> Outcome:
        if not self.replayed:  # tenacity's first attempt is the bare one, which failed
            self.replayed = True
            self.failed(self.last)
            raise self.last
        if self.retry.clock() >= self.deadline:
            raise _DeadlinePassed
        try:
            return await self.retry.inner(self.work)
        except TransientError as error:
            self.failed(error)
            raise

    def failed(self, error: TransientError) -> None:
        self.last = error
        self.malformed = self.malformed + 1 if isinstance(error, MalformedAnswer) else 0

    @property
    def malformed_too_often(self) -> bool:
        return self.malformed >= self.retry.policy.malformed_attempts

    def wait_s(self, state: RetryCallState) -> float:
        remaining_s = self.deadline - self.retry.clock()
        if remaining_s <= 0:
            return 0.0  # the stop condition holds: no jitter is drawn for a wait never taken
        return min(self.retry.backoff_s(self.last, state.attempt_number), remaining_s)

    def should_stop(self, state: RetryCallState) -> bool:
        return self.malformed_too_often or self.retry.clock() >= self.deadline

    def count(self, state: RetryCallState) -> None:
        self.retry.ledger.add(self.work, retries=1)


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
        retries = _Retries(self, work, failure, self.clock() + self.policy.deadline_s)
        retrying = AsyncRetrying(
            sleep=self.sleep,
            retry=retry_if_exception_type(TransientError),
            wait=retries.wait_s,
            stop=retries.should_stop,
            before_sleep=retries.count,
        )
        with anyio.move_on_after(self.policy.deadline_s):
            try:
                outcome: Outcome = await retrying(retries.attempt)
                return outcome
            except (RetryError, _DeadlinePassed):
                pass
        if retries.malformed_too_often:
            raise RetriesExhausted(
                f"the answer was malformed {retries.malformed} times in a row (each attempt "
                f"paid; see RetryPolicy.malformed_attempts); last: {retries.last}"
            ) from retries.last
        raise RetriesExhausted(
            f"no success within the retry deadline of {self.policy.deadline_s:g} s; "
            f"last error: {retries.last}"
        ) from retries.last

    def backoff_s(self, error: TransientError, retry: int) -> float:
        """The wait before retry number `retry` (1-based): full jitter under 2^(n-1) × initial,
        at most `max_wait_s`. The power stops growing at 2^1023, the largest a float holds, so
        that any number of retries (a long deadline, a server failing at once) stays finite."""
        if isinstance(error, RateLimited):
            return 0.0
        growth = 2.0 ** min(retry - 1, MAX_DOUBLINGS)
        ceiling = min(self.policy.max_wait_s, self.policy.initial_wait_s * growth)
        return self.jitter.uniform(0, ceiling)
