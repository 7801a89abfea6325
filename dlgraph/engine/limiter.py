"""Rate limits: request and token buckets, one shared pause on 429, adaptive concurrency.

Admission is a priority queue: when the buckets are the bottleneck, the waiting call with the
highest priority (the deepest node) goes first, ties in arrival order (the parts of a split
batch arrive when the batch did). Each attempt, retries included, passes here, since each one
costs the server a request.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import random
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import attrs

from dlgraph._validate import check_number, integer, number
from dlgraph.answer import CallUsage
from dlgraph.backend import Backend
from dlgraph.engine.bucket import TokenBucket
from dlgraph.engine.shared import GrantPool
from dlgraph.engine.stage import Batch, Outcome, ReplyCall, Work
from dlgraph.engine.tokens import estimated_tokens
from dlgraph.errors import RateLimited

logger = logging.getLogger(__name__)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


def per_minute(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """An attrs validator for a rate limit per minute: above 0 and at least 1 (a slower one
    would keep calls waiting for hours between two requests); None passes."""
    if value is not None:
        rate = check_number(attribute.name, value, 0, above=True)
        if rate < 1:
            raise ValueError(
                f"{attribute.name} must be >= 1 per minute (a lower limit waits hours between "
                f"calls), got {rate:g}"
            )


@attrs.frozen(kw_only=True)
class RateLimits:
    """The engine's rate limits; ``Engine(backend, rpm=..., tpm=..., max_concurrency=...)``
    builds one, ``Engine(backend, limits=RateLimits(...))`` takes one whole."""

    rpm: float | None = attrs.field(default=None, validator=per_minute)
    """Requests per minute the server allows (None: no limit)."""
    tpm: float | None = attrs.field(default=None, validator=per_minute)
    """Tokens per minute: prompt tokens plus max_tokens, as servers charge them."""
    max_concurrency: int | None = attrs.field(default=None, validator=integer(1))
    """A ceiling on calls in flight; the adaptive limit stays below it."""
    burst_s: float = attrs.field(default=1.0, validator=number(0, above=True))
    """The buckets hold this many seconds of allowance."""
    pause_without_retry_after_s: float = attrs.field(default=1.0, validator=number(0))
    """How long everyone waits after a 429 that does not say."""
    pause_jitter: float = attrs.field(default=0.1, validator=number(0))
    """A pause is stretched by up to this fraction, so waiting calls do not wake in lockstep."""


def concurrency_ceiling(limits: RateLimits, backend: Backend) -> int:
    """The most calls in flight: the engine's and the backend's limits, else 256."""
    ceiling = min(
        limits.max_concurrency or math.inf, backend.capabilities.max_concurrency or math.inf
    )
    return 256 if ceiling == math.inf else int(ceiling)


@attrs.frozen
class LimiterStatistics:
    concurrency_limit: float
    in_flight: int
    waiting: int
    rate_limited: int
    paused_until: float


@attrs.define(eq=False)
class _Waiter:
    wake: anyio.Event = attrs.field(factory=anyio.Event)


@attrs.define(eq=False)
class Limiter:
    """Admits each attempt under the buckets, the shared pause and the concurrency limit,
    then learns from its reply: the server's stated limits, 429s, latency, real token usage."""

    inner: ReplyCall
    backend: Backend
    limits: RateLimits = attrs.field(factory=RateLimits)
    clock: Clock = anyio.current_time
    sleep: Sleep = anyio.sleep
    jitter: random.Random = attrs.field(factory=lambda: random.Random(0))
    pool: GrantPool | None = None
    """The endpoint's allowance shared with engines in other processes, when there is one."""
    capacity: anyio.CapacityLimiter = attrs.field(init=False)
    _requests: TokenBucket | None = attrs.field(default=None, init=False)
    _tokens: TokenBucket | None = attrs.field(default=None, init=False)
    _queue: list[tuple[int, float, int, _Waiter]] = attrs.field(factory=list, init=False)
    _order: itertools.count[int] = attrs.field(factory=itertools.count, init=False)
    _paused_until: float = attrs.field(default=-math.inf, init=False)
    _rate_limited: int = attrs.field(default=0, init=False)
    _latency_s: float = attrs.field(default=1.0, init=False)
    _limit: float = attrs.field(default=1.0, init=False)
    """The adaptive concurrency limit; the CapacityLimiter holds its whole part."""
    _ceiling: float = attrs.field(default=256.0, init=False)
    """The most calls in flight the adaptive limit may reach."""

    def __attrs_post_init__(self) -> None:
        self._ceiling = concurrency_ceiling(self.limits, self.backend)
        now = self.clock()
        if self.limits.rpm:
            self._requests = TokenBucket.per_minute(self.limits.rpm, self.limits.burst_s, now)
        if self.limits.tpm:
            self._tokens = TokenBucket.per_minute(self.limits.tpm, self.limits.burst_s, now)
        self._limit = self._little(self._latency_s)
        self.capacity = anyio.CapacityLimiter(int(self._limit))

    def _little(self, latency_s: float) -> float:
        """Little's law: calls in flight = arrival rate × latency (with headroom)."""
        if not self.limits.rpm:
            return self._ceiling
        return float(min(self._ceiling, max(2, math.ceil(self.limits.rpm / 60.0 * latency_s * 2))))

    async def __call__(self, work: Work) -> Outcome:
        charged = sum(estimated_tokens(self.backend, work)) if self._tokens else 0
        since = work.since if isinstance(work, Batch) else None
        await self._admit(work.priority, charged, since)
        crowded = self.capacity.available_tokens < 1
        async with self.capacity:
            started = self.clock()
            reply = await self.inner(work)
        self._calibrate(reply.usage)
        if isinstance(reply.error, RateLimited):
            pause_s = self._on_rate_limited(reply.error)
            if self.pool is not None:
                with anyio.CancelScope(shield=True):
                    await self.pool.rate_limited(pause_s)
        elif reply.error is None:
            self._on_success(self.clock() - started, crowded)
            self._true_up(charged, reply.usage.prompt_tokens, reply.usage.completion_tokens)
        return reply.result()

    # -- admission -------------------------------------------------------------------------

    def _wait_s(self, tokens: int) -> float:
        now = self.clock()
        waits = [self._paused_until - now]
        if self._requests:
            waits.append(self._requests.wait_s(1, now))
        if self._tokens:
            waits.append(self._tokens.wait_s(tokens, now))
        return max(waits)

    async def _admit(self, priority: int, tokens: int, since: float | None) -> None:
        limited = self._requests or self._tokens or self._paused_until > -math.inf or self.pool
        if not self._queue and limited:
            if self._wait_s(tokens) <= 0 and (self.pool is None or self.pool.try_take(tokens)):
                self._take(tokens)
                return
        elif not self._queue:
            return  # no limit known: nothing to wait for
        waiter = _Waiter()
        arrived = self.clock() if since is None else since
        entry = (-priority, arrived, next(self._order), waiter)
        heapq.heappush(self._queue, entry)
        self._wake_head()
        try:
            while True:
                if self._queue[0] is entry:
                    wait = self._wait_s(tokens)
                    if wait <= 0 and self.pool is not None:
                        wait = await self.pool.acquire(tokens, len(self._queue))
                    if wait <= 0:
                        break
                    await self.sleep(wait)
                else:
                    waiter.wake = anyio.Event()
                    await waiter.wake.wait()
        except BaseException:
            self._queue.remove(entry)
            heapq.heapify(self._queue)
            self._wake_head()
            raise
        if self._queue[0] is entry:
            heapq.heappop(self._queue)
        else:  # a call of higher priority arrived while this one borrowed from the pool
            self._queue.remove(entry)
            heapq.heapify(self._queue)
        self._take(tokens)
        self._wake_head()

    def _take(self, tokens: int) -> None:
        if self._requests:
            self._requests.take(1)
        if self._tokens:
            self._tokens.take(tokens)

    def _wake_head(self) -> None:
        if self._queue:
            self._queue[0][3].wake.set()

    # -- feedback --------------------------------------------------------------------------

    def _on_rate_limited(self, error: RateLimited) -> float:
        """One shared pause for everyone, as long as the server asked, with jitter; returns
        the pause."""
        self._rate_limited += 1
        now = self.clock()
        pause = (
            error.retry_after_s
            if error.retry_after_s is not None
            else self.limits.pause_without_retry_after_s
        )
        until = now + pause * (1.0 + self.limits.pause_jitter * self.jitter.random())
        if until > self._paused_until:
            logger.debug("429: pausing %.3f s", until - now)
            self._paused_until = until
        for bucket in (self._requests, self._tokens):
            if bucket:
                bucket.empty(now)
        self._set_limit(self._limit * 0.7)
        return pause

    def _calibrate(self, box: CallUsage) -> None:
        """Adopt the server's limits when it states them (x-ratelimit-*), never exceeding ours,
        and never hold more allowance than the server says remains."""
        if not box.states_limits:
            return
        now = self.clock()
        for attribute, limit, remaining in (
            ("_requests", box.limit_requests, box.remaining_requests),
            ("_tokens", box.limit_tokens, box.remaining_tokens),
        ):
            bucket: TokenBucket | None = getattr(self, attribute)
            if limit and (bucket is None or limit / 60.0 < bucket.rate_per_s):
                bucket = TokenBucket.per_minute(limit, self.limits.burst_s, now)
                if remaining is not None:
                    bucket.cap(float(remaining), now)
                setattr(self, attribute, bucket)
            elif bucket is not None and remaining is not None:
                bucket.cap(float(remaining), now)

    def _on_success(self, latency_s: float, crowded: bool) -> None:
        """Track latency; grow the concurrency limit by about one per window of calls that
        had to wait for it (additive increase)."""
        self._latency_s = 0.9 * self._latency_s + 0.1 * latency_s
        limit = self._limit
        if crowded:
            limit += 1.0 / limit
        if not self._rate_limited:
            limit = max(limit, self._little(self._latency_s))
        self._set_limit(limit)

    def _set_limit(self, limit: float) -> None:
        self._limit = min(self._ceiling, max(1.0, limit))
        if int(self._limit) != self.capacity.total_tokens:
            self.capacity.total_tokens = int(self._limit)

    def _true_up(
        self, charged: int, prompt_tokens: int | None, completion_tokens: int | None
    ) -> None:
        """Give back (or take) the difference between the estimate and the real usage."""
        if self._tokens and prompt_tokens is not None and completion_tokens is not None:
            unused = charged - prompt_tokens - completion_tokens
            self._tokens.add(unused)
            if self.pool is not None:
                self.pool.true_up(unused)

    def statistics(self) -> LimiterStatistics:
        stats = self.capacity.statistics()
        return LimiterStatistics(
            concurrency_limit=stats.total_tokens,
            in_flight=stats.borrowed_tokens,
            waiting=len(self._queue) + stats.tasks_waiting,
            rate_limited=self._rate_limited,
            paused_until=self._paused_until,
        )
