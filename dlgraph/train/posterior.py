"""Posterior inference for a hidden node: candidates for its output, weighted by evidence.

For hidden node v and example i, the candidates are the forward output plus K samples from
q(h_v | inputs, children's prompts and targets) (every class, for a class node). Weights:
w_k ∝ exp((Σ_{c ∈ children(v)} log p(t_c | inputs of c with h_v := h_k, π_c)
           + log p(h_k | inputs of v, π_v)) / τ); the best candidate becomes v's target.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import attrs

from dlgraph._tasks import map_concurrently
from dlgraph.engine import Engine
from dlgraph.forward import Trace
from dlgraph.network import Network
from dlgraph.scoring import entropy, normalize_log_scores
from dlgraph.templates import Template
from dlgraph.train.elbo import Scorer
from dlgraph.train.options import TrainerOptions


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
    net: Network,
    name: str,
    trace: Trace,
    targets: Mapping[str, Sequence[str]],
    engine: Engine,
    options: TrainerOptions,
) -> list[list[str]]:
    """The forward output plus K samples per example (all classes for a class node)."""
    node = net.node(name)
    forward_outputs = trace.outputs[name]
    if node.classes:
        return [[o] + [c for c in node.class_names if c != o] for o in forward_outputs]
    template = Template.load("posterior")
    prompts = [
        template.render(
            input=net.describe_inputs(name, trace.values(i)),
            output=forward_outputs[i],
            children=[ChildView(net.node(c).prompt, targets[c][i]) for c in net.children(name)],
        )
        for i in range(len(trace))
    ]
    jobs = [(i, k) for i in range(len(trace)) for k in range(options.num_hidden_samples)]

    async def sample(job: tuple[int, int]) -> str:
        i, k = job
        text = await engine.generate(
            prompts[i],
            max_tokens=node.max_tokens,
            temperature=options.sample_temperature,
            stop=node.stop,
            seed=k,
            node=name,
            phase="posterior",
        )
        return text.strip()

    samples = await map_concurrently(sample, jobs)
    candidates = [[o] for o in forward_outputs]
    for (i, _), text in zip(jobs, samples, strict=True):
        candidates[i].append(text)
    return candidates


async def infer(
    net: Network,
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
