"""What a model must do for dlgraph (the port), and how plugins that do it are found.

A backend answers two kinds of request: generate text (one sample, or several of one prompt
in one call when it can), and give log p(target | context) (one target, or several
continuations of one context in one call when it can).
Plugins are separate distributions that declare an entry point in the group
``dlgraph.backends`` (read by `dlgraph._entry_points`); the core never imports them.
"""

from __future__ import annotations

import importlib.metadata
import logging
import math
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Literal, Self, get_args

import attrs

from dlgraph._entry_points import BACKENDS
from dlgraph._untrusted import excerpt
from dlgraph._validate import (
    MAX_TOKENS,
    boolean,
    check_text,
    integer,
    number,
    stop_strings,
    strings,
    text,
)
from dlgraph.answer import Answer, as_answer
from dlgraph.errors import BackendError, MalformedAnswer, UnknownBackend

logger = logging.getLogger(__name__)

Phase = Literal["forward", "posterior", "propose", "score", "eval"]
"""Which part of dlgraph asked for a call: the ledger counts by node and phase."""
PHASES: tuple[Phase, ...] = get_args(Phase)


def check_phase(name: str, value: object) -> Phase:
    if value not in PHASES:
        raise ValueError(f"{name}={excerpt(value)}: expected one of {', '.join(PHASES)}")
    return value


def _known_phase(instance: Any, attribute: attrs.Attribute[str], value: str) -> None:
    check_phase(attribute.name, value)


MAX_SEED = 2**32 - 1
"""The largest seed a generation takes."""


def _node_name(instance: Any, attribute: attrs.Attribute[str | None], value: object) -> None:
    """Who asks, as the ledger and tracing name it: a node's name, or None (not an empty
    name, which the ledger would count with None's)."""
    if value is not None:
        check_text(attribute.name, value)
        if not value:
            raise ValueError(f"{attribute.name}: expected a node's name or None, got ''")


@attrs.frozen
class _Sampling:
    """What a generation is asked with: a prompt and how to sample its continuation."""

    prompt: str = attrs.field(validator=text)
    max_tokens: int = attrs.field(
        default=128, kw_only=True, validator=integer(1, MAX_TOKENS, none=False)
    )
    temperature: float = attrs.field(default=0.0, kw_only=True, validator=number(0, none=False))
    stop: tuple[str, ...] = attrs.field(default=(), kw_only=True, converter=stop_strings)
    seed: int = attrs.field(default=0, kw_only=True, validator=integer(0, MAX_SEED, none=False))
    """The sample's index, from 0: two seeds draw two samples (a seed at and above 2**32
    would repeat a smaller one's on the embedded model, whose generators take 32 bits)."""
    node: str | None = attrs.field(default=None, kw_only=True, validator=_node_name)
    phase: Phase = attrs.field(default="forward", kw_only=True, validator=_known_phase)
    priority: int = attrs.field(default=0, kw_only=True, validator=integer(none=False))
    """When the rate limit is the bottleneck, higher goes first (deeper nodes finish a batch sooner)."""


@attrs.frozen
class GenerateRequest(_Sampling):
    """Sample a continuation of `prompt`. `seed` is the sample index: two samples differ."""

    def key(self) -> tuple[object, ...]:
        """Every field that decides the answer (not node, phase or priority)."""
        return ("generate", self.prompt, self.max_tokens, self.temperature, self.stop, self.seed)

    async def ask(self, backend: Backend) -> Answer[str]:
        """The backend's text; anything else is a malformed answer (retried, never cached)."""
        answer = as_answer(await backend.generate(self))
        return Answer(checked_texts(backend, [answer.value], answer)[0], usage=answer.usage)


MAX_SAMPLES = 128
"""The most samples one request may draw (OpenAI's ``n`` takes at most 128)."""


