"""Accuracy of a network on labelled data."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from dlgraph.data.example import Example, check_dataset
from dlgraph.engine import Engine
from dlgraph.forward import forward
from dlgraph.network import Network


class Accuracy(float):
    """The mean accuracy over the network's output nodes, in [0, 1] like any float, with each
    output's own in `by_output`."""

    by_output: dict[str, float]

    def __new__(cls, by_output: Mapping[str, float]) -> Accuracy:
        value = super().__new__(cls, sum(by_output.values()) / len(by_output))
        value.by_output = dict(by_output)
        return value

    def __repr__(self) -> str:
        return f"Accuracy({float(self):.4f}, by_output={self.by_output!r})"


async def evaluate(net: Network, engine: Engine, data: Sequence[Example]) -> Accuracy:
    """Accuracy of every output node on `data`, and their mean (the value itself).

    Predictions and targets are normalised as in the DLN paper and, for a class node, mapped
    to its classes through their verbalizers. Raises DataError, before any call, for an empty
    dataset or a target an output node cannot give.
    """
    examples = check_dataset(data, "evaluation data")
    with engine.tracer.span("evaluate", examples=len(examples)) as span:
        hits = await output_hits(net, engine, examples)
        accuracy = Accuracy({output: sum(row) / len(row) for output, row in hits.items()})
        span.set("accuracy", float(accuracy))
    return accuracy


async def example_scores(net: Network, engine: Engine, examples: Sequence[Example]) -> list[float]:
    """Each example's score in [0, 1]: the share of output nodes right on it (their mean
    over a dataset is its accuracy). Raises as `evaluate`."""
    hits = await output_hits(net, engine, examples)
    rows = list(hits.values())
    return [sum(row[i] for row in rows) / len(rows) for i in range(len(examples))]


async def output_hits(
    net: Network, engine: Engine, examples: Sequence[Example]
) -> dict[str, list[float]]:
    """Per output node, 1.0 where its prediction on an example is right, else 0.0; one
    forward pass at phase ``eval``."""
    targets = net.targets(examples, "evaluation data")
    trace = await forward(net, engine, [example.input for example in examples], phase="eval")
    return {
        output: [
            net.node(output).accuracy([predicted], [target])
            for predicted, target in zip(trace.outputs[output], expected, strict=True)
        ]
        for output, expected in targets.items()
    }
