"""The ledger: what the engine spent, by node and phase, and the budget that stops spending."""

from __future__ import annotations

import collections
from collections.abc import Mapping
from typing import Protocol

import attrs

from dlgraph.backend import Request
from dlgraph.engine.stage import Work, requests_of
from dlgraph.engine.usage import COUNTERS, Budget, LedgerSnapshot, Price, Usage
from dlgraph.errors import BackendError, BudgetExhausted


class Listener(Protocol):
    """Told of every count as it is added (the tracing stage is one)."""

    def counted(
        self, request: Request, counts: Mapping[str, int], error: BackendError | None
    ) -> None: ...


@attrs.define(eq=False)
class Ledger:
    """Mutable counts, written by the stages; `statistics()` gives a frozen snapshot.

    Counts are kept per request, each under its own (node, phase): a coalesced batch may carry
    requests of several nodes and phases, and each is charged for what happened to it.
    """

    budget: Budget = attrs.field(factory=Budget)
    price: Price | None = None
    listener: Listener | None = attrs.field(default=None, kw_only=True)
    _counts: dict[tuple[str, str], collections.Counter[str]] = attrs.field(
        factory=lambda: collections.defaultdict(collections.Counter), init=False
    )
    _calls: int = attrs.field(default=0, init=False)
    _tokens: int = attrs.field(default=0, init=False)
    _reserved: int = attrs.field(default=0, init=False)
    """Calls in flight, counted against the budget before they finish."""

    def add(self, work: Work, *, error: BackendError | None = None, **counts: int) -> None:
        """Add `counts` to every request that `work` carries; `error` is the failure of the
        attempt counted, if it failed (told to the listener, not kept)."""
        for request in requests_of(work):
            counter = self._counts[(request.node or "", request.phase)]
            for name, value in counts.items():
                counter[name] += value
            self._calls += counts.get("calls", 0)
            self._tokens += counts.get("tokens_in", 0) + counts.get("tokens_out", 0)
            if self.listener is not None:
                self.listener.counted(request, counts, error)

    def statistics(self) -> LedgerSnapshot:
        def usage(counter: collections.Counter[str]) -> Usage:
            cost = (
                self.price.cost(counter["tokens_in"], counter["tokens_out"]) if self.price else 0.0
            )
            return Usage(**{name: counter[name] for name in COUNTERS}, cost=cost)

        return LedgerSnapshot({key: usage(counter) for key, counter in self._counts.items()})

    def reserve(self, calls: int) -> None:
        """Claim `calls` calls of the budget, or raise BudgetExhausted (calls in flight count)."""
        budget = self.budget
        spent = self._calls + self._reserved
        if budget.max_calls is not None and spent + calls > budget.max_calls:
            raise BudgetExhausted(f"call budget of {budget.max_calls} spent ({spent} calls)")
        if budget.max_tokens is not None and self._tokens >= budget.max_tokens:
            raise BudgetExhausted(
                f"token budget of {budget.max_tokens} spent ({self._tokens} tokens)"
            )
        self._reserved += calls

    def release(self, calls: int) -> None:
        self._reserved -= calls
