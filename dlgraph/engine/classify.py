"""P(class | context) from the best the backend offers, chosen by its capabilities.

* ``logprob``: the exact log-probability of every verbalizer after a space, summed per class:
  all in one `ContinuationsRequest` when the backend scores that many continuations in one
  call (`Capabilities.continuations`), else one `LogprobRequest` per verbalizer. Where such a
  call would repeat the context for each verbalizer (a list of prompts over HTTP,
  `Capabilities.repeats_context`) and the backend gives first-token alternatives, a verbalizer
  that is one token among them is read from one `TopLogprobsRequest` (one context sent), and
  only those it lacks are scored as continuations: the same values, fewer tokens (not after a
  context that ends in whitespace, which a tokenizer may join to the verbalizer);
* ``top_logprobs``: each class's verbalizers among the first token's alternatives;
* ``generate``: one greedy generation, mapped to a class.

A class that a source gives nothing gets `LOG_FLOOR`. First-token alternatives that name no
class are an answer (the model put its first token elsewhere; the classes share the floor),
but no alternatives at all are not: every class at the floor is a uniform distribution that
looks like an answer. The request refuses such an answer from the backend
(`TopLogprobsRequest.ask`, a retried `MalformedAnswer`) and the cache does not hold one.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence

import attrs

from dlgraph._tasks import map_concurrently
from dlgraph.backend import (
    Capabilities,
    ContinuationsRequest,
    GenerateRequest,
    LogprobRequest,
    Phase,
    Request,
    Result,
    TopLogprobsRequest,
)
from dlgraph.scoring import LOG_FLOOR, logsumexp, matching_class, normalize_log_scores, verbalizers

Send = Callable[[Request], Awaitable[Result]]


@attrs.frozen
class Query:
    """Who asks, and after what context."""

    context: str
    node: str | None
    phase: Phase
    priority: int

    def continuations(self, targets: Sequence[str]) -> ContinuationsRequest:
        """Every target after the context, in one request."""
        return ContinuationsRequest(
            self.context, targets, node=self.node, phase=self.phase, priority=self.priority
        )

    def logprob(self, target: str) -> LogprobRequest:
        return LogprobRequest(
            self.context, target, node=self.node, phase=self.phase, priority=self.priority
        )

    def top_logprobs(self, count: int) -> TopLogprobsRequest:
        """The first token's `count` most likely alternatives after the context."""
        return TopLogprobsRequest(
            self.context, count=count, node=self.node, phase=self.phase, priority=self.priority
        )


@attrs.frozen
class ClassQuery(Query):
    """One classification: the context, who asks, and the class specs."""

    classes: tuple[str, ...] = ()


async def continuation_scores(
    send: Send, capabilities: Capabilities, query: Query, targets: Sequence[str]
) -> list[float]:
    """log p(target | context) of each target, in as few calls as the backend allows
    (`Capabilities.continuation_calls`): `ContinuationsRequest`s of as many as one takes,
    else one `LogprobRequest` each; a target asked twice is scored once."""
    unique = list(dict.fromkeys(targets))
    size = capabilities.continuations if capabilities.continuations > 1 else 1
    chunks = [unique[start : start + size] for start in range(0, len(unique), size)]

    async def score(chunk: list[str]) -> list[float]:
        if len(chunk) == 1:
            value = await send(query.logprob(chunk[0]))
            assert isinstance(value, float | int)
            return [float(value)]
        values = await send(query.continuations(chunk))
        assert isinstance(values, tuple)
        return [float(value) for value in values]

    values = list(itertools.chain(*await map_concurrently(score, chunks)))
    scored = dict(zip(unique, values, strict=True))
    return [scored[target] for target in targets]


async def _by_logprob(send: Send, query: ClassQuery, capabilities: Capabilities) -> list[float]:
    words = [(c, word) for c, spec in enumerate(query.classes) for word in verbalizers(spec)]
    targets = [" " + word for _, word in words]
    # after whitespace, a tokenizer may join it to a verbalizer's first token, which is then
    # not the token that follows the context: only continuations are exact there
    if capabilities.reads_first_token(len(targets)) and not query.context[-1:].isspace():
        scores = await _first_token_then_continuations(send, query, capabilities, targets)
    else:
        scores = await continuation_scores(send, capabilities, query, targets)
    return [
        logsumexp([s for (c, _), s in zip(words, scores, strict=True) if c == index] or [-math.inf])
        for index in range(len(query.classes))
    ]


async def _first_token_then_continuations(
    send: Send, query: Query, capabilities: Capabilities, targets: Sequence[str]
) -> list[float]:
    """Each target's exact log-probability: a target that is one token among the first
    token's alternatives is its alternative's (one context sent for them all); the others
    are scored as continuations."""
    top = await send(query.top_logprobs(capabilities.top_logprobs))
    assert isinstance(top, dict)
    scores = {target: top[target] for target in targets if target in top}
    missing = [target for target in targets if target not in scores]
    if missing:
        found = await continuation_scores(send, capabilities, query, missing)
        scores.update(zip(missing, found, strict=True))
    return [scores[target] for target in targets]


async def _by_top_logprobs(
    send: Send, query: ClassQuery, capabilities: Capabilities
) -> list[float]:
    top = await send(query.top_logprobs(capabilities.top_logprobs))
    assert isinstance(top, dict) and top, "an empty answer is refused below"
    return [_class_score(spec, top) for spec in query.classes]


async def _by_generation(send: Send, query: ClassQuery, capabilities: Capabilities) -> list[float]:
    request = GenerateRequest(
        query.context, max_tokens=8, node=query.node, phase=query.phase, priority=query.priority
    )
    text = await send(request)
    assert isinstance(text, str)
    found = matching_class(text, query.classes)
    return [0.0 if found == verbalizers(spec)[0] else LOG_FLOOR for spec in query.classes]


STRATEGIES = {
    "logprob": _by_logprob,
    "top_logprobs": _by_top_logprobs,
    "generate": _by_generation,
}


async def class_distribution(
    send: Send, capabilities: Capabilities, query: ClassQuery
) -> list[float]:
    """Probabilities in the order of `query.classes`, summing to one."""
    strategy = STRATEGIES[capabilities.classification]
    return normalize_log_scores(await strategy(send, query, capabilities))


def _class_score(spec: str, top: Mapping[str, float]) -> float:
    """Log of the summed probability of a class's verbalizers among first-token alternatives."""
    words = {word.strip().lower() for word in verbalizers(spec)}
    found = [lp for token, lp in top.items() if token.strip().lower() in words]
    return logsumexp(found) if found else min([LOG_FLOOR, *top.values()])
