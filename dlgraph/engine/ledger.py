"""Counts of calls, tokens, retries, errors and cache hits by node and phase, and the budget."""

from __future__ import annotations

import collections
from collections.abc import Mapping

import attrs

from dlgraph.backend import Backend, GenerateRequest, Request, Result
from dlgraph.engine.stage import Call
from dlgraph.errors import BackendError, BudgetExhausted

COUNTERS = ("calls", "tokens_in", "tokens_out", "retries", "errors", "cache_hits")


@attrs.frozen
class Usage:
    """Counts for one (node, phase), or totals."""

    calls: int = 0
    """Requests the backend answered or failed (retries included)."""
    tokens_in: int = 0
    tokens_out: int = 0
    retries: int = 0
    errors: int = 0
    cache_hits: int = 0

    @property
    def tokens(self) -> int:
        return self.tokens_in + self.tokens_out

    def __add__(self, other: Usage) -> Usage:
        return Usage(*(getattr(self, n) + getattr(other, n) for n in COUNTERS))


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

    @classmethod
    def from_json(cls, rows: list[dict[str, object]]) -> LedgerSnapshot:
        by_key = {
            (str(row["node"]), str(row["phase"])): Usage(*(int(row[n]) for n in COUNTERS))  # type: ignore[call-overload]
            for row in rows
        }
        return cls(by_key)


@attrs.frozen
class Budget:
    """Stop before spending more than this many backend calls or tokens (None: no limit)."""

    max_calls: int | None = None
    max_tokens: int | None = None


def _key(request: Request) -> tuple[str, str]:
    return (request.node or "", request.phase)


@attrs.define(eq=False)
class Ledger:
    """Mutable counts, written by the stages; `statistics()` gives a frozen snapshot."""

    budget: Budget = attrs.field(factory=Budget)
    _counts: dict[tuple[str, str], collections.Counter[str]] = attrs.field(
        factory=lambda: collections.defaultdict(collections.Counter), init=False
    )

    def add(self, request: Request, **counts: int) -> None:
        self._counts[_key(request)].update(counts)

    def restore(self, snapshot: LedgerSnapshot) -> None:
        """Start from earlier counts (a resumed run keeps its spending)."""
        for key, usage in snapshot.by_key.items():
            self._counts[key].update(attrs.asdict(usage))

    def statistics(self) -> LedgerSnapshot:
        return LedgerSnapshot(
            {key: Usage(*(counter[n] for n in COUNTERS)) for key, counter in self._counts.items()}
        )

    def check_budget(self) -> None:
        total = collections.Counter[str]()
        for counter in self._counts.values():
            total.update(counter)
        calls, tokens = total["calls"], total["tokens_in"] + total["tokens_out"]
        if self.budget.max_calls is not None and calls >= self.budget.max_calls:
            raise BudgetExhausted(f"call budget of {self.budget.max_calls} spent ({calls} calls)")
        if self.budget.max_tokens is not None and tokens >= self.budget.max_tokens:
            raise BudgetExhausted(f"token budget of {self.budget.max_tokens} spent ({tokens} tokens)")


def prompt_text(request: Request) -> str:
    return request.prompt if isinstance(request, GenerateRequest) else request.context + request.target


@attrs.define(eq=False)
class Metered:
    """Checks the budget before each backend call and counts the call after it."""

    inner: Call
    ledger: Ledger
    backend: Backend

    async def __call__(self, request: Request) -> Result:
        self.ledger.check_budget()
        tokens_in = self.backend.count_tokens(prompt_text(request))
        try:
            result = await self.inner(request)
        except BackendError:
            self.ledger.add(request, calls=1, errors=1, tokens_in=tokens_in)
            raise
        tokens_out = self.backend.count_tokens(result) if isinstance(result, str) else 0
        self.ledger.add(request, calls=1, tokens_in=tokens_in, tokens_out=tokens_out)
        return result
