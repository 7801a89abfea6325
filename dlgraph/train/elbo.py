"""Scoring candidate prompts: expectations over posterior candidates, and the ELBO.

ELBO(π) for node v is the mean over examples of Σ_k w_k log p(target_k | inputs_k, π):
for an output node the targets are the gold answers and the inputs range over the aligned
posterior candidates of its hidden parents; for a hidden node the inputs are the forward
values and the targets range over its own posterior candidates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import attrs

from dlgraph._tasks import map_concurrently
from dlgraph.forward import Trace
from dlgraph.graph import Graph
from dlgraph.nodes import Parameter
from dlgraph.train.posterior import Posterior
from dlgraph.train.scorers import Scorer


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


def expectation_terms(
    net: Graph,
    name: str,
    trace: Trace,
    targets: Mapping[str, Sequence[str]],
    posteriors: Mapping[str, Posterior],
    min_weight: float,
) -> list[list[Term]]:
    """Each example's weighted (inputs, target) pairs for scoring node `name`.

    A hidden node's expectation runs over its own posterior candidates, its inputs at their
    forward values. An output node's runs over its hidden parents' candidates, aligned: the
    k-th candidates of all hidden parents go together, with the product of their weights (a
    shorter candidate set wraps around).
    """
    terms = []
    for i in range(len(trace)):
        if name in posteriors:
            own = posteriors[name]
            example = [
                Term(trace.values(i), c, w)
                for c, w in zip(own.candidates[i], own.weights[i], strict=True)
            ]
        else:
            hidden = [p for p in net.parents(name) if p in posteriors]
            size = max((len(posteriors[p].candidates[i]) for p in hidden), default=1)
            example = []
            for k in range(size):
                values, weight = trace.values(i), 1.0
                for p in hidden:
                    candidates, weights = posteriors[p].candidates[i], posteriors[p].weights[i]
                    values[p] = candidates[k % len(candidates)]
                    weight *= weights[k % len(weights)]
                example.append(Term(values, targets[name][i], weight))
        terms.append(prune(example, min_weight))
    return terms


async def example_scores(
    net: Graph,
    name: str,
    candidates: Sequence[Parameter],
    terms: Sequence[Sequence[Term]],
    scorer: Scorer,
    excluded: Sequence[frozenset[int]],
) -> list[list[float | None]]:
    """For each candidate, each example's expected log-likelihood, or None for an example
    the candidate's own demonstrations show (scoring it would reward copying); all calls at
    once."""
    jobs = [
        (c, i, term)
        for c in range(len(candidates))
        for i, example_terms in enumerate(terms)
        if i not in excluded[c]
        for term in example_terms
    ]

    async def score(job: tuple[int, int, Term]) -> float:
        c, _, term = job
        return term.weight * await scorer.loglik(
            net, name, term.values, term.target, parameter=candidates[c], phase="score"
        )

    weighted = await map_concurrently(score, jobs)
    scores: list[list[float | None]] = [
        [None if i in excluded[c] else 0.0 for i in range(len(terms))]
        for c in range(len(candidates))
    ]
    for (c, i, _), value in zip(jobs, weighted, strict=True):
        scores[c][i] = (scores[c][i] or 0.0) + value
    return scores


def elbo(scores: Sequence[Sequence[float | None]], trust_region: float) -> list[float]:
    """Mean score of each candidate over the examples it was scored on; candidate 0 is the
    current one.

    With a trust region, a candidate pays `trust_region` times its mean loss of
    log-likelihood against the current one, over the examples both were scored on.
    """
    current = scores[0]
    results = []
    for candidate in scores:
        own = [s for s in candidate if s is not None]
        both = [
            (c, s)
            for c, s in zip(current, candidate, strict=True)
            if c is not None and s is not None
        ]
        loss = sum(max(0.0, c - s) for c, s in both) / len(both) if both else 0.0
        results.append(sum(own) / len(own) - trust_region * loss if own else float("-inf"))
    return results
