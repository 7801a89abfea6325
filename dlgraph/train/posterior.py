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
        """The samples, then every candidate's evidence."""
        setup, name = self.setup, self.name
        if not setup.options.use_posterior:
            return []
        kind, samples = setup.net.node(name).kind, setup.options.num_hidden_samples
        draws = kind.posterior_draws(samples, setup.backward.backend.capabilities)
        size = posterior_size(setup.net, name, setup.options)
        evidence = [
            self._scores(scored, sizes.examples, size)
            for scored in evidence_nodes(setup.net, name, setup.options)
        ]
        calls = Calls(name, "posterior", "sample", Count(sizes.examples * draws))
        return wave(True, [calls]) + wave(False, evidence)

    def _scores(self, scored: str, examples: int, size: int) -> Calls:
        """Node `scored`'s evidence for `size` candidates on each of `examples` examples: the
        node itself scores all its candidates on the same inputs at once (its prior), a child
        each candidate as its input. Where a score is a run (a class node), a cache answers
        what repeats the forward pass: the prior, and a child's score of the first candidate,
        the forward output."""
        setup = self.setup
        kind = setup.net.node(scored).kind
        repeats = setup.cached and setup.scorer.repeats_run(kind)
        if scored == self.name:  # a class node's prior is the distribution its run read
            cost = setup.scorer.cost(kind, size)
            count = Count(examples, 0 if repeats else examples).times(cost)
            return Calls(scored, "posterior", action(cost), count)
        cost = setup.scorer.cost(kind)
        count = Count(examples * size, examples * (size - repeats)).times(cost)
        return Calls(scored, "posterior", action(cost), count)

    def probe(self, wave: Wave, stand_in: StandIn) -> Probe:
        """One example's posterior samples, as the step draws them (on the backward engine:
        one call where it draws several of one prompt, which in process decodes them all),
        or one candidate's evidence from the first node the wave scores."""
        setup, node = self.setup, self.setup.net.node(wave.parts[0].node)

        async def sample(tag: int) -> int:
            state, engine = stand_in(tag), setup.engine_for(wave)
            samples = setup.options.num_hidden_samples
            output, prompt = state.trace.outputs[node.name][0], self._prompt(state, 0)
            await node.kind.posterior_candidates(node, output, prompt, samples, self._call(engine))
            return node.kind.posterior_draws(samples, engine.backend.capabilities)

        async def evidence(tag: int) -> int:
            state = stand_in(tag)
            values, target = state.trace.values(0), state.targets[node.name][0]
            await setup.scorer.loglik(setup.net, node.name, values, target, phase="posterior")
            return setup.scorer.cost(node.kind).expected

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
        temperature = self.setup.options.posterior_temperature

        async def weights(i: int) -> tuple[float, ...]:
            evidence = await self._evidence(state, i, candidates[i])
            return tuple(normalize_log_scores([e / temperature for e in evidence]))

        return Posterior(
            tuple(tuple(c) for c in candidates),
            tuple(await map_concurrently(weights, range(len(candidates)))),
        )

    async def _evidence(self, state: StepState, i: int, candidates: list[str]) -> list[float]:
        """For each candidate output of the node on example `i`: the log-likelihood of the
        children's targets with it as the node's output, plus its own under the node's
        prompt (its prior; every candidate's in as few calls as the backend allows)."""
        net, name, scorer = self.setup.net, self.name, self.setup.scorer
        inputs = state.trace.values(i)

        async def terms(node: str) -> list[float]:
            if node == name:
                return await scorer.logliks(net, name, inputs, candidates, phase="posterior")
            target = state.targets[node][i]

            async def likelihood(candidate: str) -> float:
                values = inputs | {name: candidate}
                return await scorer.loglik(net, node, values, target, phase="posterior")

            return await map_concurrently(likelihood, candidates)

        by_node = await map_concurrently(terms, evidence_nodes(net, name, self.setup.options))
        return [sum(column, 0.0) for column in zip(*by_node, strict=True)] or [0.0] * len(
            candidates
        )
