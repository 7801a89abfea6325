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
    targets = net.targets(examples, "evaluation data")
    with engine.tracer.span("evaluate", examples=len(examples)) as span:
        trace = await forward(net, engine, [example.input for example in examples], phase="eval")
        accuracy = Accuracy(
            {
                output: net.node(output).accuracy(trace.outputs[output], expected)
                for output, expected in targets.items()
            }
        )
        span.set("accuracy", float(accuracy))
    return accuracy
