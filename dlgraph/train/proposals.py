"""Prompt proposals: new instructions for a node, written by the backward model.

Each sample shows the current prompt and a shuffled part of the batch (what the node read,
what it produced, its target, whether it was right) with one of several rewrite
instructions, rotating from sample to sample and step to step.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence

import attrs

from dlgraph.forward import Trace
from dlgraph.graph import Graph
from dlgraph.nodes import describe_inputs
from dlgraph.templates import Template
from dlgraph.train.options import TrainerOptions

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
    net: Graph,
    name: str,
    trace: Trace,
    targets: Mapping[str, Sequence[str]],
    options: TrainerOptions,
    rng: random.Random,
    step: int,
) -> list[ProposalRequest]:
    """Render the proposal prompts for one node; draws from `rng` in a fixed order."""
    node = net.node(name)
    template = Template.load("propose")
    size = len(trace)
    shown = max(1, math.ceil(size / 2)) if options.proposal_half_batch else size
    examples = [
        ShownExample(
            describe_inputs(net.parent_values(name, trace.values(i))),
            trace.outputs[name][i],
            targets[name][i],
            node.kind.is_correct(trace.outputs[name][i], targets[name][i]),
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


def clean_proposal(text: str) -> str:
    return text.split(END)[0].strip()
