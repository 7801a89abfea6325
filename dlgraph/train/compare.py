"""A step's dev evaluation as a paired sequential comparison with the best network so far
(the incumbent), whose per-example results are kept.

Results are the run's metric on each example (`dlgraph.metrics`: any finite number, higher is
better). The new network is scored on the dev set in chunks, in an order fixed for the run;
after each chunk the comparison stops when its outcome is settled: exactly, when even the
metric's maximum on every remaining example would not beat the incumbent (only for a metric
that states its maximum, as the built-ins do: 1), or at the run's confidence, when the paired
differences on the examples scored so far show a loser (`race.is_settled_worse`, a bound in
the scores' own units, so it holds for a metric of any range). A network that may win is
scored to the end, so the incumbent's results are always whole.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import attrs

from dlgraph.data.example import Example
from dlgraph.engine import Engine
from dlgraph.evaluation import example_scores
from dlgraph.metrics import Metric
from dlgraph.network import Network
from dlgraph.nodes import Parameter
from dlgraph.train.options import TrainerOptions
from dlgraph.train.race import MIN_EXAMPLES, Race, is_settled_worse

CHUNKS = 8
"""Chunks a dev set is scored in: a chance to stop after each."""
TOLERANCE = 1e-9
"""Sums of per-example scores differing by less, relative to their size (at least 1), are
equal (a mean over several outputs is not exact in floating point)."""

Results = dict[int, float]
"""A network's metric score on dev examples, by the example's index in the dev set."""
Key = tuple[tuple[str, Parameter], ...]


def network_key(net: Network) -> Key:
    """What identifies a network's results within a run: its parameters."""
    return tuple(sorted(net.parameters().items(), key=lambda item: item[0]))


@attrs.frozen
class Comparison:
    """How a new network fared against the incumbent."""

    score: float
    """The metric's mean over the dev examples it was scored on (all of them unless it lost
    early, when it is a partial figure)."""
    is_better: bool
    """Strictly better than the incumbent on the whole dev set."""
    results: Results
    scored: int
    """Dev examples this comparison sent to the model (the others were known or skipped)."""


@attrs.frozen
class Referee:
    """Scores a new network under `metric` against the incumbent; `z` None scores the whole
    dev set every time and compares the means (full scoring)."""

    z: float | None
    metric: Metric

    @classmethod
    def of(cls, options: TrainerOptions, metric: Metric) -> Referee:
        return cls(Race.of(options).z, metric)

    async def compare(
        self,
        net: Network,
        engine: Engine,
        dev: Sequence[Example],
        order: Sequence[int],
        incumbent: Sequence[float],
        known: Results,
    ) -> Comparison:
        """`net` scored on `dev` in `order` until the outcome is settled; `incumbent` is the
        best network's score on each dev example, `known` what `net` already scored (reused
        unless under full scoring). Raises what `dlgraph.evaluate` raises."""
        results: Results = {} if self.z is None else dict(known)
        scored = 0
        for chunk in _chunks(order):
            todo = [i for i in chunk if i not in results]
            if todo:
                scores = await example_scores(
                    net, engine, [dev[i] for i in todo], self.metric, todo
                )
                results.update(zip(todo, scores, strict=True))
                scored += len(todo)
            if self.is_settled(results, incumbent):
                break
        total = math.fsum(results.values())
        is_better = len(results) == len(dev) and _above(total, math.fsum(incumbent))
        return Comparison(total / len(results), is_better, results, scored)

    def is_settled(self, results: Results, incumbent: Sequence[float]) -> bool:
        """Whether the new network has lost, exactly (the metric's maximum on every example
        left would not win) or at the confidence `z` states."""
        if self.z is None:
            return False
        if self.metric.maximum is not None:
            remaining = len(incumbent) - len(results)
            best_case = math.fsum(results.values()) + remaining * self.metric.maximum
            if not _above(best_case, math.fsum(incumbent)):
                return True
        differences = [score - incumbent[i] for i, score in results.items()]
        return is_settled_worse(differences, self.z)


def _above(total: float, best: float) -> bool:
    """Whether a sum of per-example scores beats `best` by more than rounding."""
    return total > best + TOLERANCE * max(1.0, abs(total), abs(best))


def _chunks(order: Sequence[int]) -> list[Sequence[int]]:
    size = max(MIN_EXAMPLES, -(-len(order) // CHUNKS))
    return [order[start : start + size] for start in range(0, len(order), size)]
