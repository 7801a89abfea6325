"""A step, described once: its phases in order, each able to run and to say what it will
send, and the sizes they are counted from before the run.

The trainer runs the phases in order (`step_phases`), as micrograd's backward() walks the
graph; `estimate` sums their waves over a `Plan` of each step of a run; `pace` times the
actions those waves hold, each with a probe the phase builds from its own request builders.
The forward pass is the first phase; the dev evaluation around the steps is a forward pass
too (`forward_waves` with phase ``eval``).
"""

from __future__ import annotations

import random

import attrs

from dlgraph.backend import Capabilities, Phase
from dlgraph.forward import forward, run_node
from dlgraph.graph import Graph
from dlgraph.train.candidates import Memory, other_candidates
from dlgraph.train.elbo import ScorePhase, term_count
from dlgraph.train.posterior import PosteriorPhase
from dlgraph.train.proposals import Fits, ProposePhase
from dlgraph.train.race import Race
from dlgraph.train.step import Probe, Scores, Sizes, StandIn, StepPhase, StepSetup, StepState
from dlgraph.train.waves import Calls, Count, Wave, action, wave


def forward_waves(
    net: Graph, capabilities: Capabilities, examples: int, phase: Phase, share: float = 1.0
) -> list[Wave]:
    """A forward pass over `examples` inputs on a backend that can do `capabilities`: one
    wave per depth (the calls a forward pass sends together, deeper ones first under a rate
    limit), each node's runs on every input; a `share` of the inputs expected (a dev
    comparison that stops once decided)."""
    depths: dict[int, list[Calls]] = {}
    expected = round(examples * share)
    for name in net.topological_order():
        cost = net.node(name).kind.run_cost(capabilities)
        count = Count(examples, expected).times(cost)
        calls = Calls(name, phase, action(cost), count)
        depths.setdefault(net.depth(name), []).append(calls)
    return [each for depth in sorted(depths) for each in wave(False, depths[depth])]


@attrs.frozen
class ForwardPhase:
    """Every node on every example of the batch, at temperature 0: the trace the other
    phases read."""

    setup: StepSetup

    async def run(self, state: StepState) -> None:
        inputs = [example.input for example in state.batch]
        state.trace = await forward(self.setup.net, self.setup.engine, inputs)

    def waves(self, sizes: Sizes) -> list[Wave]:
        setup = self.setup
        return forward_waves(setup.net, setup.capabilities, sizes.examples, "forward")

    def probe(self, wave: Wave, stand_in: StandIn) -> Probe:
        """One run of the wave's first node, as the forward pass runs it."""
        net, name = self.setup.net, wave.parts[0].node

        async def one(tag: int) -> int:
            values = stand_in(tag).trace.values(0)
            await run_node(net, self.setup.engine_for(wave), name, values, phase="forward")
            return net.node(name).kind.run_cost(self.setup.capabilities).expected

        return one


def step_phases(
    setup: StepSetup, *, memory: Memory, rng: random.Random, step: int, fits: Fits
) -> list[StepPhase]:
    """A step's phases in the order they run: the forward pass, each hidden node's posterior
    in reverse topological order (a node's children have their targets first), the proposals
    and the candidates' scores. `step` counts the steps done before this one."""
    posteriors = [PosteriorPhase(setup, name) for name in reversed(setup.net.hidden_nodes())]
    return [
        ForwardPhase(setup),
        *posteriors,
        ProposePhase(setup, memory, rng, step, fits),
        ScorePhase(setup),
    ]


@attrs.frozen
class Plan:
    """The sizes of step `step` (from 1) of a run, known before it: a batch of `examples`,
    every candidate a node may have (at most) and those it will have by then, scored on the
    share of the batch a race is expected to reach (expected)."""

    setup: StepSetup
    examples: int
    step: int

    def scores(self, name: str) -> Scores:
        setup = self.setup
        terms = term_count(setup.net, name, setup.options)
        has_demonstrations = bool(setup.net.node(name).demonstrations)
        others = other_candidates(setup.options, self.step, self.examples, has_demonstrations)
        share = Race.of(setup.options).expected_share(self.examples)
        raced = Count(others.calls, round(others.expected * share))
        each = ScorePhase(setup).example_cost(name, terms)
        return Scores(Count(self.examples).times(each), raced.times(each))
