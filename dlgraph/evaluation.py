"""Accuracy of a network on labelled data."""

from __future__ import annotations

from collections.abc import Sequence

from dlgraph.data.example import Example, check_dataset
from dlgraph.engine import Engine
from dlgraph.network import Network


async def evaluate(net: Network, engine: Engine, data: Sequence[Example]) -> float:
    """Accuracy of the network's output node on `data`, in [0, 1].

    Predictions and targets are normalised as in the DLN paper and, for a class node, mapped
    to its classes through their verbalizers. Raises DataError, before any call, for an empty
    dataset or a target the output node cannot give.
    """
    examples = check_dataset(data, "evaluation data")
    node = net.node(net.output_nodes()[0])
    targets = node.targets(examples, "evaluation data")
    predictions = await net.predict(engine, [example.input for example in examples])
    return node.accuracy(predictions, targets)
