"""Prompt proposals: new instructions for a node, written by the backward model, and the
step's propose phase, which makes every trained node's candidates from them.

Each sample shows the current prompt and a shuffled part of the batch (what the node read,
what it produced, its target, whether it was right) with one of several rewrite
instructions, rotating from sample to sample and step to step.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import attrs

from dlgraph._tasks import map_concurrently
from dlgraph.engine import Engine
from dlgraph.forward import Trace
from dlgraph.nodes import Parameter, describe_inputs
from dlgraph.templates import Template
from dlgraph.train.candidates import Memory, candidate_parameters, demonstration_sets
from dlgraph.train.options import TrainerOptions
from dlgraph.train.step import Probe, Sizes, StandIn, StepSetup, StepState
from dlgraph.train.waves import Calls, Count, Wave, wave

REWRITES = (
    "Write an improved instruction that makes the model produce the expected output on every example above.",
    "Rewrite the instruction so that the wrong examples become right and the right ones stay right.",
    "State the rule that maps each input to its expected output, as an instruction.",
    "Write a short, precise instruction that a careful reader could follow to get every expected output.",
    "Add to the instruction the hints a beginner would need to get the wrong examples right.",
    "Write a new instruction from scratch, looking only at the inputs and their expected outputs.",
)

END = "[/instruction]"
"""Where a proposal ends: the proposal template opens ``[instruction]`` and asks for this."""


@attrs.frozen
class ShownExample:
    input: str
    output: str
    target: str
    is_correct: bool


@attrs.frozen
class ProposalRequest:
    """One proposal sample to draw: its rendered prompt and its sample index."""

    node: str
    prompt: str
    seed: int


def proposal_requests(
    setup: StepSetup, name: str, state: StepState, rng: random.Random, step: int
) -> list[ProposalRequest]:
    """Render the proposal prompts for one node at step `step` (from 0); draws from `rng` in a
    fixed order."""
    net, options = setup.net, setup.options
    node = net.node(name)
    template = Template.load("propose")
    size = state.examples
    shown = max(1, math.ceil(size / 2)) if options.proposal_half_batch else size
    outputs, targets = state.trace.outputs[name], state.targets[name]
    examples = [
        ShownExample(
            describe_inputs(net.parent_values(name, state.trace.values(i))),
            outputs[i],
            targets[i],
            node.kind.is_correct(outputs[i], targets[i]),
        )
        for i in range(size)
    ]
    requests = []
    for sample in range(options.num_prompt_samples):
        chosen = rng.sample(examples, shown)
        rewrite = REWRITES[(step * options.num_prompt_samples + sample) % len(REWRITES)]
        text = template.render(prompt=node.prompt, examples=chosen, rewrite=rewrite)
        requests.append(ProposalRequest(name, text, sample))
    return requests


async def propose(engine: Engine, request: ProposalRequest, options: TrainerOptions) -> str:
    """One proposal sample, written by `engine` (the backward one), as an instruction."""
    text = await engine.generate(
        request.prompt,
        max_tokens=options.proposal_max_tokens,
        temperature=options.sample_temperature,
        stop=(END,),
        seed=request.seed,
        node=request.node,
        phase="propose",
    )
    return clean_proposal(text)


def clean_proposal(text: str) -> str:
    return text.split(END)[0].strip()


Fits = Callable[[str, Parameter, Trace], bool]
"""Whether a candidate parameter of a node keeps its input within the model's context window."""


@attrs.frozen
class ProposePhase:
    """Candidates for every trained node: the current and remembered parameters,
    instructions proposed by the backward engine (one wave) with the current demonstrations,
    and the current instruction with demonstration sets drawn from the batch or with none."""

    setup: StepSetup
    memory: Memory
    rng: random.Random
    step: int
    """Steps done before this one: the rewrite instructions rotate with it."""
    fits: Fits

    async def run(self, state: StepState) -> None:
        with self.setup.engine.tracer.span("propose"):
            state.candidates = await self._candidates(state)

    async def _candidates(self, state: StepState) -> dict[str, list[Parameter]]:
        setup, trainable = self.setup, self.setup.trainable
        requests = [
            request
            for name in trainable
            for request in proposal_requests(setup, name, state, self.rng, self.step)
        ]
        shown = {
            name: demonstration_sets(setup.net, name, state, setup.options, self.rng)
            for name in trainable
        }
        proposed = await map_concurrently(
            lambda request: propose(setup.backward, request, setup.options), requests
        )
        return {
            name: [
                candidate
                for candidate in candidate_parameters(
                    setup.net.node(name).parameter,
                    self.memory.parameters(name),
                    [text for r, text in zip(requests, proposed, strict=True) if r.node == name],
                    shown[name],
                )
                if self.fits(name, candidate, state.trace)
            ]
            for name in trainable
        }

    def waves(self, sizes: Sizes) -> list[Wave]:
        """Every trained node's proposals together, on the backward engine."""
        samples = Count(self.setup.options.num_prompt_samples)
        return wave(
            True, [Calls(name, "propose", "propose", samples) for name in self.setup.trainable]
        )

    def probe(self, wave: Wave, stand_in: StandIn) -> Probe:
        """One proposal for the wave's first node, on a stand-in batch."""

        async def one(tag: int) -> int:
            state = stand_in(tag)
            requests = proposal_requests(
                self.setup, wave.parts[0].node, state, random.Random(tag), 0
            )
            await propose(self.setup.engine_for(wave), requests[0], self.setup.options)
            return 1

        return one