@attrs.frozen
class SamplesRequest(_Sampling):
    """`count` samples of one prompt in one call: the prompt sent, charged and evaluated once
    (``n`` over HTTP; one prompt's cells shared by every sample in process), where a
    `GenerateRequest` each would send it `count` times. Sample i stands for the
    `GenerateRequest` of seed `seed + i` (`each`), as the cache keeps it: it is that
    generation in process, on the simulated server and on vLLM's engine, and elsewhere (a
    hosted API, whose seeds are best effort) an independent draw of the same distribution.
    `Capabilities.samples` says how many one call of a backend draws."""

    count: int = attrs.field(default=2, kw_only=True, validator=integer(1, MAX_SAMPLES, none=False))

    def __attrs_post_init__(self) -> None:
        if self.seed + self.count - 1 > MAX_SEED:
            raise ValueError(
                f"seed: samples of seeds {self.seed:,} to {self.seed + self.count - 1:,} go past "
                f"the largest seed, {MAX_SEED:,}"
            )

    def key(self) -> tuple[object, ...]:
        sampling = (self.prompt, self.max_tokens, self.temperature, self.stop, self.seed)
        return ("samples", *sampling, self.count)

    @property
    def size(self) -> int:
        """The samples it draws."""
        return self.count

    def piece(self, start: int, stop: int) -> SamplesRequest:
        """The samples `start` to `stop` of this request, as a request of their own."""
        return attrs.evolve(self, seed=self.seed + start, count=stop - start)

    def each(self) -> list[GenerateRequest]:
        """Each sample as the `GenerateRequest` it stands for (same node, phase, priority)."""
        fields = attrs.asdict(self, recurse=False)
        del fields["count"], fields["seed"]
        return [GenerateRequest(**fields, seed=self.seed + i) for i in range(self.count)]

    async def ask(self, backend: Backend) -> Answer[tuple[str, ...]]:
        """The backend's samples, in order. A count that differs, or a sample that is not a
        text, is a malformed answer (retried, never cached)."""
        answer = as_answer(await backend.samples(self))
        values = answered_list(backend, answer, "samples")
        if len(values) != self.count:
            raise MalformedAnswer(
                f"{backend.identity}: {len(values)} samples for {self.count} asked",
                usage=answer.usage,
            )
        return Answer(tuple(checked_texts(backend, values, answer)), usage=answer.usage)


def answered_list(backend: Backend, answer: Answer[Any], what: str) -> tuple[object, ...]:
    """An answer of several values, as a tuple; a text or anything that is no list of
    values is a malformed answer (a text would pass for one value per character)."""
    value = answer.value
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise MalformedAnswer(
            f"{backend.identity}: expected a list of {what}, got {excerpt(value)}",
            usage=answer.usage,
        )
    return tuple(value)


def checked_texts(backend: Backend, values: Sequence[object], answer: Answer[Any]) -> list[str]:
    """`values` as generated texts; one that is none makes the answer malformed."""
    for value in values:
        if not isinstance(value, str):
            raise MalformedAnswer(
                f"{backend.identity}: a generation answered {excerpt(value)}, not a text",
                usage=answer.usage,
            )
    return list(values)  # type: ignore[arg-type]


@attrs.frozen
class LogprobRequest:
    """log p(target | context), summed over the target's tokens."""

    context: str = attrs.field(validator=text)
    target: str = attrs.field(validator=text)
    node: str | None = attrs.field(default=None, kw_only=True, validator=_node_name)
    phase: Phase = attrs.field(default="score", kw_only=True, validator=_known_phase)
    priority: int = attrs.field(default=0, kw_only=True, validator=integer(none=False))

    def key(self) -> tuple[object, ...]:
        return ("logprob", self.context, self.target)

    async def ask(self, backend: Backend) -> Answer[float]:
        """The backend's value; one that is no log-probability (`logprob_value`) is a
        malformed answer (retried, never cached)."""
        answer = as_answer(await backend.logprob(self))
        return Answer(checked_logprobs(backend, [answer.value], answer)[0], usage=answer.usage)


