"""The async forward pass: every node on every example, each as soon as its parents finish."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import anyio
import attrs

from dlgraph._tasks import single_errors
from dlgraph._untrusted import excerpt
from dlgraph.backend import Phase, check_phase
from dlgraph.engine import Engine
from dlgraph.errors import DataError
from dlgraph.graph import Graph
from dlgraph.nodes import INPUT, NodeCall, NodeOutput


@attrs.frozen
class Trace:
    """What a forward pass saw and produced, per node and example; the trainer reads it
    instead of re-running the forward pass."""

    xs: tuple[str, ...]
    outputs: Mapping[str, tuple[str, ...]]
    """Per node (and INPUT, the inputs themselves), one output per example."""
    rendered: Mapping[str, tuple[str, ...]]
    """Per node, the model input it was given, one per example."""

    def values(self, index: int) -> dict[str, str]:
        """Every node's output (and INPUT) for one example."""
        return {name: outputs[index] for name, outputs in self.outputs.items()}

    def __len__(self) -> int:
        return len(self.xs)


async def forward(
    graph: Graph, engine: Engine, xs: Sequence[str], *, phase: Phase = "forward"
) -> Trace:
    """Run the network on every input.

    Every (node, example) pair is a task that waits only for its own parents on the same
    example, so independent nodes and all examples overlap. Validation runs before any call.
    If a call fails, the other tasks are cancelled and its error is raised; cancelling the
    caller cancels every task. When the engine traces, the pass is a ``dlgraph.forward`` span
    and each (node, example) a ``dlgraph.node`` span under it, parent of the node's calls.
    """
    graph.validate()
    check_phase("phase", phase)
    inputs = _inputs(xs)
    tracer = engine.tracer
    order = graph.topological_order()
    outputs: dict[str, list[str]] = {INPUT: list(inputs)} | {
        name: [""] * len(inputs) for name in order
    }
    rendered: dict[str, list[str]] = {name: [""] * len(inputs) for name in order}
    finished = {(name, i): anyio.Event() for name in order for i in range(len(inputs))}

    async def run(name: str, index: int) -> None:
        for parent in graph.parents(name):
            if parent != INPUT:
                await finished[parent, index].wait()
        values = {p: outputs[p][index] for p in graph.parents(name)}
        with tracer.span("node", name, node=name, example=index, phase=phase):
            result = await run_node(graph, engine, name, values, phase=phase)
        rendered[name][index] = result.rendered
        outputs[name][index] = result.text
        finished[name, index].set()

    with tracer.span("forward", phase=phase, examples=len(inputs)), single_errors():
        async with anyio.create_task_group() as task_group:
            for index in range(len(inputs)):
                for name in order:
                    task_group.start_soon(run, name, index)
    return Trace(
        inputs,
        {name: tuple(values) for name, values in outputs.items()},
        {name: tuple(values) for name, values in rendered.items()},
    )


async def run_node(
    graph: Graph, engine: Engine, name: str, values: Mapping[str, str], *, phase: Phase
) -> NodeOutput:
    """Node `name` on one example (`values` holds its parents' outputs), as a forward pass
    runs it: at its own temperature, with priority its depth, so that under a rate limit
    deeper nodes go first and examples finish. The forward pass sends the calls of one depth
    together, which is how the estimate lays them out."""
    call = NodeCall(engine=engine, phase=phase, priority=graph.depth(name))
    return await graph.node(name).run(graph.parent_values(name, values), call)


def _inputs(xs: Sequence[str]) -> tuple[str, ...]:
    """The inputs as a tuple of texts; one string is refused rather than read letter by letter."""
    if isinstance(xs, str | bytes):
        raise DataError(
            "inputs: expected a list of input texts, got one string (wrap it in a list)"
        )
    inputs = tuple(xs)
    for index, x in enumerate(inputs):
        if not isinstance(x, str):
            raise DataError(f"inputs[{index}]: expected text, got {excerpt(x)}")
    return inputs
