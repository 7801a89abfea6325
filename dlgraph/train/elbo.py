"""Scoring candidate prompts: the log-likelihood of a target, and the ELBO of a prompt.

ELBO(π) for node v is the mean over examples of Σ_k w_k log p(target_k | inputs_k, π):
for an output node the targets are the gold answers and the inputs range over the aligned
posterior candidates of its hidden parents; for a hidden node the inputs are the forward
values and the targets range over its own posterior candidates.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Protocol

import attrs

from dlgraph._tasks import map_concurrently
from dlgraph.engine import Engine
from dlgraph.forward import class_distribution, run_node
from dlgraph.network import Network
from dlgraph.scoring import is_correct

FLOOR = 1e-6
"""Probabilities are floored here before the log, so a sure miss costs log(1e-6), not -inf."""


class Scorer(Protocol):
    async def loglik(
        self,
        net: Network,
        name: str,
        values: Mapping[str, str],
        target: str,
        *,
        prompt: str | None = None,
        phase: str,
    ) -> float:
        """log p(target | node `name` reading `values`, under `prompt` or its own)."""
        ...


@attrs.frozen
class LogprobScorer:
    """Exact log-likelihood: class nodes through class probabilities, others through logprob."""

    engine: Engine

    async def loglik(
        self,
        net: Network,
        name: str,
        values: Mapping[str, str],
        target: str,
        *,
        prompt: str | None = None,
        phase: str,
    ) -> float:
        node = net.node(name)
        rendered = net.render(name, values, prompt=prompt)
        if node.classes:
            probabilities = await class_distribution(
                net, name, self.engine, rendered, prompt=prompt, phase=phase
            )
            names = node.class_names
            p = probabilities[names.index(target)] if target in names else 0.0
            return math.log(max(p, FLOOR))
        return await self.engine.logprob(rendered, " " + target, node=name, phase=phase)


@attrs.frozen
class AccuracyScorer:
    """For backends without log-probs: 0 if the node's greedy output is right, else log(FLOOR)."""

    engine: Engine

    async def loglik(
        self,
        net: Network,
        name: str,
        values: Mapping[str, str],
        target: str,
        *,
        prompt: str | None = None,
        phase: str,
    ) -> float:
        output = await run_node(net, name, self.engine, values, prompt=prompt, phase=phase)
        return 0.0 if is_correct(output.text, target, net.node(name).classes) else math.log(FLOOR)


@attrs.frozen
class Term:
    """One weighted (inputs, target) pair of an example's expectation."""

    values: Mapping[str, str]
    target: str
    weight: float


def prune(terms: Sequence[Term], min_weight: float) -> list[Term]:
    """Drop terms lighter than `min_weight` (keeping at least the heaviest) and renormalise."""
    kept = [term for term in terms if term.weight >= min_weight] or [
        max(terms, key=lambda t: t.weight)
    ]
    total = sum(term.weight for term in kept)
    return [attrs.evolve(term, weight=term.weight / total) for term in kept]


async def example_scores(
    net: Network,
    name: str,
    prompts: Sequence[str],
    terms: Sequence[Sequence[Term]],
    scorer: Scorer,
) -> list[list[float]]:
    """For each candidate prompt, each example's expected log-likelihood; all calls at once."""
    jobs = [
        (p, i, term)
        for p in range(len(prompts))
        for i, example_terms in enumerate(terms)
        for term in example_terms
    ]

    async def score(job: tuple[int, int, Term]) -> float:
        p, _, term = job
        return term.weight * await scorer.loglik(
            net, name, term.values, term.target, prompt=prompts[p], phase="score"
        )

    weighted = await map_concurrently(score, jobs)
    scores = [[0.0] * len(terms) for _ in prompts]
    for (p, i, _), value in zip(jobs, weighted, strict=True):
        scores[p][i] += value
    return scores


def elbo(scores: Sequence[Sequence[float]], trust_region: float) -> list[float]:
    """Mean per-example score of each candidate; candidate 0 is the current prompt.

    With a trust region, a candidate pays `trust_region` times its mean loss of
    log-likelihood against the current prompt, example by example.
    """
    current = scores[0]
    results = []
    for candidate in scores:
        mean = sum(candidate) / len(candidate)
        loss = sum(max(0.0, c - s) for c, s in zip(current, candidate, strict=True)) / len(
            candidate
        )
        results.append(mean - trust_region * loss)
    return results
