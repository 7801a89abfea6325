"""What each step of a render costs (`dlgraph.templates._budget`): the allowance a render
gets for the values it is given, where it stops, and what each filter charges for the text it
writes, checked call by call on a budget of our own."""

from __future__ import annotations

import attrs
import jinja2
import pytest
from jinja2.exceptions import SecurityError

import dlgraph as dg
from dlgraph.templates._budget import (
    BUDGET,
    CHARACTERS,
    FILTERS,
    INTERNAL_FILTERS,
    STEPS,
    TESTS,
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


def test_values_nested_deeper_than_python_recurses_are_counted_without_recursion() -> None:
    @attrs.frozen
    class Box:
        inside: object

    value: object = "abc"
    for _ in range(5_000):
        value = Box(value)
    assert input_characters([value]) == 3


def test_a_render_given_nothing_may_take_100_000_steps_and_write_a_million_characters() -> None:
    budget = RenderBudget.for_values({})
    assert (budget.step_limit, budget.character_limit) == (100_000, 1_000_000)


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
        ("lower", ("AB",), "ab", 1, 2),
        ("capitalize", ("ab",), "Ab", 1, 2),
        ("title", ("ab cd",), "Ab Cd", 1, 5),
        ("string", (12,), "12", 1, 2),
        ("wordcount", ("a b c",), 3, 1, 0),
        ("count", ("abc",), 3, 1, 0),
        ("default", ("", "x", True), "x", 1, 0),
        ("d", (None, "x"), None, 1, 0),
        ("trim", ("  x  ",), "x", 1, 1),
        ("join", (["ab", "c"], ", "), "ab, c", 3, 2 + 2 + 1 + 2),
        ("replace", ("aaa", "a", "bb"), "bbbbbb", 1, 3 + 3),
        ("replace", ("aaa", "a", "bb", 2), "bbbba", 1, 3 + 2),
        ("replace", ("aaa", "", "-"), "-a-a-a-", 1, 3 + 4),
        ("replace", ("aaa", "aa", ""), "a", 1, 3),
        ("replace", ("aaa", "a", "bb", 0), "aaa", 1, 3),
        ("indent", ("a\nb", 2), "a\n  b", 1, 3 + 3 * 2),
        ("indent", ("a\nb", "--"), "a\n--b", 1, 3 + 3 * 2),
        ("indent", ("a\nb", 0), "a\nb", 1, 3),
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


def test_a_filter_called_outside_a_render_is_refused() -> None:
    with pytest.raises(SecurityError, match="rendered without a budget"):
        FILTERS["upper"](Context(), "ab")


@pytest.mark.parametrize(
    ("name", "args"), [("number", (5,)), ("defined", ("x",)), ("divisibleby", (6, 3))]
)
def test_a_jinja_test_charges_a_step(name: str, args: tuple[object, ...]) -> None:
    budget = RenderBudget(10, 10)
    assert TESTS[name](Context({BUDGET: budget}), *args) is True
    assert (budget.steps, budget.characters) == (1, 0)


@pytest.mark.parametrize(
    ("value", "attribute", "allowed"),
    [
        ("text", "strip", True),
        ("text", "center", False),
        ("text", "__class__", False),
        (dg.Demonstration("a", "b"), "input", True),
        (dg.Demonstration("a", "b"), "_private", False),
        (dg.Demonstration("a", "b"), "evolve", False),
        ({"key": "value"}, "keys", False),
        (5, "real", False),
    ],
)
def test_a_render_reaches_only_text_methods_record_fields_and_loop_counters(
    value: object, attribute: str, allowed: bool
) -> None:
    assert sandbox().is_safe_attribute(value, attribute, None) is allowed


def test_a_text_method_charges_a_step_and_what_it_returns() -> None:
    environment, budget = sandbox(), RenderBudget(100, 100)
    context = Context({BUDGET: budget})
    assert environment.call(context, "  ab ".strip) == "ab"
    assert (budget.steps, budget.characters) == (1, 2)
    assert environment.call(context, "ab cd e".split) == ["ab", "cd", "e"]
    assert (budget.steps, budget.characters) == (1 + 1 + 3, 2 + 5)


@pytest.mark.parametrize("callee", [len, "ab".center, print, dg.Demonstration])
def test_a_render_may_call_nothing_but_the_text_methods(callee: object) -> None:
    budget = RenderBudget(100, 100)
    with pytest.raises(SecurityError, match="is not allowed"):
        sandbox().call(Context({BUDGET: budget}), callee, "x")
    assert budget.steps == 0


def rendered(source: str, **values: object) -> str:
    """`source` rendered in a fresh sandbox (the one `Template` holds was made at import)."""
    budget = RenderBudget(1000, 1000)
    return sandbox().from_string(source).render(**values, **{BUDGET: budget})


@pytest.mark.parametrize(
    ("source", "value", "expected"),
    [
        ("{{ x }}\n", "a", "a"),  # no trailing newline kept
        ("{{ x }}", "<b> & 'q'", "<b> & 'q'"),  # prompts are not HTML
    ],
)
def test_a_render_writes_the_text_as_given(source: str, value: str, expected: str) -> None:
    assert rendered(source, x=value) == expected


@pytest.mark.parametrize("name", ["range", "lipsum", "cycler", "joiner", "namespace", "dict"])
def test_a_render_sees_none_of_jinjas_globals(name: str) -> None:
    with pytest.raises(jinja2.UndefinedError):
        rendered(f"{{{{ {name} }}}}")
