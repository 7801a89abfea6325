"""What a training run will spend, bounded before any call is made: its calls, in the waves
the trainer sends them (which `Pace` turns into a wall time), and their tokens.

The calls are the step's own description (`dlgraph.train.plan`): the phases of every step
counted over a `Plan` of it, with a dev evaluation before the first step and after each
step that evaluates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from dlgraph.backend import Capabilities
from dlgraph.data.example import Example
from dlgraph.graph import Graph
from dlgraph.train.plan import Plan, forward_waves
from dlgraph.train.race import Race
from dlgraph.train.records import Estimate
from dlgraph.train.run import Schedule
from dlgraph.train.step import StepPhase, StepSetup
from dlgraph.train.waves import Wave, scaled


def forward_pass(net: Graph, capabilities: Capabilities, examples: int) -> list[Wave]:
    """An evaluation outside the steps: a forward pass over `examples` inputs, on a backend
    that can do `capabilities`."""
    return forward_waves(net, capabilities, examples, "eval")


def step_waves(
    phases: Sequence[StepPhase],
    setup: StepSetup,
    batch: int,
    step: int,
    dev_size: int,
    evaluates: bool,
) -> list[Wave]:
    """Step `step`'s phases over its plan, and the comparison with the best network on dev
    after it when it `evaluates`, as the prior expects them."""
    waves = [each for phase in phases for each in phase.waves(Plan(setup, batch, step))]
    if evaluates:
        share = Race.of(setup.options).dev_share
        waves += forward_waves(setup.net, setup.capabilities, dev_size, "eval", share)
    return waves


def run_waves(
    phases: Sequence[StepPhase],
    setup: StepSetup,
    schedule: Schedule,
    batch: int,
    dev_size: int,
    factors: Mapping[str, float],
) -> list[Wave]:
    """The first dev evaluation, whole, then every step's waves, their expected calls scaled
    by phase as the run so far went (`factors`; none before the run)."""
    waves = forward_pass(setup.net, setup.capabilities, dev_size)
    for step in range(1, schedule.steps + 1):
        evaluates = schedule.evaluates_after(step)
        waves += scaled(step_waves(phases, setup, batch, step, dev_size, evaluates), factors)
    return waves


def estimate(
    phases: Sequence[StepPhase],
    setup: StepSetup,
    schedule: Schedule,
    train: Sequence[Example],
    dev_size: int,
    factors: Mapping[str, float] | None = None,
) -> Estimate:
    """Upper bounds on calls and tokens (no cache hits, no pruning of light candidates, no
    race or comparison stopped early), and the calls and tokens expected: the prior's (races
    and comparisons stopping at the shares `dlgraph.train.race` states), scaled by phase by
    `factors` (what a run sent so far over the prior, `Tally.factors`); with a separate
    backward engine its share is counted apart."""
    batch = schedule.batch_size if not train else min(schedule.batch_size, len(train))
    waves = tuple(run_waves(phases, setup, schedule, batch, dev_size, factors or {}))
    per_call, per_proposal = _tokens_per_call(setup, train, batch)
    one_engine = setup.backward is setup.engine
    forward = [w for w in waves if one_engine or not w.backward]
    backward = [w for w in waves if not one_engine and w.backward]
    calls, expected = sum(w.calls for w in forward), sum(w.expected for w in forward)
    return Estimate(
        calls=calls,
        tokens=calls * per_call,
        expected_calls=expected,
        expected_tokens=expected * per_call,
        backward_calls=sum(w.calls for w in backward),
        backward_tokens=sum(w.calls for w in backward) * per_proposal,
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
