"""The ledger: what the engine spent, by node and phase, and the budget that stops spending."""

from __future__ import annotations

import collections
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Protocol

import attrs

from dlgraph.backend import Request
from dlgraph.engine.journal import Journal
from dlgraph.engine.stage import Work, requests_of
from dlgraph.engine.usage import COUNTERS, Budget, LedgerSnapshot, Price, Usage
from dlgraph.errors import BackendError, BudgetExhausted

Charge = tuple[Request, Mapping[str, int]]


class Listener(Protocol):
    """Told of every count as it is added (the tracing stage is one)."""

    def counted(
        self, request: Request, counts: Mapping[str, int], error: BackendError | None
    ) -> None: ...

    def alias(self, derived: Request, original: Request) -> None:
        """From now on, `derived`'s counts are `original`'s."""

    def unalias(self, derived: Request) -> None:
        """`derived` is answered: its counts are its own again."""


@attrs.define(eq=False)
class Ledger:
    """Mutable counts, written by the stages; `statistics()` gives a frozen snapshot.

    Counts are kept per request, each under its own (node, phase): a coalesced batch may carry
    requests of several nodes and phases, and each is charged for what happened to it. With a
    journal attached, every charge is appended to it before it is counted here, and the counts
    start from what the journal holds (the calls of earlier processes of the same run).
    """

    budget: Budget = attrs.field(factory=Budget)
    price: Price | None = None
    listener: Listener | None = attrs.field(default=None, kw_only=True)
    _counts: dict[tuple[str, str], collections.Counter[str]] = attrs.field(
        factory=lambda: collections.defaultdict(collections.Counter), init=False
    )
    _calls: int = attrs.field(default=0, init=False)
    _tokens: int = attrs.field(default=0, init=False)
    _journal: Journal | None = attrs.field(default=None, init=False)

    def attach(self, journal: Journal) -> None:
        """Count from what `journal` holds, and record every charge in it from now on."""
        self._counts = collections.defaultdict(collections.Counter)
        for key, counter in journal.counts.items():
            self._counts[key].update(counter)
        totals = sum(self._counts.values(), collections.Counter[str]())
        self._calls = totals["calls"]
        self._tokens = totals["tokens_in"] + totals["tokens_out"]
        self._journal = journal

    def detach(self) -> None:
        self._journal = None

    def add(self, work: Work, **counts: int) -> None:
        """Add `counts` to every request that `work` carries."""
        self.charge([(request, counts) for request in requests_of(work)])

    def charge(self, charges: Sequence[Charge], error: BackendError | None = None) -> None:
        """Add each request's counts (journalled first, in one write); `error` is the failure
        of the attempt charged, if it failed (told to the listener, not kept)."""
        if self._journal is not None:
            self._journal.record([(r.node or "", r.phase, counts) for r, counts in charges])
        for request, counts in charges:
            counter = self._counts[(request.node or "", request.phase)]
            for name, value in counts.items():
                counter[name] += value
            self._calls += counts.get("calls", 0)
            self._tokens += counts.get("tokens_in", 0) + counts.get("tokens_out", 0)
            if self.listener is not None:
                self.listener.counted(request, counts, error)

    @contextmanager
    def sent_for(self, original: Request, derived: Request) -> Iterator[None]:
        """While `derived`, a part of `original` sent in its place (a cache's rest, a split's
        piece), is in flight, what it is charged is told to the listener as `original`'s;
        the ledger's own counts go by node and phase, which the two share."""
        listener = self.listener
        if listener is None or derived is original:
            yield
            return
        listener.alias(derived, original)
        try:
            yield
        finally:
            listener.unalias(derived)

    def start(self, work: Work) -> None:
        """Charge the calls `work` carries before they are sent (one HTTP request, to the
        first), or raise BudgetExhausted: a call sent is paid for, whether its answer
        arrives or its process is killed first."""
        requests = requests_of(work)
        budget = self.budget
        if budget.max_calls is not None and self._calls + len(requests) > budget.max_calls:
            raise BudgetExhausted(f"call budget of {budget.max_calls} spent ({self._calls} calls)")
        if budget.max_tokens is not None and self._tokens >= budget.max_tokens:
            raise BudgetExhausted(
                f"token budget of {budget.max_tokens} spent ({self._tokens} tokens)"
            )
        self.charge(
            [
                (request, {"calls": 1, "http_requests": 1 if index == 0 else 0})
                for index, request in enumerate(requests)
            ]
        )

    def statistics(self) -> LedgerSnapshot:
        def usage(counter: collections.Counter[str]) -> Usage:
            cost = (
                self.price.cost(counter["tokens_in"], counter["tokens_out"]) if self.price else 0.0
            )
            return Usage(**{name: counter[name] for name in COUNTERS}, cost=cost)

        return LedgerSnapshot({key: usage(counter) for key, counter in self._counts.items()})
