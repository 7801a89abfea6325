"""The Engine: every model call of dlgraph goes through it.

Per backend a call passes these stages, outermost first::

    cache -> single-flight -> coalescer -> split -> retry -> limiter -> metered -> backend

* cache: answers by key (backend identity, every sampling field, text, seed), in memory or
  SQLite, so that a re-run or a resumed run repeats no call;
* single-flight: identical requests in flight share one call, run in the engine's task group
  so that one caller's cancellation never cancels what others await;
* coalescer: compatible requests arriving within a window go out as one multi-prompt request;
* split: a request of several prompts, choices or continuations that the server refuses is
  halved until it is taken or one part fails alone;
* retry: transient failures are tried again with backoff under one deadline;
* limiter: request and token buckets, one shared pause on 429, adaptive concurrency;
* metered: the budget check, and the ledger of calls, tokens, retries and errors (a call is
  charged when sent; with a `journal`, every charge is also appended to a file at once);
* backend: the plugin, asked by `BackendCall` to handle the work; its `Reply` carries the
  usage the plugin's answer (or error) carried.

When the engine traces, one more stage sits on top of the cache: one span per call, opened in
the caller's task (so under the caller's span), told by the ledger what happened below
(`dlgraph.engine.tracing`). When it does not, the chain is exactly the one above.

Retry sits outside the limiter on purpose: each attempt costs the server a request, so each
waits for its turn in the buckets, and one 429 pauses the retries of every call at once rather
than each call sleeping on its own schedule. Split sits outside retry, so a batch that fails
transiently is retried whole and only a refused one is halved. The chain is built once on
entering the engine; each stage knows only its ``inner``.
"""

from __future__ import annotations

import os
import random
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Mapping,
    Sequence,
)
from contextlib import asynccontextmanager
from typing import Any, Literal, Self

import anyio
import anyio.abc
import anyio.to_thread
import attrs

from dlgraph._tasks import single_errors
from dlgraph._untrusted import excerpt
from dlgraph._validate import (
    check_int,
    check_number,
    check_path,
    class_strings,
    file_path,
    function,
    instance_of,
    integer,
    strings,
)
from dlgraph.backend import (
    Backend,
    GenerateRequest,
    LogprobRequest,
    Phase,
    Request,
    Result,
)
from dlgraph.engine.cache import Cache, Store, open_store
from dlgraph.engine.classify import ClassQuery, Query, class_distribution, continuation_scores
from dlgraph.engine.coalescer import Coalescer, Split
from dlgraph.engine.journal import Journal
from dlgraph.engine.ledger import Ledger
from dlgraph.engine.limiter import Limiter, RateLimits, concurrency_ceiling, per_minute
from dlgraph.engine.metered import Metered
from dlgraph.engine.retry import Retry, RetryPolicy
from dlgraph.engine.samples import MAX_DRAWN, draw_samples
from dlgraph.engine.shared import GrantPool, GrantSource
from dlgraph.engine.single_flight import SingleFlight
from dlgraph.engine.spans import OFF, Tracer
from dlgraph.engine.stage import BackendCall, Batch, Call, Work, request_key
from dlgraph.engine.tokens import estimated_tokens
from dlgraph.engine.tracing import TracingSetting, check_setting, open_tracer
from dlgraph.engine.usage import Budget, LedgerSnapshot, Price
from dlgraph.engine.workers import Workers
from dlgraph.errors import BackendError, tag
from dlgraph.scoring import verbalizers

DEFAULT_COALESCE_MS = 10.0
"""The coalescing window under an rpm limit, where each request then carries many calls."""


MAX_COALESCE_MS = 60_000
"""A coalescing window longer than a minute holds every call back that long: a typo."""