@attrs.frozen
class TopLogprobsRequest:
    """The `count` most likely first tokens after `context`, with their log-probabilities."""

    context: str = attrs.field(validator=text)
    count: int = attrs.field(default=20, kw_only=True, validator=integer(1))
    node: str | None = attrs.field(default=None, kw_only=True, validator=_node_name)
    phase: Phase = attrs.field(default="score", kw_only=True, validator=_known_phase)
    priority: int = attrs.field(default=0, kw_only=True, validator=integer(none=False))

    def key(self) -> tuple[object, ...]:
        return ("top_logprobs", self.context, self.count)

    async def ask(self, backend: Backend) -> Answer[dict[str, float]]:
        """The backend's alternatives. None at all (a shape the backend could not read) or a
        value that is no log-probability (`logprob_value`) is a malformed answer, retried:
        with no alternative every class would fall to the same floor, a uniform distribution
        that looks like an answer."""
        answer = as_answer(await backend.top_logprobs(self))
        alternatives = answer.value
        if not alternatives:
            raise MalformedAnswer(
                f"{backend.identity}: no first-token alternatives in the answer",
                usage=answer.usage,
            )
        values = checked_logprobs(backend, list(alternatives.values()), answer)
        return Answer(dict(zip(alternatives, values, strict=True)), usage=answer.usage)


ROUNDING = 1e-6
"""A log-probability this little above 0 is a server's rounding of 0, not a malformed answer."""


def logprob_value(value: object) -> float | None:
    """`value` as a log-probability: a number at most 0, -inf included (up to `ROUNDING`
    above 0 is 0); None for anything else (NaN, +inf, a larger number, a bool, a text)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if math.isnan(value) or value > ROUNDING:
        return None
    return min(float(value), 0.0)


def checked_logprobs(
    backend: Backend, values: Sequence[object], answer: Answer[Any]
) -> list[float]:
    """`values` as log-probabilities (`logprob_value`); one that is none makes the answer
    malformed (retried, never cached), whichever request asked it."""
    checked = []
    for value in values:
        found = logprob_value(value)
        if found is None:
            raise MalformedAnswer(
                f"{backend.identity}: the log-probability {value!r} is not a number <= 0",
                usage=answer.usage,
            )
        checked.append(found)
    return checked


MAX_CONTINUATIONS = 256
"""The most continuations one request may score: far more than a class node's verbalizers."""


def continuation_texts(values: Sequence[str]) -> tuple[str, ...]:
    """A converter for continuations: a non-empty list of non-empty texts, at most
    `MAX_CONTINUATIONS` (an empty one has no tokens to score)."""
    texts = strings(values, "continuations")
    if not texts:
        raise ValueError("continuations: expected at least one text to score, got none")
    if len(texts) > MAX_CONTINUATIONS:
        raise ValueError(
            f"continuations: at most {MAX_CONTINUATIONS} per request, got {len(texts):,}"
        )
    if "" in texts:
        raise ValueError(f"continuations[{texts.index('')}]: an empty text has nothing to score")
    return texts


@attrs.frozen
class ContinuationsRequest:
    """log p(continuation | context) for each continuation, summed over its tokens, in one
    call: every verbalizer of a class distribution at once, or a text node's targets on the
    same inputs; the context evaluated once in process, sent once per continuation over HTTP
    (`Capabilities.continuations` says how many a backend takes, `repeats_context` which).
    Each value equals what a `LogprobRequest(context, continuation)` answers."""

    context: str = attrs.field(validator=text)
    continuations: tuple[str, ...] = attrs.field(converter=continuation_texts)
    node: str | None = attrs.field(default=None, kw_only=True, validator=_node_name)
    phase: Phase = attrs.field(default="score", kw_only=True, validator=_known_phase)
    priority: int = attrs.field(default=0, kw_only=True, validator=integer(none=False))

    def key(self) -> tuple[object, ...]:
        return ("continuations", self.context, self.continuations)

    @property
    def size(self) -> int:
        """The continuations it scores."""
        return len(self.continuations)

    def piece(self, start: int, stop: int) -> ContinuationsRequest:
        """The continuations `start` to `stop` of this request, as a request of their own."""
        return attrs.evolve(self, continuations=self.continuations[start:stop])

    def each(self) -> list[LogprobRequest]:
        """Each continuation as the `LogprobRequest` whose value it equals (same node, phase
        and priority)."""
        return [
            LogprobRequest(
                self.context, text, node=self.node, phase=self.phase, priority=self.priority
            )
            for text in self.continuations
        ]

    async def ask(self, backend: Backend) -> Answer[tuple[float, ...]]:
        """The backend's values, one per continuation in order. A count that differs, a NaN
        or a positive value is a malformed answer (retried, never cached)."""
        answer = as_answer(await backend.continuations(self))
        values = answered_list(backend, answer, "log-probabilities")
        if len(values) != len(self.continuations):
            raise MalformedAnswer(
                f"{backend.identity}: {len(values)} log-probabilities for "
                f"{len(self.continuations)} continuations",
                usage=answer.usage,
            )
        return Answer(tuple(checked_logprobs(backend, values, answer)), usage=answer.usage)


