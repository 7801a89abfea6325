"""Value records of what calls cost: usage counts, prices, budgets and ledger snapshots."""

from __future__ import annotations

import collections
from collections.abc import Mapping

import attrs

from dlgraph._validate import integer, number

COUNTERS = (
    "calls",
    "http_requests",
    "tokens_in",
    "tokens_out",
    "retries",
    "rate_limited",
    "errors",
    "cache_hits",
)


@attrs.frozen
class Usage:
    """Counts for one (node, phase), or totals."""

    calls: int = 0
    """Model calls sent to the backend (each retry attempt included), counted when sent: a
    call cut short by a cancellation or a killed process was paid for all the same."""
    http_requests: int = 0
    """Backend requests: one multi-prompt request carries several calls."""
    tokens_in: int = 0
    tokens_out: int = 0
    retries: int = 0
    rate_limited: int = 0
    """Calls the server refused with 429."""
    errors: int = 0
    """Failed calls, transient ones included."""
    cache_hits: int = 0
    cost: float = 0.0
    """In the currency of the price table, when one is set."""

    @property
    def tokens(self) -> int:
        return self.tokens_in + self.tokens_out

    def __add__(self, other: Usage) -> Usage:
        return Usage(*(getattr(self, n) + getattr(other, n) for n in (*COUNTERS, "cost")))


@attrs.frozen
class Price:
    """Cost per million tokens, prompt and completion."""

    input_per_million: float = attrs.field(validator=number(0))
    output_per_million: float = attrs.field(default=0.0, validator=number(0))

    def cost(self, tokens_in: int, tokens_out: int) -> float:
        return (tokens_in * self.input_per_million + tokens_out * self.output_per_million) / 1e6


@attrs.frozen
class Budget:
    """Stop before spending more than this many backend calls or tokens (None: no limit)."""

    max_calls: int | None = attrs.field(default=None, validator=integer(1))
    max_tokens: int | None = attrs.field(default=None, validator=integer(1))


@attrs.frozen
class LedgerSnapshot:
    """A frozen copy of the ledger, readable after errors and cancellations."""

    by_key: Mapping[tuple[str, str], Usage]
    """Keyed by (node, phase); calls without a node use node ``""``."""

    @property
    def total(self) -> Usage:
        return sum(self.by_key.values(), Usage())

    def by_phase(self) -> dict[str, Usage]:
        phases: dict[str, Usage] = collections.defaultdict(Usage)
        for (_, phase), usage in self.by_key.items():
            phases[phase] = phases[phase] + usage
        return dict(phases)

    def to_json(self) -> list[dict[str, object]]:
        return [
            {"node": node, "phase": phase, **attrs.asdict(usage)}
            for (node, phase), usage in sorted(self.by_key.items())
        ]
