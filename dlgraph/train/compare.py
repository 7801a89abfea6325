"""A step's dev evaluation as a paired sequential comparison with the best network so far
(the incumbent), whose per-example results are kept.

The new network is scored on the dev set in chunks, in an order fixed for the run; after each
chunk the comparison stops when its outcome is settled: exactly, when even a right answer on
every remaining example would not beat the incumbent, or at the run's confidence, when the
paired differences on the examples scored so far show a loser (`race.is_settled_worse`). A
network that may win is scored to the end, so the incumbent's results are always whole.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from dlgraph.data.example import Example
from dlgraph.engine import Engine
from dlgraph.evaluation import example_scores
from dlgraph.network import Network
from dlgraph.nodes import Parameter
from dlgraph.train.options import TrainerOptions
from dlgraph.train.race import MIN_EXAMPLES, Race, is_settled_worse

CHUNKS = 8
"""Chunks a dev set is scored in: a chance to stop after each."""
TOLERANCE = 1e-9
"""Sums of per-example scores differing by less are equal (a mean over several outputs is
not exact in floating point)."""

Results = dict[int, float]
"""A network's score on dev examples, by the example's index in the dev set."""
Key = tuple[tuple[str, Parameter], ...]


def network_key(net: Network) -> Key:
    """What identifies a network's results within a run: its parameters."""
    return tuple(sorted(net.parameters().items(), key=lambda item: item[0]))


@attrs.frozen
class Comparison:
    """How a new network fared against the incumbent."""

    accuracy: float
    """Over the dev examples it was scored on (all of them unless it lost early)."""
    is_better: bool
    """Strictly better than the incumbent on the whole dev set."""
    results: Results
    scored: int
    """Dev examples this comparison sent to the model (the others were known or skipped)."""


@attrs.frozen
class Referee:
    """Scores a new network against the incumbent; `z` None scores the whole dev set every
    time and compares accuracies (full scoring)."""

    z: float | None

    @classmethod
    def of(cls, options: TrainerOptions) -> Referee:
        return cls(Race.of(options).z)

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
                scores = await example_scores(net, engine, [dev[i] for i in todo])
                results.update(zip(todo, scores, strict=True))
                scored += len(todo)
            if self.is_settled(results, incumbent):
                break
        total, best = sum(results.values()), sum(incumbent)
        is_better = len(results) == len(dev) and total > best + TOLERANCE
        return Comparison(total / len(results), is_better, results, scored)

    def is_settled(self, results: Results, incumbent: Sequence[float]) -> bool:
        """Whether the new network has lost, exactly or at the confidence `z` states."""
        if self.z is None:
            return False
        remaining = len(incumbent) - len(results)
        if sum(results.values()) + remaining <= sum(incumbent) + TOLERANCE:
            return True
        differences = [score - incumbent[i] for i, score in results.items()]
        return is_settled_worse(differences, self.z)


def _chunks(order: Sequence[int]) -> list[Sequence[int]]:
    size = max(MIN_EXAMPLES, -(-len(order) // CHUNKS))
    return [order[start : start + size] for start in range(0, len(order), size)]
