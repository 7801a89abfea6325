"""What a training run will spend, bounded before any call is made: its calls, in the waves
the trainer sends them (which `Pace` turns into a wall time), and their tokens."""

from __future__ import annotations

from collections.abc import Sequence

from dlgraph.backend import Backend
from dlgraph.data.example import Example
from dlgraph.graph import Graph
from dlgraph.train.options import TrainerOptions
from dlgraph.train.pace import Wave
from dlgraph.train.records import Estimate
from dlgraph.train.run import Schedule


def _posterior_size(net: Graph, name: str, options: TrainerOptions) -> int:
    """Candidates a hidden node's posterior weighs per example."""
    outputs = net.node(name).kind.outputs()
    return len(outputs) if outputs is not None else options.num_hidden_samples + 1


def _candidates(options: TrainerOptions) -> int:
    """Candidate parameters per trained node and step, at most."""
    return 2 + options.memory_size + _new_candidates(options)


def _new_candidates(options: TrainerOptions) -> int:
    """Candidates a step adds: proposals and demonstration sets."""
    demonstration_sets = options.num_demonstration_samples if options.max_demonstrations else 0
    return options.num_prompt_samples + demonstration_sets


def _expected_candidates(options: TrainerOptions, step: int, current_cached: bool) -> int:
    """Candidates whose scores step `step` (from 1) will ask the model for: the new ones,
    the remembered ones (memory fills as steps go), and the current one unless the forward
    pass has already scored it on these very inputs."""
    remembered = min(options.memory_size, (step - 1) * _new_candidates(options))
    return _new_candidates(options) + remembered + (0 if current_cached else 1)


def forward_pass(net: Graph, examples: int) -> list[Wave]:
    """A forward pass over `examples` inputs: one wave per depth, a node's calls for all
    inputs in it (class nodes score, text nodes write)."""
    calls: dict[int, int] = {}
    writes: set[int] = set()
    for name, node in net.nodes.items():
        depth = net.depth(name)
        calls[depth] = calls.get(depth, 0) + examples * node.kind.run_cost().calls
        if node.kind.outputs() is None:
            writes.add(depth)
    return [
        Wave(False, "generate" if depth in writes else "score", calls[depth])
        for depth in sorted(calls)
    ]


def step_waves(
    net: Graph, options: TrainerOptions, trainable: Sequence[str], batch: int, step: int
) -> list[Wave]:
    """Step `step` (from 1): the forward pass, each hidden node's posterior (samples, then
    their evidence), the proposals, then every candidate's ELBO."""
    waves = forward_pass(net, batch)
    size = {name: _posterior_size(net, name, options) for name in net.hidden_nodes()}
    if options.use_posterior:
        for name in reversed(net.hidden_nodes()):
            if net.node(name).kind.outputs() is None:
                waves.append(Wave(True, "generate", batch * (size[name] - 1)))
            evidence = sum(net.node(c).kind.score_cost().calls for c in net.children(name)) + 1
            waves.append(Wave(False, "score", batch * size[name] * evidence))
    waves.append(Wave(True, "propose", options.num_prompt_samples * len(trainable)))
    scores = expected = 0
    for name in trainable:
        terms = max([size.get(name, 1), *(size.get(p, 1) for p in net.parents(name))])
        per_candidate = batch * terms * net.node(name).kind.score_cost().calls
        scores += _candidates(options) * per_candidate
        expected += _expected_candidates(options, step, terms == 1) * per_candidate
    waves.append(Wave(False, "score", scores, expected))
    return waves


def estimate(
    net: Graph,
    options: TrainerOptions,
    trainable: Sequence[str],
    backend: Backend,
    schedule: Schedule,
    train: Sequence[Example],
    dev_size: int,
    *,
    separate_backward: bool = False,
) -> Estimate:
    """Upper bounds on calls and tokens (no cache hits, no pruning of light candidates); with
    `separate_backward` the backward engine's share is counted apart."""
    batch = schedule.batch_size if not train else min(schedule.batch_size, len(train))
    waves = forward_pass(net, dev_size)
    for step in range(1, schedule.steps + 1):
        waves += step_waves(net, options, trainable, batch, step)
        if schedule.evaluates_after(step):
            waves += forward_pass(net, dev_size)
    forward = sum(w.calls for w in waves if not w.backward)
    backward = sum(w.calls for w in waves if w.backward)
    sample = train[:50]
    per_input = (
        backend.count_tokens(" ".join(e.input for e in sample)) // len(sample) if sample else 64
    )
    longest_prompt = max(backend.count_tokens(node.prompt) for node in net.nodes.values())
    per_call = per_input * (1 + options.max_demonstrations) + longest_prompt + 64
    if not separate_backward:
        return Estimate(
            calls=forward + backward, tokens=(forward + backward) * per_call, waves=tuple(waves)
        )
    return Estimate(
        calls=forward,
        tokens=forward * per_call,
        backward_calls=backward,
        backward_tokens=backward
        * (per_input * batch + longest_prompt + options.proposal_max_tokens),
        waves=tuple(waves),
    )
