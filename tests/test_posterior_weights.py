"""A hidden node's posterior and the terms its children are scored on, by hand: the target
is the heaviest candidate, the entropy a mean over examples, pruning keeps the heaviest when
everything is light, and the kept weights sum to one. An output node's aligned terms over its
hidden parents' candidates, an example's score as the sum of its terms, and the ELBO's trust
region."""

from __future__ import annotations

import math

import pytest
from test_trainer import fan_in

import dlgraph as dg
from dlgraph.forward import Trace
from dlgraph.train.elbo import ScoreJob, Term, add_scores, elbo, expectation_terms, prune
from dlgraph.train.step import Posterior, StepState


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


def fan_in_state(a: Posterior, b: Posterior) -> StepState:
    """One word through fan_in (hidden `a` and `b` feed class node `c`), with posteriors."""
    xs = ("abe",)
    state = StepState((dg.Example("abe", "second"),), {"c": ["second"]})
    state.trace = Trace(xs, {dg.INPUT: xs, "a": ("a0",), "b": ("b0",), "c": ("both",)}, {})
    state.posteriors |= {"a": a, "b": b}
    return state


def test_an_output_nodes_expectation_covers_every_candidate_of_its_largest_parent() -> None:
    """Three candidates of `a` and two of `b`: the aligned terms run to three, `b` wrapping
    around, each weighted by the product of its candidates' weights."""
    a = Posterior((("a0", "a1", "a2"),), ((0.5, 0.3, 0.2),))
    b = Posterior((("b0", "b1"),), ((0.6, 0.4),))
    (terms,) = expectation_terms(fan_in(), "c", fan_in_state(a, b), min_weight=0.0)
    assert [(t.values["a"], t.values["b"], t.target) for t in terms] == [
        ("a0", "b0", "second"),
        ("a1", "b1", "second"),
        ("a2", "b0", "second"),
    ]
    assert [t.weight for t in terms] == pytest.approx([0.30 / 0.54, 0.12 / 0.54, 0.12 / 0.54])


def test_an_output_nodes_terms_lighter_than_the_minimum_weight_are_left_out() -> None:
    a = Posterior((("a0", "a1"),), ((0.994, 0.006),))
    b = Posterior((("b0",),), ((1.0,),))
    (terms,) = expectation_terms(fan_in(), "c", fan_in_state(a, b), min_weight=0.01)
    assert [(t.values["a"], t.weight) for t in terms] == [("a0", 1.0)]


def test_an_examples_score_is_the_sum_of_its_weighted_terms() -> None:
    first, second = Term({}, "yes", 0.75), Term({}, "no", 0.25)
    jobs = [ScoreJob(0, 0, first), ScoreJob(0, 0, second), ScoreJob(0, 1, first)]
    scores: list[list[float | None]] = [[None, None]]
    add_scores(scores, jobs, [-1.0, -2.0, -0.5])
    assert scores == [[-3.0, -0.5]]


def test_a_candidate_sharing_no_example_with_the_current_one_pays_no_trust_region() -> None:
    """Each was scored on the example the other's demonstrations do not show."""
    assert elbo([[None, -1.0], [-2.0, None]], trust_region=2.0) == [-1.0, -2.0]
    assert elbo([[-1.0, -1.0], [-2.0, -1.0]], trust_region=2.0) == [-1.0, -1.5 - 2.0 * 0.5]