def _coalesce_ms(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value != "auto" and check_number(attribute.name, value, 0) > MAX_COALESCE_MS:
        raise ValueError(
            f"coalesce_ms must be at most {MAX_COALESCE_MS:,} (a minute), got {value:g}"
        )


def _cache(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, bool | str | os.PathLike):
        raise TypeError(f"cache: expected true, false or a file path, got {excerpt(value)}")
    if not isinstance(value, bool):
        check_path("cache", value)


def _price(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    prices = value.values() if isinstance(value, Mapping) else [value]
    if value is not None and not all(isinstance(price, Price) for price in prices):
        raise TypeError(
            f"price: expected a dg.Price or a table of them by backend identity, "
            f"got {excerpt(value)}"
        )


@attrs.define(eq=False, slots=False)
class Engine(anyio.AsyncContextManagerMixin):
    """Runs model calls for a backend: cached, de-duplicated, coalesced, rate limited,
    retried and counted.

    Use as ``async with Engine(backend) as engine``; leaving the block cancels shared work,
    waits for it and closes the backend. Public coroutines raise BackendError subclasses
    tagged with the asking node and phase, or BudgetExhausted.

    Rate limits are the keywords `rpm`, `tpm` and `max_concurrency`, or one `limits` record
    (which also holds the burst and pause settings). `cache` is True (in memory), a path
    (SQLite, shared across runs) or False. `shared_limit` is a `GrantSource` through which
    engines in other processes share the endpoint's `rpm`/`tpm` and its 429 pause (dlgraph-ray's
    ``SharedLimit``). `coalesce_ms` is how long a request waits for
    companions to share one multi-prompt request, when the backend takes several: ``"auto"``
    is 10 ms under an `rpm` limit (each request then carries many calls) and 0 (never)
    without one. `tracing` is ``"auto"`` (spans when the application has set an OpenTelemetry
    tracer provider), a `Tracing` record, or False (see `dlgraph.engine.tracing`).
    """

    backend: Backend = attrs.field(
        validator=instance_of(Backend, "a dg.Backend (such as dg.connect returns)")
    )
    rpm: float | None = attrs.field(default=None, kw_only=True, validator=per_minute)
    tpm: float | None = attrs.field(default=None, kw_only=True, validator=per_minute)
    max_concurrency: int | None = attrs.field(default=None, kw_only=True, validator=integer(1))
    limits: RateLimits = attrs.field(
        kw_only=True,
        validator=instance_of(RateLimits, "a dg.RateLimits"),
        default=attrs.Factory(
            lambda self: RateLimits(
                rpm=self.rpm, tpm=self.tpm, max_concurrency=self.max_concurrency
            ),
            takes_self=True,
        ),
    )
    cache: bool | str | os.PathLike[str] = attrs.field(default=True, kw_only=True, validator=_cache)
    budget: Budget = attrs.field(
        factory=Budget, kw_only=True, validator=instance_of(Budget, "a dg.Budget")
    )
    retry: RetryPolicy = attrs.field(
        factory=RetryPolicy, kw_only=True, validator=instance_of(RetryPolicy, "a dg.RetryPolicy")
    )
    coalesce_ms: float | Literal["auto"] = attrs.field(
        default="auto", kw_only=True, validator=_coalesce_ms
    )
    price: Price | Mapping[str, Price] | None = attrs.field(
        default=None, kw_only=True, validator=_price
    )
    """Cost per million tokens, or a table of them by backend identity."""
    clock: Callable[[], float] = attrs.field(
        default=anyio.current_time, kw_only=True, validator=function
    )
    sleep: Callable[[float], Awaitable[None]] = attrs.field(
        default=anyio.sleep, kw_only=True, validator=function
    )
    seed: int = attrs.field(default=0, kw_only=True, validator=integer())
    """Seeds the jitter of retries and pauses."""
    shared_limit: GrantSource | None = attrs.field(default=None, kw_only=True)
    journal: str | os.PathLike[str] | None = attrs.field(
        default=None, kw_only=True, validator=file_path
    )
    """A file where every call is recorded as it is sent (see `dlgraph.engine.journal`): an
    engine opened on one counts the calls of earlier processes in its statistics and budget."""
    tracing: TracingSetting = attrs.field(default="auto", kw_only=True, validator=check_setting)
    ledger: Ledger = attrs.field(init=False)
    _chain: Call | None = attrs.field(default=None, init=False)
    _tracer: Tracer = attrs.field(default=OFF, init=False)

    def __attrs_post_init__(self) -> None:
        keywords = (self.rpm, self.tpm, self.max_concurrency)
        limits = self.limits
        if any(value is not None for value in keywords) and keywords != (
            limits.rpm,
            limits.tpm,
            limits.max_concurrency,
        ):
            raise ValueError("give rpm, tpm and max_concurrency as keywords or in limits, not both")
        self.rpm, self.tpm, self.max_concurrency = limits.rpm, limits.tpm, limits.max_concurrency
        if self.shared_limit is not None:
            if not isinstance(self.shared_limit, GrantSource):
                raise TypeError(
                    f"shared_limit: expected a GrantSource, got {excerpt(self.shared_limit)}"
                )
            if not (limits.rpm or limits.tpm):
                raise ValueError("shared_limit: give the endpoint's rpm or tpm to share")
        price = (
            self.price.get(self.backend.identity) if isinstance(self.price, Mapping) else self.price
        )
        self.ledger = Ledger(self.budget, price)

    @asynccontextmanager
    async def __asynccontextmanager__(self) -> AsyncGenerator[Self]:
        with single_errors():
            async with self._journalled():
                store = await open_store(self.cache)
                pool = None
                if self.shared_limit is not None:
                    limits = self.limits
                    pool = GrantPool(
                        self.shared_limit, limits.rpm, limits.tpm, limits.burst_s, clock=self.clock
                    )
                try:
                    if pool is not None:
                        await pool.open()
                    self._tracer = open_tracer(self.tracing)
                    async with self.backend, anyio.create_task_group() as task_group:
                        self._chain = self._build_chain(task_group, store, pool)
                        try:
                            yield self
                        finally:
                            self._chain = None
                            task_group.cancel_scope.cancel()
                finally:
                    self._tracer, self.ledger.listener = OFF, None
                    if pool is not None:
                        with anyio.CancelScope(shield=True):
                            await pool.aclose()
                    if store is not None:
                        with anyio.CancelScope(shield=True):
                            await store.aclose()

    @asynccontextmanager
    async def _journalled(self) -> AsyncIterator[None]:
        """The ledger continues from the journal and records in it while the engine is open.
        Opening reads the whole journal, in a worker thread; a charge is then one small write
        on the event loop (a thread hop would cost more than the write)."""
        if self.journal is None:
            yield
            return
        journal = await anyio.to_thread.run_sync(Journal.open, self.journal)
        self.ledger.attach(journal)
        try:
            yield
        finally:
            self.ledger.detach()
            journal.close()

    def _build_chain(
        self, task_group: anyio.abc.TaskGroup, store: Store | None, pool: GrantPool | None
    ) -> Call:
        jitter = random.Random(self.seed)
        limits = self.limits

        def key(work: Work) -> tuple[object, ...]:
            assert not isinstance(work, Batch), "keys are taken above the coalescer"
            return request_key(self.backend.identity, work)

        metered = Metered(BackendCall(self.backend), self.ledger, self.backend)
        limiter = Limiter(
            metered,
            self.backend,
            limits,
            clock=self.clock,
            sleep=self.sleep,
            jitter=jitter,
            pool=pool,
        )
        chain: Call = Retry(
            limiter, self.ledger, self.retry, sleep=self.sleep, jitter=jitter, clock=self.clock
        )
        window_ms = self.coalesce_ms
        if window_ms == "auto":
            window_ms = DEFAULT_COALESCE_MS if limits.rpm else 0.0
        max_batch = self.backend.capabilities.max_batch if window_ms > 0 else 1
        chain = Split(chain, ledger=self.ledger)
        if max_batch > 1:
            chain = Coalescer(
                chain,
                task_group,
                max_batch,
                window_ms / 1000.0,
                sleep=self.sleep,
                clock=self.clock,
                max_tokens=int(limits.tpm / 60 * limits.burst_s / 4) if limits.tpm else None,
                count_tokens=lambda work: sum(estimated_tokens(self.backend, work)),
            )
        chain = SingleFlight(chain, key, Workers(task_group))
        if store is not None:
            chain = Cache(chain, key, self.ledger, store)
        return self._tracer.traced(chain, self.backend, self.ledger)

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
        phase: Phase = "forward",
        priority: int = 0,
    ) -> str:
        request = GenerateRequest(
            prompt,
            max_tokens=max_tokens,
            temperature=temperature,
            stop=stop,
            seed=seed,
            node=node,
            phase=phase,
            priority=priority,
        )
        result = await self.request(request)
        assert isinstance(result, str)
        return result

    async def samples(
        self,
        prompt: str,
        count: int,
        *,
        max_tokens: int = 128,
        temperature: float = 0.0,
        stop: Sequence[str] = (),
        seed: int = 0,
        node: str | None = None,
        phase: Phase = "forward",
        priority: int = 0,
    ) -> list[str]:
        """`count` samples of one prompt, of seeds `seed` to `seed + count - 1`: in one call
        where the backend draws that many (`Capabilities.samples`: the prompt sent and
        charged once), else one call each; sample i is the one `generate` with seed
        `seed + i` stands for, and the cache answers either for the other."""
        check_int("count", count, 0, MAX_DRAWN)
        first = GenerateRequest(
            prompt,
            max_tokens=max_tokens,
            temperature=temperature,
            stop=stop,
            seed=seed,
            node=node,
            phase=phase,
            priority=priority,
        )
        return await draw_samples(self.request, self.backend.capabilities, first, count)

    async def logprob(
        self,
        context: str,
        target: str,
        *,
        node: str | None = None,
        phase: Phase = "score",
        priority: int = 0,
    ) -> float:
        result = await self.request(
            LogprobRequest(context, target, node=node, phase=phase, priority=priority)
        )
        assert isinstance(result, float | int)
        return float(result)

    async def logprobs(
        self,
        context: str,
        targets: Sequence[str],
        *,
        node: str | None = None,
        phase: Phase = "score",
        priority: int = 0,
    ) -> list[float]:
        """log p(target | context) of each (non-empty) target, in order: in one call when the
        backend scores that many continuations of a context at once
        (`Capabilities.continuations`), else one call each; every value as `logprob` gives
        it."""
        query = Query(context, node, phase, priority)
        texts = strings(targets, "targets")
        if "" in texts:
            raise ValueError(f"targets[{texts.index('')}]: an empty text has nothing to score")
        return await continuation_scores(self.request, self.backend.capabilities, query, texts)

    async def classify(
        self,
        context: str,
        classes: Sequence[str],
        *,
        node: str | None = None,
        phase: Phase = "score",
        priority: int = 0,
    ) -> list[float]:
        """P(class | context) for ``"yes|Yes"``-style class specs, in the order given; see
        `dlgraph.engine.classify` for how each kind of backend is asked."""
        specs = class_strings(classes)
        if not specs or not all(verbalizers(spec) for spec in specs):
            raise ValueError(
                f"classes: expected class specs such as 'yes|Yes', got {excerpt(classes)}"
            )
        query = ClassQuery(context, node, phase, priority, specs)
        return await class_distribution(self.request, self.backend.capabilities, query)

    @property
    def tracer(self) -> Tracer:
        """Spans for the work done with this engine (forward passes, training steps); one that
        records nothing while tracing is off or the engine is not entered."""
        return self._tracer

    @property
    def concurrency_ceiling(self) -> int:
        """The most calls this engine keeps in flight."""
        return concurrency_ceiling(self.limits, self.backend)

    def statistics(self) -> LedgerSnapshot:
        return self.ledger.statistics()
