"""A per-class report of a class node's answers: precision, recall and the confusion matrix.

Accuracy hides which classes a network confuses (a model that answers the majority class
scores its share); the report shows it. A leaf: it imports nothing from dlgraph.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

import attrs


def _names(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


def _counts(value: Mapping[tuple[str, str], int]) -> dict[tuple[str, str], int]:
    return {pair: count for pair, count in value.items() if count}


@attrs.frozen
class ClassReport:
    """Counts of (target, prediction) pairs over a node's classes, in class order.

    A prediction that is none of the classes (a text that matched no verbalizer) is counted
    under `OTHER`; it is a miss for the target's recall and for no class's precision.
    """

    classes: tuple[str, ...] = attrs.field(converter=_names)
    confusion: Mapping[tuple[str, str], int] = attrs.field(converter=_counts)
    """(target, predicted) -> how many examples; pairs never seen are absent."""

    @classmethod
    def of(
        cls, classes: Sequence[str], predictions: Iterable[str], targets: Iterable[str]
    ) -> ClassReport:
        pairs = Counter(
            (target, prediction if prediction in classes else OTHER)
            for prediction, target in zip(predictions, targets, strict=True)
        )
        return cls(classes, pairs)

    def __add__(self, other: ClassReport) -> ClassReport:
        """The report of both sets of examples (the same node's, so the same classes)."""
        assert self.classes == other.classes
        return ClassReport(self.classes, Counter(self.confusion) + Counter(other.confusion))

    def count(self, target: str, predicted: str) -> int:
        return self.confusion.get((target, predicted), 0)

    def support(self, name: str) -> int:
        """How many examples have the class as their target."""
        return sum(count for (target, _), count in self.confusion.items() if target == name)

    def predicted(self, name: str) -> int:
        return sum(count for (_, guess), count in self.confusion.items() if guess == name)

    def precision(self, name: str) -> float | None:
        """The share of the class's predictions that were right; None if never predicted."""
        predicted = self.predicted(name)
        return self.count(name, name) / predicted if predicted else None

    def recall(self, name: str) -> float | None:
        """The share of the class's examples predicted as it; None if it has none."""
        support = self.support(name)
        return self.count(name, name) / support if support else None

    @property
    def columns(self) -> tuple[str, ...]:
        """The predictions a confusion table shows: every class, and `OTHER` if it occurred."""
        seen = any(guess == OTHER for _, guess in self.confusion)
        return (*self.classes, OTHER) if seen else self.classes


OTHER = "(other)"
"""How a report names a prediction that is none of the node's classes."""
