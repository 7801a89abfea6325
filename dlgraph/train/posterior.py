"""Posterior inference for a hidden node: candidates for its output, weighted by evidence.

For hidden node v and example i, the candidates are the forward output plus K samples from
q(h_v | inputs, children's prompts and targets), or every other class of a class node. Weights:
w_k ∝ exp((Σ_{c ∈ children(v)} log p(t_c | inputs of c with h_v := h_k, π_c)
           + log p(h_k | inputs of v, π_v)) / τ); the best candidate becomes v's target.

The posterior phase of one hidden node sends two waves: the samples, on the backward engine,
then every candidate's evidence, on the forward one.
"""

from __future__ import annotations

import attrs

from dlgraph._tasks import map_concurrently
from dlgraph.engine import Engine
from dlgraph.graph import Graph
from dlgraph.nodes import NodeCall, describe_inputs
from dlgraph.scoring import normalize_log_scores
from dlgraph.templates import Template
from dlgraph.train.options import TrainerOptions
from dlgraph.train.step import Posterior, Probe, Sizes, StandIn, StepSetup, StepState
from dlgraph.train.waves import Calls, Count, Wave, action, wave


@attrs.frozen
class ChildView:
    prompt: str
    target: str


def posterior_size(net: Graph, name: str, options: TrainerOptions) -> int:
    """Candidates the posterior of hidden node `name` weighs per example (one, the forward
    output, without posterior inference)."""
    return (
        net.node(name).kind.posterior_size(options.num_hidden_samples)
        if options.use_posterior
        else 1
    )


def evidence_nodes(net: Graph, name: str, options: TrainerOptions) -> list[str]:
    """The nodes scored to weigh a candidate of hidden node `name`, in the order they are:
    its children (how well they reach their targets), then the node itself (its prior)."""
    children = net.children(name) if options.posterior_likelihood else []
    return [*children, *([name] if options.posterior_prior else [])]


@attrs.frozen
class PosteriorPhase:
    """Hidden node `name`'s posterior, its targets and weights, from its children's targets
    (so the phases of hidden nodes run in reverse topological order)."""

    setup: StepSetup
    name: str
    template: Template = attrs.field(factory=lambda: Template.load("posterior"), init=False)

    async def run(self, state: StepState) -> None:
        name, trace = self.name, state.trace
        if self.setup.options.use_posterior:
            with self.setup.engine.tracer.span("posterior", name, node=name):
                posterior = await self._infer(state, await self._sample(state))
        else:
            posterior = Posterior.point(trace.outputs[name])
        state.posteriors[name] = posterior
        state.targets[name] = posterior.targets

    def waves(self, sizes: Sizes) -> list[Wave]:
        """The samples, then every candidate's evidence. (The forward output's evidence
        from a class child repeats the forward pass, which a cache answers; the expected
        figure still counts it.)"""
        setup, name = self.setup, self.name
        if not setup.options.use_posterior:
            return []
        samples = setup.net.node(name).kind.posterior_draws(setup.options.num_hidden_samples)
        candidates = sizes.examples * posterior_size(setup.net, name, setup.options)
        evidence = [
            self._scores(scored, candidates)
            for scored in evidence_nodes(setup.net, name, setup.options)
        ]
        draws = Calls(name, "posterior", "generate", Count(sizes.examples * samples))
        return wave(True, [draws]) + wave(False, evidence)

    def _scores(self, name: str, count: int) -> Calls:
        """`count` scores of node `name`."""
        cost = self.setup.scorer.cost(self.setup.net.node(name).kind)
        return Calls(name, "posterior", action(cost), Count(count * cost.calls))

    def probe(self, wave: Wave, stand_in: StandIn) -> Probe:
        """One posterior sample (on the backward engine), or one candidate's evidence from
        the first node the wave scores."""
        setup, node = self.setup, self.setup.net.node(wave.parts[0].node)

        async def sample(tag: int) -> int:
            state = stand_in(tag)
            call = self._call(setup.engine_for(wave))
            await node.kind.posterior_candidates(
                node, state.trace.outputs[node.name][0], self._prompt(state, 0), 1, call
            )
            return node.kind.posterior_draws(1)

        async def evidence(tag: int) -> int:
            state = stand_in(tag)
            values, target = state.trace.values(0), state.targets[node.name][0]
            await setup.scorer.loglik(setup.net, node.name, values, target, phase="posterior")
            return setup.scorer.cost(node.kind).calls

        return sample if wave.backward else evidence

    def _call(self, engine: Engine) -> NodeCall:
        return NodeCall(
            engine=engine, phase="posterior", temperature=self.setup.options.sample_temperature
        )

    def _prompt(self, state: StepState, i: int) -> str:
        """The posterior template for example `i`: the node's input and output, and what
        each child is asked and should answer."""
        net, name = self.setup.net, self.name
        return self.template.render(
            input=describe_inputs(net.parent_values(name, state.trace.values(i))),
            output=state.trace.outputs[name][i],
            children=[
                ChildView(net.node(c).prompt, state.targets[c][i]) for c in net.children(name)
            ],
        )

    async def _sample(self, state: StepState) -> list[list[str]]:
        """Per example, the forward output and the outputs the node's kind offers in its place."""
        node, call = self.setup.net.node(self.name), self._call(self.setup.backward)

        async def candidates(i: int) -> list[str]:
            output = state.trace.outputs[self.name][i]
            samples = self.setup.options.num_hidden_samples
            return await node.kind.posterior_candidates(
                node, output, self._prompt(state, i), samples, call
            )

        return await map_concurrently(candidates, range(state.examples))

    async def _infer(self, state: StepState, candidates: list[list[str]]) -> Posterior:
        """Weights of the candidates from their evidence; the children's targets must be set."""
        jobs = [(i, k) for i, cands in enumerate(candidates) for k in range(len(cands))]

        async def evidence(job: tuple[int, int]) -> float:
            i, k = job
            return await self._evidence(state, i, candidates[i][k])

        scores = await map_concurrently(evidence, jobs)
        per_example: list[list[float]] = [[] for _ in candidates]
        for (i, _), score in zip(jobs, scores, strict=True):
            per_example[i].append(score / self.setup.options.posterior_temperature)
        return Posterior(
            tuple(tuple(c) for c in candidates),
            tuple(tuple(normalize_log_scores(s)) for s in per_example),
        )

    async def _evidence(self, state: StepState, i: int, candidate: str) -> float:
        """The log-likelihood of the children's targets with `candidate` as the node's output
        on example `i`, plus the candidate's own under the node's prompt (its prior)."""
        net, name, scorer = self.setup.net, self.name, self.setup.scorer
        values = state.trace.values(i) | {name: candidate}
        total = 0.0
        for node in evidence_nodes(net, name, self.setup.options):
            if node == name:
                inputs = state.trace.values(i)
                total += await scorer.loglik(net, name, inputs, candidate, phase="posterior")
            else:
                target = state.targets[node][i]
                total += await scorer.loglik(net, node, values, target, phase="posterior")
        return total