Request = (
    GenerateRequest | LogprobRequest | TopLogprobsRequest | ContinuationsRequest | SamplesRequest
)
Result = str | float | dict[str, float] | tuple[float, ...] | tuple[str, ...]
Parted = ContinuationsRequest | SamplesRequest
"""A request of several parts, each equal to a request of its own (`each`): a continuation
its `LogprobRequest`, a sample the `GenerateRequest` of its seed; `piece` is a run of them."""
UNKEYED_FIELDS = ("node", "phase", "priority")
"""Fields that do not change an answer: left out of `key()`, cache and single-flight keys."""


@attrs.frozen
class Batch:
    """Requests of one kind sharing every field but their text (and their node and phase);
    answered by one backend call (a multi-prompt /v1/completions request)."""

    requests: tuple[GenerateRequest, ...] | tuple[LogprobRequest, ...]
    since: float | None = attrs.field(default=None, kw_only=True, eq=False)
    """When the engine formed the batch (its clock): the parts of a split batch keep the
    place in the limiter's queue that the whole batch had. Backends ignore it."""

    @property
    def priority(self) -> int:
        return max(request.priority for request in self.requests)

    async def ask(self, backend: Backend) -> Sequence[Result] | Answer[Sequence[Result]]:
        """The backend's values, in order (the engine checks their count); a text or a
        log-probability that is none is a malformed answer, as alone."""
        generate = [r for r in self.requests if isinstance(r, GenerateRequest)]
        if generate:
            texts = as_answer(await backend.generate_batch(generate))
            return Answer(checked_texts(backend, list(texts.value), texts), usage=texts.usage)
        logprobs = [r for r in self.requests if isinstance(r, LogprobRequest)]
        answer = as_answer(await backend.logprob_batch(logprobs))
        return Answer(checked_logprobs(backend, list(answer.value), answer), usage=answer.usage)


Work = Request | Batch
"""One unit of work for a backend: a request, or several sent as one multi-prompt request."""


