"""One rate limit shared by engines in several processes: the engine's side.

A `GrantSource` owns an endpoint's request and token buckets and its 429 pause for everyone
who uses the endpoint (the plugin dlgraph-ray keeps them in a named Ray actor). An engine
does not ask it once per call: its `GrantPool` borrows allowance in blocks of about a tenth
of a second of the rate, spends it call by call with a local subtraction, and gives back what
it has not spent within `hold_s`, so the total sent never exceeds what the source granted and
allowance idle in one process is soon usable by another.

Why `hold_s` is half the burst: the source's bucket holds half the server's burst; a grant is
spent within `hold_s` of being issued or given back, so whatever the timing, the requests in
any window stay within the server's bucket (half its burst from the source, the rest covering
the time a grant may be held).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import anyio
import attrs

from dlgraph._entry_points import SHARED_LIMITS
from dlgraph._untrusted import excerpt
from dlgraph._validate import integer, number

BLOCK_S = 0.1
"""A borrowed block holds about this many seconds of the endpoint's rate."""


@attrs.frozen
class Grant:
    """What a source lent: whole requests and tokens, or nothing and how long to wait first
    (a pause after a 429, or the time the bucket needs to refill).

    Checked on construction: a grant comes from a plugin, and a fraction, a negative count or
    a NaN wait would otherwise reach the engine's bookkeeping and its sleeps unnoticed."""

    requests: int = attrs.field(validator=integer(0, none=False))
    tokens: int = attrs.field(validator=integer(0, none=False))
    wait_s: float = attrs.field(default=0.0, validator=number(0, none=False))


@runtime_checkable
class GrantSource(Protocol):
    """Where engines borrow an endpoint's allowance (implemented by plugins)."""

    async def configure(self, rpm: float | None, tpm: float | None, burst_s: float) -> None:
        """Declare the endpoint's limits; called once by every engine that opens."""

    async def borrow(self, requests: int, tokens: int) -> Grant:
        """Lend up to this much, all of it or nothing; never waits."""

    async def give_back(self, requests: int, tokens: int) -> None:
        """Return allowance not spent (`tokens` < 0 settles usage above the estimate)."""

    async def pause(self, seconds: float) -> None:
        """The server answered 429: nobody gets a grant for this long."""


def open_shared_limit(name: str, key: str, open: bool = True) -> GrantSource:
    """The shared limit plugin `name` (entry point group ``dlgraph.shared_limits``) for the
    endpoint `key` (engines with one key share one limit); with ``open=False``, only check
    that the plugin is installed and return a stand-in that grants nothing."""
    entry = SHARED_LIMITS.entry(name)
    if not open:
        return _Unopened()
    source = entry.load()(key)
    if not isinstance(source, GrantSource):
        raise TypeError(
            f"shared limit {excerpt(name)} built {type(source).__qualname__}, not a GrantSource"
        )
    return source


class _Unopened:
    """Stands in for a shared limit that a check did not open."""

    async def configure(self, rpm: float | None, tpm: float | None, burst_s: float) -> None:
        raise RuntimeError("this shared limit was only checked, not opened")

    async def borrow(self, requests: int, tokens: int) -> Grant:
        raise RuntimeError("this shared limit was only checked, not opened")

    async def give_back(self, requests: int, tokens: int) -> None:
        raise RuntimeError("this shared limit was only checked, not opened")

    async def pause(self, seconds: float) -> None:
        raise RuntimeError("this shared limit was only checked, not opened")


@attrs.define(eq=False)
class GrantPool:
    """The allowance one engine holds; used by its limiter, one borrower at a time."""

    source: GrantSource
    rpm: float | None
    tpm: float | None
    burst_s: float
    clock: Callable[[], float] = anyio.current_time
    requests: int = attrs.field(default=0, init=False)
    tokens: int = attrs.field(default=0, init=False)
    _since: float = attrs.field(default=-math.inf, init=False)
    """When the allowance held was borrowed: it is given back after `hold_s`."""
    _lock: anyio.Lock = attrs.field(factory=anyio.Lock, init=False)

    @property
    def hold_s(self) -> float:
        return self.burst_s / 2

    async def open(self) -> None:
        await self.source.configure(self.rpm, self.tpm, self.burst_s)

    def try_take(self, tokens: int) -> bool:
        """Spend from what is held, without waiting; False when it does not cover the call."""
        if self.clock() - self._since > self.hold_s:
            return False  # stale: `acquire` gives it back first
        if (self.rpm and self.requests < 1) or (self.tpm and self.tokens < tokens):
            return False
        if self.rpm:
            self.requests -= 1
        if self.tpm:
            self.tokens -= tokens
        return True

    async def acquire(self, tokens: int, waiting: int) -> float:
        """Spend one request and `tokens`, borrowing a block sized for the `waiting` calls
        when what is held does not cover it; returns 0 when spent, else seconds to wait."""
        async with self._lock:
            if self.try_take(tokens):
                return 0.0
            if self.clock() - self._since > self.hold_s:
                await self._give_back()
            want_requests = 0
            if self.rpm:
                block = max(1, math.floor(self.rpm / 60 * BLOCK_S))
                want_requests = max(0, min(block, waiting) - self.requests)
            want_tokens = 0
            if self.tpm:
                block = max(tokens, math.floor(self.tpm / 60 * BLOCK_S))
                want_tokens = max(0, min(block, tokens * waiting) - self.tokens)
            grant = await self.source.borrow(want_requests, want_tokens)
            if grant.requests or grant.tokens:
                if not (self.requests or self.tokens):
                    self._since = self.clock()
                self.requests += grant.requests
                self.tokens += grant.tokens
            if self.try_take(tokens):
                return 0.0
            return max(grant.wait_s, 0.001)

    def true_up(self, tokens: int) -> None:
        """The call used `tokens` fewer (or, below zero, more) than it was charged."""
        self.tokens += tokens

    async def rate_limited(self, pause_s: float) -> None:
        """A 429: what is held is void (the server did not count it as ours), and every
        engine on the endpoint waits."""
        async with self._lock:
            self.requests = 0
            self.tokens = min(self.tokens, 0)
            await self.source.pause(pause_s)

    async def _give_back(self) -> None:
        if self.requests or self.tokens:
            await self.source.give_back(self.requests, self.tokens)
        self.requests = self.tokens = 0
        self._since = -math.inf

    async def aclose(self) -> None:
        async with self._lock:
            await self._give_back()
