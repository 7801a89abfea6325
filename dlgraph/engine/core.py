"""The Engine: every model call of dlgraph goes through it.

Per backend, a call passes ``cache -> single-flight -> coalescer -> split -> retry ->
limiter -> metered -> backend``. The chain is built once in ``__aenter__``; each stage knows
only its ``inner``. Each retry attempt passes the limiter, because each costs the server.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Self

import anyio
import anyio.abc
import attrs

from dlgraph._tasks import map_concurrently, single_errors
from dlgraph.backend import (
    Backend,
    GenerateRequest,
    LogprobRequest,
    Request,
    Result,
    TopLogprobsRequest,
    as_strings,
)
from dlgraph.engine.cache import Cache, Store, open_store
from dlgraph.engine.coalescer import Coalescer, Split
from dlgraph.engine.ledger import Budget, Ledger, LedgerSnapshot, Metered, Price, estimated_tokens
from dlgraph.engine.limiter import Limiter, LimiterStatistics, RateLimits
from dlgraph.engine.retry import Retry, RetryPolicy
from dlgraph.engine.single_flight import SingleFlight
from dlgraph.engine.stage import BackendCall, Batch, Call, Work, request_key
from dlgraph.engine.workers import Workers
from dlgraph.errors import BackendError, tag
from dlgraph.scoring import logsumexp, matching_class, normalize_log_scores, verbalizers

FLOOR_LOGPROB = -20.0
"""Log-probability given to a class missing from every source (top log-probs, generation)."""


@attrs.define(eq=False)
class Engine:
    """Runs model calls for a backend: cached, de-duplicated, coalesced, rate limited,
    retried and counted.

    Use as ``async with Engine(backend) as engine``; leaving the block cancels shared work,
    waits for it and closes the backend. Public coroutines raise BackendError subclasses
    tagged with the asking node and phase, or BudgetExhausted.

    `cache` is True (in memory), a path (SQLite, shared across runs) or False.
    `coalesce_ms` is how long a request waits for companions to share one multi-prompt
    request, when the backend takes several: by default 10 ms when `rpm` is set (each request
    then carries many calls), else 0 (never).
    """

    backend: Backend
    rpm: float | None = attrs.field(default=None, kw_only=True)
    tpm: float | None = attrs.field(default=None, kw_only=True)
    max_concurrency: int | None = attrs.field(default=None, kw_only=True)
    cache: bool | str | os.PathLike[str] = attrs.field(default=True, kw_only=True)
    budget: Budget = attrs.field(factory=Budget, kw_only=True)
    retry: RetryPolicy = attrs.field(factory=RetryPolicy, kw_only=True)
    coalesce_ms: float | None = attrs.field(default=None, kw_only=True)
    """None: the engine's default (see above); 0: off."""
    price: Price | Mapping[str, Price] | None = attrs.field(default=None, kw_only=True)
    """Cost per million tokens, or a table of them by backend identity."""
    clock: Callable[[], float] = attrs.field(default=anyio.current_time, kw_only=True)
    sleep: Callable[[float], Awaitable[None]] = attrs.field(default=anyio.sleep, kw_only=True)
    seed: int = attrs.field(default=0, kw_only=True)
    """Seeds the jitter of retries and pauses."""
    ledger: Ledger = attrs.field(init=False)
    _chain: Call | None = attrs.field(default=None, init=False)
    _limiter: Limiter | None = attrs.field(default=None, init=False)
    _exit_stack: AsyncExitStack | None = attrs.field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        price = (
            self.price.get(self.backend.identity) if isinstance(self.price, Mapping) else self.price
        )
        self.ledger = Ledger(self.budget, price)

    async def __aenter__(self) -> Self:
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(self.backend)
            store = open_store(self.cache)
            if store is not None:
                stack.callback(store.close)
            task_group = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(task_group.cancel_scope.cancel)
            self._chain = self._build_chain(task_group, store)
            self._exit_stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        stack, self._exit_stack, self._chain = self._exit_stack, None, None
        if stack is not None:
            with single_errors():
                await stack.__aexit__(exc_type, exc, traceback)

    def _build_chain(self, task_group: anyio.abc.TaskGroup, store: Store | None) -> Call:
        jitter = random.Random(self.seed)

        def key(work: Work) -> tuple[object, ...]:
            assert not isinstance(work, Batch), "keys are taken above the coalescer"
            return request_key(self.backend.identity, work)

        limits = RateLimits(self.rpm, self.tpm, self.max_concurrency)
        chain: Call = BackendCall(self.backend)
        chain = Metered(chain, self.ledger, self.backend)
        chain = self._limiter = Limiter(
            chain, self.backend, limits, clock=self.clock, sleep=self.sleep, jitter=jitter
        )
        chain = Retry(chain, self.ledger, self.retry, sleep=self.sleep, jitter=jitter)
        window_ms = (
            self.coalesce_ms if self.coalesce_ms is not None else (10.0 if self.rpm else 0.0)
        )
        max_batch = self.backend.capabilities.max_batch if window_ms > 0 else 1
        if max_batch > 1:
            chain = Split(chain)
            chain = Coalescer(
                chain,
                task_group,
                max_batch,
                window_ms / 1000.0,
                sleep=self.sleep,
                max_tokens=int(self.tpm / 60 * limits.burst_s / 4) if self.tpm else None,
                count_tokens=lambda work: sum(estimated_tokens(self.backend, work)),
            )
        chain = SingleFlight(chain, key, Workers(task_group))
        if store is not None:
            chain = Cache(chain, key, self.ledger, store)
        return chain

    async def request(self, request: Request) -> Result:
        """Send one request through the pipeline."""
        if self._chain is None:
            raise RuntimeError("use the engine inside 'async with Engine(...) as engine'")
        try:
            result = await self._chain(request)
        except BackendError as error:
            tag(error, request.node, request.phase)
            raise
        assert not isinstance(result, list)
        return result

    async def generate(
        self,
        prompt: str,
        *,
        max_tokens: int = 128,
        temperature: float = 0.0,
        stop: Sequence[str] = (),
        seed: int = 0,
        node: str | None = None,
        phase: str = "forward",
        priority: int = 0,
    ) -> str:
        request = GenerateRequest(
            prompt,
            max_tokens=max_tokens,
            temperature=temperature,
            stop=as_strings(stop),
            seed=seed,
            node=node,
            phase=phase,
            priority=priority,
        )
        result = await self.request(request)
        assert isinstance(result, str)
        return result

    async def logprob(
        self,
        context: str,
        target: str,
        *,
        node: str | None = None,
        phase: str = "score",
        priority: int = 0,
    ) -> float:
        result = await self.request(
            LogprobRequest(context, target, node=node, phase=phase, priority=priority)
        )
        assert isinstance(result, float | int)
        return float(result)

    async def classify(
        self,
        context: str,
        classes: Sequence[str],
        *,
        node: str | None = None,
        phase: str = "score",
        priority: int = 0,
    ) -> list[float]:
        """P(class | context) for ``"yes|Yes"``-style class specs, in the order given.

        Uses the best the backend offers: exact log-probs of every verbalizer (after a space),
        else the first token's top log-probs (a class missing there gets the floor), else
        one greedy generation mapped to a class.
        """
        specs = list(classes)
        strategy = self.backend.capabilities.classification
        if strategy == "logprob":
            words = [(c, word) for c, spec in enumerate(specs) for word in verbalizers(spec)]
            scores = await map_concurrently(
                lambda pair: self.logprob(
                    context, " " + pair[1], node=node, phase=phase, priority=priority
                ),
                words,
            )
            per_class = [
                logsumexp(
                    [s for (c, _), s in zip(words, scores, strict=True) if c == index]
                    or [-math.inf]
                )
                for index in range(len(specs))
            ]
        elif strategy == "top_logprobs":
            count = self.backend.capabilities.top_logprobs
            request = TopLogprobsRequest(
                context, count=count, node=node, phase=phase, priority=priority
            )
            top = await self.request(request)
            assert isinstance(top, dict)
            per_class = [_class_score(spec, top) for spec in specs]
        else:
            text = await self.generate(
                context, max_tokens=8, node=node, phase=phase, priority=priority
            )
            found = matching_class(text, specs)
            per_class = [0.0 if found == verbalizers(spec)[0] else FLOOR_LOGPROB for spec in specs]
        return normalize_log_scores(per_class)

    def statistics(self) -> LedgerSnapshot:
        return self.ledger.statistics()

    def limiter_statistics(self) -> LimiterStatistics | None:
        return self._limiter.statistics() if self._limiter else None


def _class_score(spec: str, top: Mapping[str, float]) -> float:
    """Log of the summed probability of a class's verbalizers among first-token alternatives."""
    words = {word.strip().lower() for word in verbalizers(spec)}
    found = [lp for token, lp in top.items() if token.strip().lower() in words]
    return logsumexp(found) if found else min([FLOOR_LOGPROB, *top.values()])
