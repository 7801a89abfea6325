"""A token bucket: allowance that refills at a steady rate up to a capacity (the burst).

The engine's limiter keeps one for requests and one for tokens; a shared limit (dlgraph-ray's
keeper) keeps the same for every process of an endpoint. Time is the owner's clock, in
seconds; the level may go below zero (a call that cost more than it was charged is a debt
the refill pays first) but never above the capacity.
"""

from __future__ import annotations

import attrs


@attrs.define
class TokenBucket:
    rate_per_s: float
    capacity: float
    _level: float = attrs.field(alias="level")
    updated: float
    """When the level was last brought up to date (`refill`)."""

    @classmethod
    def per_minute(cls, limit: float, burst_s: float, now: float) -> TokenBucket:
        """A full bucket for `limit` per minute holding `burst_s` seconds of it (at least 1)."""
        capacity = max(1.0, limit / 60.0 * burst_s)
        return cls(limit / 60.0, capacity, capacity, now)

    @property
    def level(self) -> float:
        """The allowance held at the last `refill` less what was taken since."""
        return self._level

    def refill(self, now: float) -> None:
        self._level = min(self.capacity, self._level + (now - self.updated) * self.rate_per_s)
        self.updated = now

    def wait_s(self, cost: float, now: float) -> float:
        """Seconds until `cost` fits (a cost above capacity waits for a full bucket, then borrows)."""
        self.refill(now)
        needed = min(cost, self.capacity)
        return 0.0 if self._level >= needed else (needed - self._level) / self.rate_per_s

    def take(self, cost: float) -> None:
        self._level -= cost

    def add(self, amount: float) -> None:
        """Give back `amount` (below zero: take it), never above the capacity."""
        self._level = min(self.capacity, self._level + amount)

    def cap(self, most: float, now: float) -> None:
        """Hold at most `most` from `now` on (the server says no more remains)."""
        self.refill(now)
        self._level = min(self._level, most)

    def empty(self, now: float) -> None:
        """Hold nothing from `now` on; a debt stays."""
        self.cap(0.0, now)