@attrs.frozen
class Capabilities:
    """What a backend can do; the engine reads this to choose a strategy, it never probes."""

    exact_logprobs: bool = attrs.field(default=True, validator=boolean)
    """`logprob` returns the exact summed log-probability of the target."""
    top_logprobs: int = attrs.field(default=0, validator=integer(0, none=False))
    """How many first-token alternatives the backend can report (0: none)."""
    max_batch: int = attrs.field(default=1, validator=integer(1, none=False))
    """How many prompts one request may carry."""
    max_concurrency: int | None = attrs.field(default=None, validator=integer(1))
    """A hard limit on calls in flight (1 for a model that is not thread-safe)."""
    context_window: int | None = attrs.field(default=None, validator=integer(1))
    """The most tokens one call may hold, prompt and answer, when known: the trainer leaves
    out candidates whose demonstrations would not fit."""
    continuations: int = attrs.field(default=0, validator=integer(0, MAX_CONTINUATIONS))
    """How many continuations of one context one call (`ContinuationsRequest`) may score
    (0: none): with exact log-probabilities, a class distribution with at most this many
    verbalizers, or a text node's several targets on the same inputs, is then one call
    instead of one per continuation."""
    repeats_context: bool = attrs.field(default=False, validator=boolean)
    """A `ContinuationsRequest` sends (and a server charges) the context once per
    continuation, as a list of prompts does, rather than once."""
    first_token_classes: bool = attrs.field(default=False, validator=boolean)
    """Where `repeats_context`, read a class distribution from the first token's
    alternatives first (`reads_first_token`): the backend's choice of fewer tokens over,
    sometimes, one more request."""
    samples: int = attrs.field(default=0, validator=integer(0, MAX_SAMPLES))
    """How many samples of one prompt one call (`SamplesRequest`) may draw (0: none): a
    hidden node's posterior samples of an example are then one call instead of one each."""

    def continuation_calls(self, continuations: int) -> int:
        """Calls that score `continuations` continuations of one context (the engine's
        `logprobs`, and what the estimate counts for it): as many as one call takes in
        each, or one each where a call takes one or none."""
        if self.continuations < 2:
            return continuations
        return -(-continuations // self.continuations)

    def sample_calls(self, samples: int) -> int:
        """Calls that draw `samples` samples of one prompt (the engine's `samples`, and what
        the estimate counts for it): as many as one call draws in each, or one each."""
        if self.samples < 2:
            return samples
        return -(-samples // self.samples)

    def reads_first_token(self, verbalizers: int) -> bool:
        """Whether a class distribution over `verbalizers` verbalizers is read from the
        first token's alternatives first: one context sent instead of one per verbalizer,
        where a class in one call would repeat it (`repeats_context`), and the alternatives
        may hold every verbalizer. Exact all the same: a verbalizer that is not one of the
        alternatives is then scored as a continuation, in a second call (fewer tokens, one
        more request)."""
        return (
            self.classification == "logprob"
            and self.repeats_context
            and self.first_token_classes
            and 1 < verbalizers <= self.top_logprobs
            and self.continuation_calls(verbalizers) == 1
        )

    def distribution_calls(self, verbalizers: int) -> int:
        """Calls one class distribution over `verbalizers` verbalizers sends at most (the
        engine's `classify`, and what the estimate counts for it): two when read from the
        first token (the alternatives, then any verbalizer they lack, all in one call)."""
        if self.classification != "logprob":
            return 1
        return 2 if self.reads_first_token(verbalizers) else self.continuation_calls(verbalizers)

    def expected_distribution_calls(self, verbalizers: int) -> int:
        """The calls a class distribution is expected to send: one when read from the first
        token (its verbalizers expected among the alternatives), else what it sends."""
        return 1 if self.reads_first_token(verbalizers) else self.distribution_calls(verbalizers)

    @property
    def classification(self) -> str:
        """How the engine scores classes: "logprob", "top_logprobs" or "generate"."""
        if self.exact_logprobs:
            return "logprob"
        return "top_logprobs" if self.top_logprobs else "generate"


class Backend:
    """Base class of every model. Subclasses implement `generate` and `logprob`.

    Each method returns its plain value, or an `Answer` of it carrying the call's `CallUsage`
    when the backend knows it (tokens counted by the server, its stated limits); a failure is
    a `BackendError`, which may carry the usage too. The engine calls only `handle`, which
    asks the method a unit of work names; a backend that sends work elsewhere whole (a pool
    of replicas) overrides `handle` instead.

    A backend is an async context manager; `aclose` releases what it holds (sessions, models).
    """

    capabilities: Capabilities = Capabilities()

    @property
    def identity(self) -> str:
        """Names backend and model for cache keys: two backends with one identity answer alike."""
        return type(self).__qualname__

    @property
    def provider_name(self) -> str:
        """Who serves the model, as tracing names it (``gen_ai.provider.name``): by default
        the identity up to its first colon (``openai`` for ``openai:...``)."""
        return self.identity.partition(":")[0]

    @property
    def model_name(self) -> str:
        """The model asked, as tracing names it (``gen_ai.request.model``): by default the
        identity after its first colon, or the whole identity."""
        return self.identity.partition(":")[2] or self.identity

    @property
    def operation_name(self) -> str:
        """What a call is, as tracing names it (``gen_ai.operation.name``): ``text_completion``
        (a prompt continued, or scored, as by a completions endpoint), ``chat`` for a chat API."""
        return "text_completion"

    async def handle(self, work: Work) -> Answer[Result | Sequence[Result]]:
        """One unit of work answered, with its usage: the one method the engine calls."""
        value = await work.ask(self)
        return value if isinstance(value, Answer) else Answer(value)

    async def generate(self, request: GenerateRequest) -> str | Answer[str]:
        raise NotImplementedError(f"{type(self).__qualname__} does not implement generate")

    async def logprob(self, request: LogprobRequest) -> float | Answer[float]:
        raise NotImplementedError(f"{type(self).__qualname__} does not implement logprob")

    async def generate_batch(
        self, requests: Sequence[GenerateRequest]
    ) -> list[str] | Answer[list[str]]:
        """Several prompts in one request (when `capabilities.max_batch` > 1); requests share
        every field but the prompt. A prompt the server refuses fails the whole call."""
        raise NotImplementedError(
            f"{type(self).__qualname__} does not take several prompts per request"
        )

    async def logprob_batch(
        self, requests: Sequence[LogprobRequest]
    ) -> list[float] | Answer[list[float]]:
        """Several log-probabilities in one request (when `capabilities.max_batch` > 1)."""
        raise NotImplementedError(
            f"{type(self).__qualname__} does not take several prompts per request"
        )

    async def continuations(
        self, request: ContinuationsRequest
    ) -> Sequence[float] | Answer[Sequence[float]]:
        """log p(continuation | context) for each continuation, in order, in one call (when
        `capabilities.continuations` > 0)."""
        raise NotImplementedError(
            f"{type(self).__qualname__} does not score several continuations per call"
        )

    async def samples(self, request: SamplesRequest) -> Sequence[str] | Answer[Sequence[str]]:
        """`request.count` samples of one prompt, in order, in one call (when
        `capabilities.samples` > 1); sample i as seed `request.seed + i` would give it, where
        the backend's seeds allow."""
        raise NotImplementedError(
            f"{type(self).__qualname__} does not draw several samples per call"
        )

    async def top_logprobs(
        self, request: TopLogprobsRequest
    ) -> dict[str, float] | Answer[dict[str, float]]:
        """First-token alternatives (when `capabilities.top_logprobs` > 0)."""
        raise NotImplementedError(
            f"{type(self).__qualname__} does not report top log-probabilities"
        )

    def count_tokens(self, text: str) -> int:
        """Token count for budgets and rate limits; a rough estimate unless overridden."""
        return max(1, len(text) // 4)

    async def aclose(self) -> None:
        return None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        await self.aclose()
        return None


BackendFactory = Callable[..., Backend]


@attrs.define(eq=False)
class BackendRegistry:
    """Backend factories by name: installed plugins plus any registered in process."""

    _factories: dict[str, BackendFactory | importlib.metadata.EntryPoint] = attrs.field(
        factory=dict, alias="factories"
    )

    @classmethod
    def from_entry_points(cls) -> BackendRegistry:
        return cls(factories=dict(BACKENDS.entries()))

    def register(self, name: str, factory: BackendFactory) -> None:
        self._factories[name] = factory

    def names(self) -> list[str]:
        return sorted(self._factories)

    def factory(self, name: str) -> BackendFactory:
        """The factory of the backend called `name`; raises UnknownBackend listing the known
        names."""
        try:
            factory = self._factories[name]
        except KeyError:
            known = ", ".join(self.names()) or "none installed"
            raise UnknownBackend(f"unknown backend {excerpt(name)} (known: {known})") from None
        if isinstance(factory, importlib.metadata.EntryPoint):
            factory = factory.load()
        return factory

    def check(self, name: str, /, **options: Any) -> None:
        """Every check building the backend called `name` with `options` makes, without what
        building may start: through the factory's own ``check`` when it has one (a factory
        that joins a cluster or starts processes on building), else by building the backend
        and dropping it (building makes no call: a backend connects or loads on entering)."""
        check = getattr(self.factory(name), "check", None)
        if callable(check):
            check(**options)
        else:
            self.connect(name, **options)

    def connect(self, name: str, /, **options: Any) -> Backend:
        """Build the backend called `name`; raises UnknownBackend listing the known names."""
        backend = self.factory(name)(**options)
        if not isinstance(backend, Backend):
            raise BackendError(
                f"backend {excerpt(name)} built {type(backend).__qualname__}, not a Backend"
            )
        return backend


def connect(name: str, /, registry: BackendRegistry | None = None, **options: Any) -> Backend:
    """Build an installed backend by name: ``dg.connect("openai", base_url=..., model=...)``."""
    return (registry or BackendRegistry.from_entry_points()).connect(name, **options)
