"""How good a network is on labelled data, under a metric (accuracy by default)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import attrs

from dlgraph._tasks import map_concurrently
from dlgraph.data.example import Example, check_dataset
from dlgraph.engine import Engine
from dlgraph.forward import Trace, forward
from dlgraph.metrics import Metric, MetricLike, Outputs, resolve_metric
from dlgraph.network import Network
from dlgraph.report import ClassReport

DATA = "evaluation data"
"""How errors name the evaluated examples (``evaluation data[3]``, or their file and line)."""


class Score(float):
    """The mean of a metric over the examples, a float like any other, with its parts.

    `by_output` holds each output node's own mean when the metric scores outputs one by one
    (the built-ins) or there is one output; `per_example` the metric of each example, in
    order; `reports` a `ClassReport` per class output node (its precision, recall and
    confusion, whatever the metric)."""

    metric: str
    by_output: dict[str, float]
    per_example: tuple[float, ...]
    reports: dict[str, ClassReport]

    def __new__(
        cls,
        metric: str,
        per_example: Sequence[float],
        by_output: Mapping[str, float],
        reports: Mapping[str, ClassReport],
    ) -> Score:
        value = super().__new__(cls, math.fsum(per_example) / len(per_example))
        value.metric = metric
        value.per_example = tuple(per_example)
        value.by_output = dict(by_output)
        value.reports = dict(reports)
        return value

    def __repr__(self) -> str:
        return f"Score({float(self):.4f}, metric={self.metric!r}, by_output={self.by_output!r})"

    @classmethod
    def concatenate(cls, parts: Sequence[Score]) -> Score:
        """The score of every part's examples together (parts of one dataset, one metric)."""
        sizes = [len(part.per_example) for part in parts]
        by_output = {
            output: math.fsum(p.by_output[output] * n for p, n in zip(parts, sizes, strict=True))
            / sum(sizes)
            for output in parts[0].by_output
        }
        reports = {
            name: sum((p.reports[name] for p in parts[1:]), parts[0].reports[name])
            for name in parts[0].reports
        }
        per_example = [value for part in parts for value in part.per_example]
        return cls(parts[0].metric, per_example, by_output, reports)


Accuracy = Score
"""`evaluate`'s result under the default metric, exact accuracy (its name before metrics)."""


async def evaluate(
    net: Network, engine: Engine, data: Sequence[Example], *, metric: MetricLike = None
) -> Score:
    """The metric's mean over `data` (default: exact accuracy, the DLN paper's normalised
    match, a class node's answer and target both read as its classes).

    `metric` is a built-in's name (`dlgraph.metrics.BUILTIN`), an installed plugin's, a
    `Metric`, or a function of (outputs, example), sync or async; an async metric's own
    calls (a judge model's) are counted by its own engine. Raises DataError, before any
    call, for an empty dataset or a target an output node cannot give; MetricError for an
    unknown metric name (before any call) or a metric that raises or returns no finite
    number, naming the metric and the example.
    """
    examples = check_dataset(data, DATA)
    chosen = resolve_metric(metric)
    targets = net.targets(examples, DATA)
    with engine.tracer.span("evaluate", examples=len(examples)) as span:
        trace = await forward(net, engine, [example.input for example in examples], phase="eval")
        score = await _scored(net, chosen, trace, examples, targets)
        span.set("score", float(score))
    return score


async def _scored(
    net: Network,
    metric: Metric,
    trace: Trace,
    examples: list[Example],
    targets: dict[str, list[str]],
) -> Score:
    outputs = list(targets)
    if metric.compare is not None:  # each output scored alone; an example's is their mean
        by_output = _by_output(metric, trace, examples, targets)
        per_example = [
            math.fsum(by_output[name][index] for name in outputs) / len(outputs)
            for index in range(len(examples))
        ]
    else:
        per_example = await _per_example(metric, trace, examples, targets)
        by_output = {outputs[0]: per_example} if len(outputs) == 1 else {}
    reports = {
        name: ClassReport.of(classes, trace.outputs[name], targets[name])
        for name in outputs
        if (classes := net.node(name).kind.outputs()) is not None
    }
    means = {name: math.fsum(values) / len(values) for name, values in by_output.items()}
    return Score(metric.name, per_example, means, reports)


async def _per_example(
    metric: Metric, trace: Trace, examples: list[Example], targets: dict[str, list[str]]
) -> list[float]:
    """The metric on every example concurrently (an async judge's calls go out together),
    given what `predict` would give and the example with its target as the outputs read it."""
    outputs = list(targets)
    single = len(outputs) == 1

    async def one(index: int) -> float:
        each = {name: trace.outputs[name][index] for name in outputs}
        read = {name: targets[name][index] for name in outputs}
        answers: Outputs = each[outputs[0]] if single else each
        target: str | dict[str, str] = read[outputs[0]] if single else read
        example = attrs.evolve(examples[index], target=target)
        return await metric.score(answers, example, f"{DATA}[{index}]")

    return await map_concurrently(one, range(len(examples)))


def _by_output(
    metric: Metric, trace: Trace, examples: list[Example], targets: dict[str, list[str]]
) -> dict[str, list[float]]:
    """Each output node's score per example, under a metric that scores outputs alone."""
    return {
        name: [
            metric.score_output(output, target, example, f"{DATA}[{index}]")
            for index, (output, target, example) in enumerate(
                zip(trace.outputs[name], expected, examples, strict=True)
            )
        ]
        for name, expected in targets.items()
    }


async def example_scores(
    net: Network, engine: Engine, examples: Sequence[Example], metric: Metric, places: Sequence[int]
) -> list[float]:
    """The metric on each of `examples`, the items `places` of a dataset (errors name those),
    from one forward pass at phase ``eval`` and without a span of its own: a training run's
    dev comparison scores the dev set a part at a time. The mean over a whole dataset is
    `evaluate`'s value; each example's score is the one `evaluate` gives it."""
    named = [
        attrs.evolve(example, source=example.where(f"{DATA}[{place}]"))
        for example, place in zip(examples, places, strict=True)
    ]
    targets = net.targets(named, DATA)
    trace = await forward(net, engine, [example.input for example in named], phase="eval")
    return list((await _scored(net, metric, trace, named, targets)).per_example)
