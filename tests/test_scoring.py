"""Answer arithmetic: the DLN answer normalisation, class matching, distributions, entropy."""

from __future__ import annotations

import math

import pytest
from dlgraph_sim import ScriptedModel

import dlgraph as dg
from dlgraph.scoring import entropy, is_correct, matching_class

YES_NO = ["yes|Yes", "no|No"]


def test_an_answer_is_its_first_word_lowercased_without_punctuation_or_digits() -> None:
    assert is_correct("Yes. Because the 2 words rhyme.", "yes")
    assert is_correct("yes", "YES!")
    assert not is_correct("No, yes.", "yes")


def test_an_answer_of_the_form_option_x_is_x() -> None:
    assert is_correct("Option (B), as the text says", "(b)")
    assert not is_correct("Option (B)", "option")


def test_a_class_matches_any_of_its_verbalizers_in_any_case_or_punctuation() -> None:
    assert matching_class("NEGATIVE!", ["Positive|good", "Negative|bad"]) == "Negative"
    assert matching_class("Bad.", ["Positive|good", "Negative|bad"]) == "Negative"
    assert matching_class("fine", ["Positive|good", "Negative|bad"]) is None


def test_entropy_of_a_distribution_counts_only_what_has_probability() -> None:
    assert entropy([0.5, 0.5]) == pytest.approx(math.log(2))
    assert entropy([1.0, 0.0]) == 0.0


async def test_classify_stays_finite_for_verbalizers_the_model_finds_very_unlikely() -> None:
    log_probability = {" yes": -800.0, " Yes": -800.0, " no": -1.0, " No": -math.inf}
    model = ScriptedModel(logprob=lambda request: log_probability[request.target])
    async with dg.Engine(model) as engine:
        distribution = await engine.classify("Is it?", YES_NO)
    assert distribution == [0.0, 1.0]


async def test_classify_is_uniform_when_the_model_rules_out_every_verbalizer() -> None:
    model = ScriptedModel(logprob=lambda request: -math.inf)
    async with dg.Engine(model) as engine:
        distribution = await engine.classify("Is it?", ["a", "b", "c", "d"])
    assert distribution == [0.25] * 4


def test_with_classes_an_answer_is_right_when_it_names_the_targets_class() -> None:
    assert is_correct("Yes, it is.", "yes", YES_NO)
    assert not is_correct("No.", "yes", YES_NO)
    assert not is_correct("maybe", "maybe", YES_NO)  # no class: never right
