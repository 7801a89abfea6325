"""Answers and probabilities: class verbalizers, answer normalisation, accuracy, log maths.

A leaf: it imports nothing from dlgraph, and everything above may use it.
Normalisation follows the DLN paper: non-word characters become spaces, digits go, text is
lowercased and the first word is the answer ("option" is skipped, so "Option (A)" is "a").
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

LOG_FLOOR = -20.0
"""The log-probability of a sure miss (e^-20 ≈ 2e-9): a class no source gives any probability,
a target the model rules out. A floor keeps one such miss from outweighing every other example."""

_NON_WORD = re.compile(r"\W+")
_DIGITS = re.compile(r"\d")


def verbalizers(spec: str) -> tuple[str, ...]:
    """``"yes|Yes"`` -> ``("yes", "Yes")``; the first verbalizer names the class."""
    return tuple(part for part in spec.split("|") if part)


def class_name(spec: str) -> str:
    return verbalizers(spec)[0]


def logsumexp(values: Sequence[float]) -> float:
    top = max(values)
    if top == -math.inf:
        return -math.inf
    return top + math.log(sum(math.exp(value - top) for value in values))


def normalize_log_scores(scores: Sequence[float]) -> list[float]:
    """Log scores -> probabilities summing to one (uniform if every score is -inf)."""
    total = logsumexp(scores)
    if total == -math.inf:
        return [1.0 / len(scores)] * len(scores)
    return [math.exp(score - total) for score in scores]


def normalize_answer(text: str) -> str:
    words = _DIGITS.sub("", _NON_WORD.sub(" ", text)).lower().split()
    if words and words[0] == "option":
        words = words[1:]
    return words[0] if words else ""


def matching_class(text: str, classes: Sequence[str]) -> str | None:
    """The class whose verbalizers include the normalised answer, else None."""
    answer = normalize_answer(text)
    for spec in classes:
        if answer in {normalize_answer(word) for word in verbalizers(spec)}:
            return class_name(spec)
    return None


def is_correct(prediction: str, target: str, classes: Sequence[str] | None = None) -> bool:
    """Exact match after normalisation; with classes, both sides map to a class first."""
    if classes:
        predicted = matching_class(prediction, classes)
        return predicted is not None and predicted == matching_class(target, classes)
    return normalize_answer(prediction) == normalize_answer(target)


def entropy(probabilities: Sequence[float]) -> float:
    return -sum(p * math.log(p) for p in probabilities if p > 0)
