"""Metrics: what "good" means for a network's answers, one example at a time.

A metric is a function of (the network's outputs for one example, the example) returning a
float, higher is better; sync or async (an async metric may call an engine of its own, a
judge model). The outputs are what `Network.predict` gives for one input: the output node's
text, or with several output nodes a mapping from each one's name to its text. The example's
target is read as the output nodes name answers (`Graph.targets`: a class node's target is
its class name), so a metric compares like with like.

The metric decides which network is kept (dev evaluation, best-network selection, early
stopping); the ELBO keeps scoring log-likelihoods of targets, which decide the candidates of
each step. Built-ins (`BUILTIN`) compare each output node's answer with its target and
average over output nodes; plugins add metrics by name (entry-point group
``dlgraph.metrics``). A config names a metric, never an importable path.
"""

from __future__ import annotations

import inspect
import math
import numbers
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import attrs

from dlgraph._entry_points import METRICS
from dlgraph._numbers import last_number
from dlgraph._untrusted import excerpt
from dlgraph._validate import check_text
from dlgraph._validate import function as a_function
from dlgraph._validate import number as finite_number
from dlgraph.data.example import Example
from dlgraph.errors import DlgraphError, MetricError
from dlgraph.scoring import normalize_answer

Outputs = str | Mapping[str, str]
"""A network's outputs for one example: one text, or a text per output node."""
MetricFunction = Callable[[Outputs, Example], float | Awaitable[float]]
Compare = Callable[[str, str], float]
"""One output's answer and its target to a score: how built-ins score each output node."""


