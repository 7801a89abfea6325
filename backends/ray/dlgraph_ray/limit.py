"""One endpoint's rate limit for engines in every process: a named Ray actor keeps the
buckets and the 429 pause (`LimitKeeper`); `SharedLimit` is the engine's handle on it.

The engine side (borrowing in blocks, giving back what it did not spend, why the keeper's
bucket holds half the burst) is `dlgraph.engine.shared`; this module only moves grants
between processes. The keeper answers at once and never waits, so one slow engine cannot hold
up another: an engine that gets nothing is told how long to wait and asks again.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from typing import Any

import attrs
import ray

from dlgraph.plugin import Grant, TokenBucket
from dlgraph_ray.cluster import NAMESPACE, join, resolve

logger = logging.getLogger(__name__)


class LimitKeeper:
    """The endpoint's request and token buckets and its pause (the state of a Ray actor; a
    plain class so that it can be tested in process)."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.limits: tuple[float | None, float | None, float] | None = None
        self.requests: TokenBucket | None = None
        self.tokens: TokenBucket | None = None
        self.paused_until = -math.inf
        self.granted = [0, 0]
        self.returned = [0, 0]
        self.pauses = 0

    def configure(self, rpm: float | None, tpm: float | None, burst_s: float) -> None:
        limits = (rpm, tpm, burst_s)
        if limits == self.limits:
            return
        if self.limits is not None:
            logger.warning("%s: limits changed from %s to %s", self.key, self.limits, limits)
        now = time.monotonic()
        # Half the burst: the other half covers grants held for up to burst_s / 2.
        self.requests = TokenBucket.per_minute(rpm, burst_s / 2, now) if rpm else None
        self.tokens = TokenBucket.per_minute(tpm, burst_s / 2, now) if tpm else None
        self.limits = limits

    def borrow(self, requests: int, tokens: int) -> Grant:
        now = time.monotonic()
        if now < self.paused_until:
            return Grant(0, 0, self.paused_until - now)
        waits = [0.0]
        grant_requests = requests if self.requests is None else 0
        if self.requests is not None and requests:
            waits.append(self.requests.wait_s(1, now))
            grant_requests = min(requests, max(0, math.floor(self.requests.level)))
        if self.tokens is not None and tokens:
            waits.append(self.tokens.wait_s(tokens, now))
        if max(waits) > 0:
            return Grant(0, 0, max(waits))
        if self.requests is not None:
            self.requests.take(grant_requests)
        if self.tokens is not None:
            self.tokens.take(tokens)
        self.granted[0] += grant_requests
        self.granted[1] += tokens
        return Grant(grant_requests, tokens)

    def give_back(self, requests: int, tokens: int) -> None:
        now = time.monotonic()
        for bucket, amount in ((self.requests, requests), (self.tokens, tokens)):
            if bucket is not None and amount:
                bucket.refill(now)
                bucket.add(amount)
        self.returned[0] += requests
        self.returned[1] += tokens

    def pause(self, seconds: float) -> None:
        now = time.monotonic()
        self.pauses += 1
        self.paused_until = max(self.paused_until, now + seconds)
        for bucket in (self.requests, self.tokens):
            if bucket is not None:
                bucket.empty(now)

    def statistics(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "granted_requests": self.granted[0],
            "granted_tokens": self.granted[1],
            "returned_requests": self.returned[0],
            "returned_tokens": self.returned[1],
            "pauses": self.pauses,
        }


def actor_name(key: str) -> str:
    return "dlgraph-limit-" + hashlib.sha256(key.encode()).hexdigest()[:20]


@attrs.define(eq=False)
class SharedLimit:
    """A `dlgraph.GrantSource`: the named actor that keeps the limit of the endpoint `key`.

    Every engine built with ``shared_limit=SharedLimit(key)`` (in any process of the Ray
    cluster, joined or started here) shares one budget; the engine's ``rpm``/``tpm`` declare
    it. The actor outlives the process that made it (it is detached), so that trials
    starting and ending at different times keep sharing one limit.
    """

    key: str
    address: str | None = attrs.field(default=None, kw_only=True)
    actor: Any = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.key, str) or not self.key:
            raise TypeError(f"SharedLimit: expected a non-empty key, got {self.key!r}")
        join(self.address)
        self.actor = (
            ray.remote(LimitKeeper)
            .options(
                name=actor_name(self.key),
                namespace=NAMESPACE,
                get_if_exists=True,
                lifetime="detached",
                num_cpus=0,
                max_restarts=-1,
                max_task_retries=-1,
            )
            .remote(self.key)
        )

    async def configure(self, rpm: float | None, tpm: float | None, burst_s: float) -> None:
        await resolve(self.actor.configure.remote(rpm, tpm, burst_s))

    async def borrow(self, requests: int, tokens: int) -> Grant:
        grant: Grant = await resolve(self.actor.borrow.remote(requests, tokens))
        return grant

    async def give_back(self, requests: int, tokens: int) -> None:
        await resolve(self.actor.give_back.remote(requests, tokens))

    async def pause(self, seconds: float) -> None:
        await resolve(self.actor.pause.remote(seconds))

    def statistics(self) -> dict[str, Any]:
        """What the keeper granted, got back and paused (a blocking call)."""
        stats: dict[str, Any] = ray.get(self.actor.statistics.remote())
        return stats
