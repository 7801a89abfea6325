"""What each step of a render costs (`dlgraph.templates._budget`): the allowance a render
gets for the values it is given, where it stops, and what each filter charges for the text it
writes, checked call by call on a budget of our own."""

from __future__ import annotations

import pytest

import dlgraph as dg
from dlgraph.templates._budget import (
    BUDGET,
    CHARACTERS,
    FILTERS,
    INTERNAL_FILTERS,
    STEPS,
    BudgetExceeded,
    RenderBudget,
    input_characters,
    sandbox,
)


class Context(dict[str, object]):
    """What a filter reads of a render's context: the budget, and the environment."""

    environment = sandbox()


def spent(name: str, *args: object) -> tuple[object, int, int]:
    """The filter's result, and the steps and characters it charged."""
    budget = RenderBudget(10**6, 10**6)
    filters = FILTERS | INTERNAL_FILTERS
    result = filters[name](Context({BUDGET: budget}), *args)
    if name == "_counted":
        result = list(result)  # type: ignore[call-overload]
    return result, budget.steps, budget.characters


def test_the_text_given_to_a_render_counts_inside_lists_mappings_and_records() -> None:
    values = ["ab", ["cd", ("e",)], {"fg": "hij"}, dg.Demonstration("kl", "m"), 42, None]
    assert input_characters(values) == 2 + 2 + 1 + 2 + 3 + 2 + 1


def test_a_render_may_take_a_step_and_write_characters_per_character_given() -> None:
    budget = RenderBudget.for_values({"prompt": "xyz", "parents": ["ab"]})
    assert (budget.step_limit, budget.character_limit) == (STEPS + 5, CHARACTERS + 10 * 5)


def test_a_render_stops_at_the_first_step_or_character_beyond_its_budget() -> None:
    budget = RenderBudget(3, 10)
    budget.step(2)
    budget.step()
    budget.write(10)
    with pytest.raises(BudgetExceeded, match="more than 3 steps"):
        budget.step()
    with pytest.raises(BudgetExceeded, match="more than 10 characters"):
        budget.write(1)


def test_printing_a_list_costs_the_text_inside_it_and_printing_text_costs_nothing_yet() -> None:
    budget = RenderBudget(10, 100)
    assert budget.text(["ab", "c"]) == "['ab', 'c']"
    assert budget.characters == 3
    assert (budget.text("plain"), budget.text(5)) == ("plain", "5")
    assert budget.characters == 3


@pytest.mark.parametrize(
    ("name", "args", "result", "steps", "characters"),
    [
        ("upper", ("ab",), "AB", 1, 2),
        ("trim", ("  x  ",), "x", 1, 1),
        ("join", (["ab", "c"], ", "), "ab, c", 3, 2 + 2 + 1 + 2),
        ("replace", ("aaa", "a", "bb"), "bbbbbb", 1, 3 + 3),
        ("replace", ("aaa", "a", "bb", 2), "bbbba", 1, 3 + 2),
        ("replace", ("aaa", "", "-"), "-a-a-a-", 1, 3 + 4),
        ("replace", ("aaa", "aa", ""), "a", 1, 3),
        ("indent", ("a\nb", 2), "a\n  b", 1, 3 + 3 * 2),
        ("indent", ("a\nb", "--"), "a\n--b", 1, 3 + 3 * 2),
        ("truncate", ("abcdefghij", 5, True, "...", 0), "ab...", 1, 5),
        ("length", ([1, 2, 3],), 3, 1, 0),
        ("reverse", ("abc",), "cba", 1, 3),
        ("reverse", ([1, 2, 3],), [3, 2, 1], 1 + 3, 0),
        ("first", ([1, 2],), 1, 1, 0),
        ("last", ([1, 2],), 2, 1, 0),
        ("_counted", ([1, 2, 3],), [1, 2, 3], 1 + 3, 0),
        ("_concat", (["ab", 1],), "ab1", 1, 3),
        ("_sliced", ("abcd",), "abcd", 1, 4),
        ("_sliced", ([1, 2],), [1, 2], 1 + 2, 0),
    ],
)
def test_a_filter_charges_a_step_and_the_text_it_writes(
    name: str, args: tuple[object, ...], result: object, steps: int, characters: int
) -> None:
    assert spent(name, *args) == (result, steps, characters)


@pytest.mark.parametrize(
    ("name", "args", "message"),
    [
        ("replace", ("aaa", 1, "b"), "replace: expected text"),
        ("indent", ("a", True), "indent: expected a width"),
        ("indent", ("a", 2.5), "indent: expected a width"),
    ],
)
def test_a_filter_refuses_arguments_of_the_wrong_type(name, args, message) -> None:
    with pytest.raises(TypeError, match=message):
        spent(name, *args)