def _name(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not check_text("name", value).strip():
        raise ValueError("name: a metric needs a name (errors, logs and results call it by it)")


@attrs.frozen
class Metric:
    """A metric and the name errors, logs and results call it by.

    `compare` is set for metrics that score each output node alone (the built-ins); the
    metric is then the mean over output nodes, and evaluations report each output's own.
    `maximum` is the highest score the metric gives an example, when known (the built-ins':
    1): a training run's dev comparison stops exactly once even that score on every example
    left would not win; unknown, it stops only on its confidence bound."""

    name: str = attrs.field(validator=_name)
    function: MetricFunction = attrs.field(repr=False, validator=a_function)
    compare: Compare | None = attrs.field(
        default=None, kw_only=True, repr=False, validator=attrs.validators.optional(a_function)
    )
    maximum: float | None = attrs.field(default=None, kw_only=True, validator=finite_number())

    @classmethod
    def each_output(cls, name: str, compare: Compare, *, maximum: float | None = None) -> Metric:
        """The mean of `compare` over the output nodes (at most `maximum` when each is)."""

        def function(outputs: Outputs, example: Example) -> float:
            if isinstance(outputs, str):
                assert isinstance(example.target, str)
                return compare(outputs, example.target)
            assert isinstance(example.target, Mapping)
            scores = [compare(outputs[name], example.target[name]) for name in outputs]
            return math.fsum(scores) / len(scores)

        return cls(name, function, compare=compare, maximum=maximum)

    @property
    def is_async(self) -> bool:
        """Whether the metric is a coroutine function (one that may call a model)."""
        call = getattr(self.function, "__call__", None)  # noqa: B004 (an instance's __call__)
        return inspect.iscoroutinefunction(self.function) or inspect.iscoroutinefunction(call)

    async def score(self, outputs: Outputs, example: Example, where: str) -> float:
        """The metric on one example; MetricError names the metric and the example (`where`)
        when it raises or returns no finite number. A dlgraph error (a judge's engine out of
        budget or failing) passes through as it is."""
        try:
            value = self.function(outputs, example)
            if inspect.isawaitable(value):
                value = await value
        except DlgraphError:
            raise
        except Exception as error:
            problem = excerpt(f"{type(error).__name__}: {error}", quoted=False)
            raise MetricError(f"{self.on(example, where)}: raised {problem}") from error
        return self.checked(value, example, where)

    def score_output(self, output: str, target: str, example: Example, where: str) -> float:
        """`compare` on one output node's answer, checked as `score` checks."""
        assert self.compare is not None
        try:
            value = self.compare(output, target)
        except Exception as error:
            problem = excerpt(f"{type(error).__name__}: {error}", quoted=False)
            raise MetricError(f"{self.on(example, where)}: raised {problem}") from error
        return self.checked(value, example, where)

    def checked(self, value: object, example: Example, where: str) -> float:
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            if math.isfinite(float(value)):
                if self.maximum is not None and float(value) > self.maximum:
                    raise MetricError(
                        f"{self.on(example, where)}: returned {float(value)}, above its "
                        f"maximum {self.maximum}"
                    )
                return float(value)
        raise MetricError(
            f"{self.on(example, where)}: returned {excerpt(value)}; a metric returns a finite "
            "number (higher is better)"
        )

    def on(self, example: Example, where: str) -> str:
        return f"metric {excerpt(self.name)} on {example.where(where)} (input {excerpt(example.input)})"


# -- built-in metrics ---------------------------------------------------------------------


def exact(output: str, target: str) -> float:
    """1 when the answer is the target after the DLN paper's normalisation (its first word,
    lowercased, without punctuation or digits), else 0: the accuracy dlgraph always used."""
    return float(normalize_answer(output) == normalize_answer(target))


_WORDS = re.compile(r"[^\W_]+")


def _words(text: str) -> list[str]:
    return _WORDS.findall(text.lower())


def contains(output: str, target: str) -> float:
    """1 when the target's words appear in the answer, in order and together ("the answer is
    Paris." contains "paris"; case and punctuation ignored), else 0."""
    wanted, found = _words(target), _words(output)
    if not wanted:
        return float(not found)
    size = len(wanted)
    return float(any(found[i : i + size] == wanted for i in range(len(found) - size + 1)))


def number(output: str, target: str) -> float:
    """1 when the last number in the answer equals the target's last number, else 0.

    Numbers are read in digits or in words ("twelve", "twenty-one", "one hundred and
    five"), with units and signs around them ignored ("12 km", "$40", "75%"). The last one
    counts: a worked answer ends with its result ("3 boxes of 4 make 12"); a number written
    after the result ("12, the one we want") is read instead. Equal means equal within a
    relative 1e-9. A target with no number is an error (the metric cannot apply)."""
    expected = last_number(target)
    if expected is None:
        raise ValueError(f"target {excerpt(target)} holds no number")
    found = last_number(output)
    return float(found is not None and math.isclose(found, expected, rel_tol=1e-9))


_ARTICLES = {"a", "an", "the"}


def token_f1(output: str, target: str) -> float:
    """The F1 of the answer's words against the target's (as in SQuAD: lowercased, without
    punctuation or articles; each word counted as often as it occurs): partial credit."""
    predicted = [w for w in _words(output) if w not in _ARTICLES]
    expected = [w for w in _words(target) if w not in _ARTICLES]
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if not common:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


BUILTIN: dict[str, Metric] = {
    name: Metric.each_output(name, compare, maximum=1.0)
    for name, compare in (
        ("exact", exact),
        ("contains", contains),
        ("number", number),
        ("token_f1", token_f1),
    )
}
"""The metrics every install has, by name; "exact" is the default."""
DEFAULT = BUILTIN["exact"]

MetricLike = str | Metric | MetricFunction | None
"""What `metric=` takes: a name, a `Metric`, a function, or None for the default."""


def known_metrics() -> list[str]:
    """Every metric name: the built-ins and the installed plugins' (none is loaded)."""
    return sorted({*BUILTIN, *METRICS.entries()})


def resolve_metric(metric: MetricLike) -> Metric:
    """The metric `metric` names or is. MetricError for an unknown name (listing the known
    ones) or for something that is no metric."""
    if metric is None:
        return DEFAULT
    if isinstance(metric, Metric):
        return metric
    if isinstance(metric, str):
        return _named(metric)
    if callable(metric):
        return Metric(getattr(metric, "__name__", type(metric).__name__), metric)
    raise MetricError(f"metric: expected a name or a function, got {excerpt(metric)}")


def _named(name: str) -> Metric:
    if name in BUILTIN:
        return BUILTIN[name]
    if name not in METRICS.entries():
        known = ", ".join(known_metrics())
        raise MetricError(f"unknown metric {excerpt(name)} (known: {known})")
    loaded = METRICS.load(name)
    if isinstance(loaded, Metric):
        return loaded
    if not callable(loaded):
        raise MetricError(f"metric {excerpt(name)}: its plugin gives no function")
    return Metric(name, loaded)
