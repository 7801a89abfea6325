"""What a training run will spend, bounded before any call is made."""

from __future__ import annotations

from collections.abc import Sequence

from dlgraph.backend import Backend
from dlgraph.data.example import Example
from dlgraph.graph import Graph
from dlgraph.train.options import TrainerOptions
from dlgraph.train.records import Estimate
from dlgraph.train.run import RunSettings


def _posterior_size(net: Graph, name: str, options: TrainerOptions) -> int:
    """Candidates a hidden node's posterior weighs per example."""
    outputs = net.node(name).kind.outputs()
    return len(outputs) if outputs is not None else options.num_hidden_samples + 1


def _candidates(options: TrainerOptions) -> int:
    """Candidate parameters per trained node and step, at most."""
    demonstration_sets = options.num_demonstration_samples if options.max_demonstrations else 0
    return 2 + options.memory_size + options.num_prompt_samples + demonstration_sets


def _calls_per_step(
    net: Graph, options: TrainerOptions, trainable: Sequence[str], batch: int
) -> tuple[int, int]:
    """(calls on the forward engine, calls on the backward engine) of one step."""
    hidden = net.hidden_nodes()
    size = {name: _posterior_size(net, name, options) for name in hidden}
    forward = batch * sum(net.node(name).kind.calls_per_score() for name in net.nodes)
    backward = options.num_prompt_samples * len(trainable)
    if options.use_posterior:
        for name in hidden:
            backward += batch * (size[name] - 1 if net.node(name).kind.outputs() is None else 0)
            evidence = sum(net.node(c).kind.calls_per_score() for c in net.children(name)) + 1
            forward += batch * size[name] * evidence
    for name in trainable:
        terms = max([size.get(name, 1), *(size.get(p, 1) for p in net.parents(name))])
        forward += _candidates(options) * batch * terms * net.node(name).kind.calls_per_score()
    return forward, backward


def estimate(
    net: Graph,
    options: TrainerOptions,
    trainable: Sequence[str],
    backend: Backend,
    settings: RunSettings,
    train: Sequence[Example],
    dev_size: int,
    *,
    separate_backward: bool = False,
) -> Estimate:
    """Upper bounds on calls and tokens (no cache hits, no pruning of light candidates); with
    `separate_backward` the backward engine's share is counted apart."""
    batch = settings.batch_size if not train else min(settings.batch_size, len(train))
    forward_calls = sum(node.kind.calls_per_score() for node in net.nodes.values())
    evaluations = dev_size * forward_calls * (1 + -(-settings.steps // settings.eval_every))
    forward, backward = _calls_per_step(net, options, trainable, batch)
    forward, backward = settings.steps * forward + evaluations, settings.steps * backward
    sample = train[:50]
    per_input = (
        backend.count_tokens(" ".join(e.input for e in sample)) // len(sample) if sample else 64
    )
    longest_prompt = max(backend.count_tokens(node.prompt) for node in net.nodes.values())
    per_call = per_input * (1 + options.max_demonstrations) + longest_prompt + 64
    if not separate_backward:
        return Estimate(calls=forward + backward, tokens=(forward + backward) * per_call)
    return Estimate(
        calls=forward,
        tokens=forward * per_call,
        backward_calls=backward,
        backward_tokens=backward
        * (per_input * batch + longest_prompt + options.proposal_max_tokens),
    )
