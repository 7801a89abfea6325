"""What a training run will spend, bounded before any call is made: its calls, in the waves
the trainer sends them (which `Pace` turns into a wall time), and their tokens.

The calls are the step's own description (`dlgraph.train.plan`): the phases of every step
counted over a `Plan` of it, with a dev evaluation before the first step and after each
step that evaluates.
"""

from __future__ import annotations

from collections.abc import Sequence

from dlgraph.data.example import Example
from dlgraph.graph import Graph
from dlgraph.train.plan import Plan, forward_waves
from dlgraph.train.records import Estimate
from dlgraph.train.run import Schedule
from dlgraph.train.step import StepPhase, StepSetup
from dlgraph.train.waves import Wave


def forward_pass(net: Graph, examples: int) -> list[Wave]:
    """An evaluation outside the steps: a forward pass over `examples` inputs."""
    return forward_waves(net, examples, "eval")


def run_waves(
    phases: Sequence[StepPhase], setup: StepSetup, schedule: Schedule, batch: int, dev_size: int
) -> list[Wave]:
    """Every step's phases over its plan, between the dev evaluations."""
    evaluation = forward_pass(setup.net, dev_size)
    waves = list(evaluation)
    for step in range(1, schedule.steps + 1):
        plan = Plan(setup, batch, step)
        waves += [each for phase in phases for each in phase.waves(plan)]
        if schedule.evaluates_after(step):
            waves += evaluation
    return waves


def estimate(
    phases: Sequence[StepPhase],
    setup: StepSetup,
    schedule: Schedule,
    train: Sequence[Example],
    dev_size: int,
) -> Estimate:
    """Upper bounds on calls and tokens (no cache hits, no pruning of light candidates); with
    a separate backward engine its share is counted apart."""
    batch = schedule.batch_size if not train else min(schedule.batch_size, len(train))
    waves = tuple(run_waves(phases, setup, schedule, batch, dev_size))
    forward = sum(w.calls for w in waves if not w.backward)
    backward = sum(w.calls for w in waves if w.backward)
    per_call, per_proposal = _tokens_per_call(setup, train, batch)
    if setup.backward is setup.engine:
        calls = forward + backward
        return Estimate(calls=calls, tokens=calls * per_call, waves=waves)
    return Estimate(
        calls=forward,
        tokens=forward * per_call,
        backward_calls=backward,
        backward_tokens=backward * per_proposal,
        waves=waves,
    )


def _tokens_per_call(setup: StepSetup, train: Sequence[Example], batch: int) -> tuple[int, int]:
    """Tokens of a call on the forward engine (an input with its demonstrations), and of one
    on the backward engine (a proposal: a batch of inputs in, an instruction out)."""
    backend, options = setup.engine.backend, setup.options
    sample = train[:50]
    per_input = (
        backend.count_tokens(" ".join(e.input for e in sample)) // len(sample) if sample else 64
    )
    longest_prompt = max(backend.count_tokens(node.prompt) for node in setup.net.nodes.values())
    per_call = per_input * (1 + options.max_demonstrations) + longest_prompt + 64
    return per_call, per_input * batch + longest_prompt + options.proposal_max_tokens
