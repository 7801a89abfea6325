"""The async forward pass: every node on every example, each as soon as its parents finish."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import anyio
import attrs

from dlgraph._tasks import single_errors
from dlgraph.network import INPUT, Network

if TYPE_CHECKING:
    from dlgraph.engine import Engine


@attrs.frozen
class Trace:
    """What a forward pass saw and produced, per node and example; the trainer reads it
    instead of re-running the forward pass."""

    xs: tuple[str, ...]
    outputs: Mapping[str, tuple[str, ...]]
    """Per node (and INPUT, the inputs themselves), one output per example."""
    rendered: Mapping[str, tuple[str, ...]]
    """Per node, the model input it was given, one per example."""
    distributions: Mapping[str, tuple[tuple[float, ...], ...]]
    """Per class node, P(class) in the node's class order, one per example."""

    def values(self, index: int) -> dict[str, str]:
        """Every node's output (and INPUT) for one example."""
        return {name: outputs[index] for name, outputs in self.outputs.items()}

    def __len__(self) -> int:
        return len(self.xs)


@attrs.frozen
class NodeOutput:
    rendered: str
    """The model input the node was given."""
    text: str
    distribution: tuple[float, ...] | None = None


CONTENT_FREE = "N/A"
"""What every parent says when a class node measures its bias (calibration)."""


async def class_distribution(
    net: Network,
    name: str,
    engine: Engine,
    rendered: str,
    *,
    prompt: str | None = None,
    phase: str,
    priority: int = 0,
) -> list[float]:
    """P(class | rendered input) for class node `name`; with ``calibrate`` on, divided by the
    same distribution for a content-free input (every parent "N/A", same `prompt`) and
    renormalised, which removes the prompt's bias towards some classes (Zhao et al., 2021)."""
    node = net.node(name)
    assert node.classes
    distribution = await engine.classify(
        rendered, node.classes, node=name, phase=phase, priority=priority
    )
    if not node.calibrate:
        return distribution
    blank = net.render(name, {parent: CONTENT_FREE for parent in net.parents(name)}, prompt=prompt)
    bias = await engine.classify(blank, node.classes, node=name, phase=phase, priority=priority)
    ratios = [p / max(b, 1e-9) for p, b in zip(distribution, bias, strict=True)]
    total = sum(ratios)
    return [r / total for r in ratios]


async def run_node(
    net: Network,
    name: str,
    engine: Engine,
    values: Mapping[str, str],
    *,
    phase: str,
    prompt: str | None = None,
    seed: int = 0,
    temperature: float | None = None,
    priority: int = 0,
) -> NodeOutput:
    """One call of one node on its parents' outputs: a class node classifies, a generation
    node generates. `prompt` replaces the node's own (to try candidate prompts)."""
    node = net.node(name)
    rendered = net.render(name, values, prompt=prompt)
    if node.classes:
        distribution = await class_distribution(
            net, name, engine, rendered, prompt=prompt, phase=phase, priority=priority
        )
        best = max(range(len(distribution)), key=distribution.__getitem__)
        return NodeOutput(rendered, node.class_names[best], tuple(distribution))
    text = await engine.generate(
        rendered,
        max_tokens=node.max_tokens,
        temperature=node.temperature if temperature is None else temperature,
        stop=node.stop,
        seed=seed,
        node=name,
        phase=phase,
        priority=priority,
    )
    return NodeOutput(rendered, text.strip())


async def forward(
    net: Network, engine: Engine, xs: Sequence[str], *, phase: str = "forward"
) -> Trace:
    """Run the network on every input.

    Every (node, example) pair is a task that waits only for its own parents on the same
    example, so independent nodes and all examples overlap. Validation runs before any call.
    If a call fails, the other tasks are cancelled and its error is raised; cancelling the
    caller cancels every task.
    """
    net.validate()
    inputs = tuple(xs)
    order = net.topological_order()
    outputs: dict[str, list[str]] = {INPUT: list(inputs)} | {
        name: [""] * len(inputs) for name in order
    }
    rendered: dict[str, list[str]] = {name: [""] * len(inputs) for name in order}
    distributions: dict[str, list[tuple[float, ...]]] = {
        name: [()] * len(inputs) for name in order if net.node(name).classes
    }
    finished = {(name, i): anyio.Event() for name in order for i in range(len(inputs))}
    depth = {name: net.depth(name) for name in order}

    async def run(name: str, index: int) -> None:
        for parent in net.parents(name):
            if parent != INPUT:
                await finished[parent, index].wait()
        values = {p: outputs[p][index] for p in net.parents(name)}
        result = await run_node(net, name, engine, values, phase=phase, priority=depth[name])
        rendered[name][index] = result.rendered
        outputs[name][index] = result.text
        if result.distribution is not None:
            distributions[name][index] = result.distribution
        finished[name, index].set()

    with single_errors():
        async with anyio.create_task_group() as task_group:
            for index in range(len(inputs)):
                for name in order:
                    task_group.start_soon(run, name, index)
    return Trace(
        inputs,
        {name: tuple(values) for name, values in outputs.items()},
        {name: tuple(values) for name, values in rendered.items()},
        {name: tuple(values) for name, values in distributions.items()},
    )
