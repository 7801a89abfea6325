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


def _calls_per_step(
    net: Graph, options: TrainerOptions, trainable: Sequence[str], batch: int
) -> int:
    hidden = net.hidden_nodes()
    size = {name: _posterior_size(net, name, options) for name in hidden}
    calls = batch * sum(net.node(name).kind.calls_per_score() for name in net.nodes)
    if options.use_posterior:
        for name in hidden:
            sampled = size[name] - 1 if net.node(name).kind.outputs() is None else 0
            evidence = sum(net.node(c).kind.calls_per_score() for c in net.children(name)) + 1
            calls += batch * (sampled + size[name] * evidence)
    for name in trainable:
        candidates = 1 + options.num_prompt_samples + options.memory_size
        terms = max([size.get(name, 1), *(size.get(p, 1) for p in net.parents(name))])
        per_score = net.node(name).kind.calls_per_score()
        calls += options.num_prompt_samples + candidates * batch * terms * per_score
    return calls


def estimate(
    net: Graph,
    options: TrainerOptions,
    trainable: Sequence[str],
    backend: Backend,
    settings: RunSettings,
    train: Sequence[Example],
    dev_size: int,
) -> Estimate:
    """Upper bounds on calls and tokens (no cache hits, no pruning of light candidates)."""
    batch = settings.batch_size if not train else min(settings.batch_size, len(train))
    forward_calls = sum(node.kind.calls_per_score() for node in net.nodes.values())
    evaluations = dev_size * forward_calls * (1 + -(-settings.steps // settings.eval_every))
    calls = settings.steps * _calls_per_step(net, options, trainable, batch) + evaluations
    sample = train[:50]
    per_call = (
        backend.count_tokens(" ".join(e.input for e in sample)) // len(sample) if sample else 64
    )
    longest_prompt = max(backend.count_tokens(node.prompt) for node in net.nodes.values())
    return Estimate(calls=calls, tokens=calls * (per_call + longest_prompt + 64))
