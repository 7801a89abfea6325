"""A hidden node's posterior and the terms its children are scored on, by hand: the target
is the heaviest candidate, the entropy a mean over examples, pruning keeps the heaviest when
everything is light, and the kept weights sum to one."""

from __future__ import annotations

import math

import pytest

from dlgraph.train.elbo import Term, prune
from dlgraph.train.step import Posterior


def test_a_posteriors_target_is_each_examples_heaviest_candidate() -> None:
    posterior = Posterior((("a", "b", "c"), ("d", "e")), ((0.2, 0.5, 0.3), (0.9, 0.1)))
    assert posterior.targets == ["b", "d"]


def test_a_posteriors_entropy_is_the_mean_over_examples() -> None:
    posterior = Posterior((("a", "b"), ("c", "d"), ("e",)), ((0.5, 0.5), (0.5, 0.5), (1.0,)))
    assert posterior.mean_entropy == pytest.approx(2 * math.log(2) / 3)


def test_a_point_posterior_is_each_output_for_certain() -> None:
    posterior = Posterior.point(["x", "y"])
    assert posterior.targets == ["x", "y"]
    assert posterior.weights == ((1.0,), (1.0,))
    assert posterior.mean_entropy == 0.0


def terms(*weights: float) -> list[Term]:
    return [Term({}, f"t{i}", w) for i, w in enumerate(weights)]


def test_pruning_keeps_terms_at_the_minimum_weight_and_renormalises() -> None:
    kept = prune(terms(0.5, 0.25, 0.25), min_weight=0.25)
    assert [t.target for t in kept] == ["t0", "t1", "t2"]
    kept = prune(terms(0.5, 0.3, 0.2), min_weight=0.3)
    assert [t.target for t in kept] == ["t0", "t1"]
    assert [t.weight for t in kept] == pytest.approx([0.625, 0.375])


def test_pruning_everything_light_keeps_the_heaviest_alone() -> None:
    kept = prune(terms(0.2, 0.5, 0.3), min_weight=0.9)
    assert [(t.target, t.weight) for t in kept] == [("t1", 1.0)]
