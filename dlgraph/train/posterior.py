"""Posterior inference for a hidden node: candidates for its output, weighted by evidence.

For hidden node v and example i, the candidates are the forward output plus K samples from
q(h_v | inputs, children's prompts and targets), or every other class of a class node. Weights:
w_k ∝ exp((Σ_{c ∈ children(v)} log p(t_c | inputs of c with h_v := h_k, π_c)
           + log p(h_k | inputs of v, π_v)) / τ); the best candidate becomes v's target.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import attrs

from dlgraph._tasks import map_concurrently
from dlgraph.engine import Engine
from dlgraph.forward import Trace
from dlgraph.graph import Graph
from dlgraph.nodes import NodeCall, describe_inputs
from dlgraph.scoring import entropy, normalize_log_scores
from dlgraph.templates import Template
from dlgraph.train.options import TrainerOptions
from dlgraph.train.scorers import Scorer


@attrs.frozen
class ChildView:
    prompt: str
    target: str


@attrs.frozen
class Posterior:
    """Per example, the candidate outputs of one hidden node and their weights."""

    candidates: tuple[tuple[str, ...], ...]
    weights: tuple[tuple[float, ...], ...]

    @property
    def targets(self) -> list[str]:
        return [
            candidates[max(range(len(weights)), key=weights.__getitem__)]
            for candidates, weights in zip(self.candidates, self.weights, strict=True)
        ]

    @property
    def mean_entropy(self) -> float:
        return sum(entropy(w) for w in self.weights) / len(self.weights)

    @classmethod
    def point(cls, outputs: Sequence[str]) -> Posterior:
        """No inference: the forward outputs, each with weight one."""
        return cls(tuple((o,) for o in outputs), tuple((1.0,) for _ in outputs))


async def sample_candidates(
    net: Graph,
    name: str,
    trace: Trace,
    targets: Mapping[str, Sequence[str]],
    engine: Engine,
    options: TrainerOptions,
) -> list[list[str]]:
    """Per example, the forward output and the outputs the node's kind offers in its place."""
    node = net.node(name)
    template = Template.load("posterior")

    async def candidates(i: int) -> list[str]:
        prompt = template.render(
            input=describe_inputs(net.parent_values(name, trace.values(i))),
            output=trace.outputs[name][i],
            children=[ChildView(net.node(c).prompt, targets[c][i]) for c in net.children(name)],
        )
        call = NodeCall(engine=engine, phase="posterior", temperature=options.sample_temperature)
        return await node.kind.posterior_candidates(
            node, trace.outputs[name][i], prompt, options.num_hidden_samples, call
        )

    return await map_concurrently(candidates, range(len(trace)))


async def infer(
    net: Graph,
    name: str,
    trace: Trace,
    targets: Mapping[str, Sequence[str]],
    engine: Engine,
    scorer: Scorer,
    options: TrainerOptions,
) -> Posterior:
    """Candidates and weights for hidden node `name`; its children's targets must be set."""
    candidates = await sample_candidates(net, name, trace, targets, engine, options)
    jobs = [(i, k) for i, cands in enumerate(candidates) for k in range(len(cands))]

    async def evidence(job: tuple[int, int]) -> float:
        i, k = job
        values = trace.values(i) | {name: candidates[i][k]}
        total = 0.0
        if options.posterior_likelihood:
            for child in net.children(name):
                total += await scorer.loglik(
                    net, child, values, targets[child][i], phase="posterior"
                )
        if options.posterior_prior:
            total += await scorer.loglik(
                net, name, trace.values(i), candidates[i][k], phase="posterior"
            )
        return total

    scores = await map_concurrently(evidence, jobs)
    per_example: list[list[float]] = [[] for _ in candidates]
    for (i, _), score in zip(jobs, scores, strict=True):
        per_example[i].append(score / options.posterior_temperature)
    return Posterior(
        tuple(tuple(c) for c in candidates),
        tuple(tuple(normalize_log_scores(s)) for s in per_example),
    )
