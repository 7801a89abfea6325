"""The Engine: every model call of dlgraph goes through it.

Per backend, a request passes ``cache -> single-flight -> limiter -> retry -> metered ->
backend``. The chain is built once in ``__aenter__``; each stage knows only its ``inner``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Self

import anyio
import anyio.abc
import attrs

from dlgraph.backend import Backend, GenerateRequest, LogprobRequest, Request, Result
from dlgraph.engine.cache import Cache
from dlgraph.engine.ledger import Budget, Ledger, LedgerSnapshot, Metered
from dlgraph.engine.limiter import Limiter
from dlgraph.engine.retry import Retry, RetryPolicy
from dlgraph.engine.single_flight import SingleFlight
from dlgraph.engine.stage import BackendCall, Call, request_key
from dlgraph._tasks import map_concurrently, single_errors
from dlgraph.errors import tagged
from dlgraph.scoring import logsumexp, normalize_log_scores, verbalizers


@attrs.define(eq=False)
class Engine:
    """Runs model calls for a backend: cached, de-duplicated, limited, retried, counted.

    Use as ``async with Engine(backend) as engine``; leaving the block cancels shared work,
    waits for it and closes the backend. Public coroutines raise BackendError subclasses
    tagged with the asking node and phase, or BudgetExhausted.
    """

    backend: Backend
    rpm: float | None = attrs.field(default=None, kw_only=True)
    tpm: float | None = attrs.field(default=None, kw_only=True)
    max_concurrency: int | None = attrs.field(default=None, kw_only=True)
    cache: bool = attrs.field(default=True, kw_only=True)
    budget: Budget = attrs.field(factory=Budget, kw_only=True)
    retry: RetryPolicy = attrs.field(factory=RetryPolicy, kw_only=True)
    ledger: Ledger = attrs.field(init=False)
    _chain: Call | None = attrs.field(default=None, init=False)
    _exit_stack: AsyncExitStack | None = attrs.field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        self.ledger = Ledger(self.budget)

    async def __aenter__(self) -> Self:
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(self.backend)
            task_group = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(task_group.cancel_scope.cancel)
            self._chain = self._build_chain(task_group)
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

    def _build_chain(self, task_group: anyio.abc.TaskGroup) -> Call:
        limit = min(
            self.max_concurrency or math.inf, self.backend.capabilities.max_concurrency or math.inf
        )
        capacity = anyio.CapacityLimiter(64 if limit == math.inf else limit)

        def key(request: Request) -> tuple[object, ...]:
            return request_key(self.backend.identity, request)

        chain: Call = BackendCall(self.backend)
        chain = Metered(chain, self.ledger, self.backend)
        chain = Retry(chain, self.ledger, self.retry, jitter=random.Random(0))
        chain = Limiter(chain, capacity)
        chain = SingleFlight(chain, key, task_group)
        if self.cache:
            chain = Cache(chain, key, self.ledger)
        return chain

    async def request(self, request: Request) -> Result:
        if self._chain is None:
            raise RuntimeError("use the engine inside 'async with Engine(...) as engine'")
        with tagged(request.node, request.phase):
            return await self._chain(request)

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
    ) -> str:
        request = GenerateRequest(
            prompt, max_tokens=max_tokens, temperature=temperature, stop=tuple(stop),
            seed=seed, node=node, phase=phase,
        )
        result = await self.request(request)
        assert isinstance(result, str)
        return result

    async def logprob(
        self, context: str, target: str, *, node: str | None = None, phase: str = "score"
    ) -> float:
        result = await self.request(LogprobRequest(context, target, node=node, phase=phase))
        assert isinstance(result, float | int)
        return float(result)

    async def classify(
        self, context: str, classes: Sequence[str], *, node: str | None = None, phase: str = "score"
    ) -> list[float]:
        """P(class | context) for ``"yes|Yes"``-style class specs, in the order given.

        A class's score is the summed probability of its verbalizers, each after a space.
        """
        specs = list(classes)
        words = [(c, word) for c, spec in enumerate(specs) for word in verbalizers(spec)]
        scores = await map_concurrently(
            lambda pair: self.logprob(context, " " + pair[1], node=node, phase=phase), words
        )
        per_class = [
            logsumexp([s for (c, _), s in zip(words, scores, strict=True) if c == index])
            for index in range(len(specs))
        ]
        return normalize_log_scores(per_class)

    def statistics(self) -> LedgerSnapshot:
        return self.ledger.statistics()
