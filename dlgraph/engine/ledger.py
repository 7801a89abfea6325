"""Counts of calls, HTTP requests, tokens, retries, 429s, errors, cache hits and cost, by node
and phase; and the budget that stops spending."""

from __future__ import annotations

import collections
from collections.abc import Mapping

import attrs

from dlgraph.backend import (
    Backend,
    GenerateRequest,
    LogprobRequest,
    Request,
    collect_report,
    stop_collecting,
)
from dlgraph.engine.stage import Batch, Call, Outcome, Work, requests_of
from dlgraph.errors import BackendError, BudgetExhausted, RateLimited

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
    """Model calls answered or failed by the backend (each retry attempt included)."""
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

    input_per_million: float
    output_per_million: float = 0.0

    def cost(self, tokens_in: int, tokens_out: int) -> float:
        return (tokens_in * self.input_per_million + tokens_out * self.output_per_million) / 1e6


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


@attrs.frozen
class Budget:
    """Stop before spending more than this many backend calls or tokens (None: no limit)."""

    max_calls: int | None = None
    max_tokens: int | None = None


def _key(request: Work) -> tuple[str, str]:
    return (request.node or "", request.phase)


@attrs.define(eq=False)
class Ledger:
    """Mutable counts, written by the stages; `statistics()` gives a frozen snapshot."""

    budget: Budget = attrs.field(factory=Budget)
    price: Price | None = None
    _counts: dict[tuple[str, str], collections.Counter[str]] = attrs.field(
        factory=lambda: collections.defaultdict(collections.Counter), init=False
    )
    _calls: int = attrs.field(default=0, init=False)
    _tokens: int = attrs.field(default=0, init=False)
    _reserved: int = attrs.field(default=0, init=False)
    """Calls in flight, counted against the budget before they finish."""

    def add(self, request: Work, **counts: int) -> None:
        counter = self._counts[_key(request)]
        for name, value in counts.items():
            counter[name] += value
        self._calls += counts.get("calls", 0)
        self._tokens += counts.get("tokens_in", 0) + counts.get("tokens_out", 0)

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


def prompt_text(request: Request) -> str:
    if isinstance(request, GenerateRequest):
        return request.prompt
    if isinstance(request, LogprobRequest):
        return request.context + request.target
    return request.context


def estimated_tokens(backend: Backend, work: Work) -> tuple[int, int]:
    """(prompt tokens, tokens reserved for the answer) before the call: what rate limits charge."""
    if not isinstance(work, Batch):
        return backend.count_tokens(prompt_text(work)), work.max_tokens if isinstance(
            work, GenerateRequest
        ) else 0
    prompt = answer = 0
    for request in work.requests:
        prompt += backend.count_tokens(prompt_text(request))
        answer += request.max_tokens if isinstance(request, GenerateRequest) else 0
    return prompt, answer


@attrs.define(eq=False)
class Metered:
    """Checks the budget before each backend call and counts the call after it, with the
    token usage the backend reports when it does, else estimated."""

    inner: Call
    ledger: Ledger
    backend: Backend

    async def __call__(self, work: Work) -> Outcome:
        requests = requests_of(work)
        self.ledger.reserve(len(requests))
        box, token = collect_report()
        try:
            result = await self.inner(work)
        except BackendError as error:
            self._count(work, box.prompt_tokens, 0, failed=error)
            raise
        finally:
            stop_collecting(token)
            self.ledger.release(len(requests))
        texts: list[object] = list(result) if isinstance(result, list) else [result]
        completion = box.completion_tokens
        if completion is None:
            completion = sum(
                self.backend.count_tokens(text) for text in texts if isinstance(text, str)
            )
        self._count(work, box.prompt_tokens, completion)
        return result

    def _count(
        self,
        work: Work,
        prompt_tokens: int | None,
        completion_tokens: int,
        failed: BackendError | None = None,
    ) -> None:
        requests = requests_of(work)
        if prompt_tokens is None:
            prompt_tokens = estimated_tokens(self.backend, work)[0]
        share_in, share_out = prompt_tokens // len(requests), completion_tokens // len(requests)
        for index, request in enumerate(requests):
            self.ledger.add(
                request,
                calls=1,
                http_requests=1 if index == 0 else 0,
                tokens_in=share_in,
                tokens_out=share_out,
                errors=1 if failed else 0,
                rate_limited=1 if isinstance(failed, RateLimited) else 0,
            )
