"""Templates: what a prompt template may say, and the budget every render spends.

The bad-input corpus (`test_bad_input.py`) holds the templates that are refused; these tests
check that what prompts need still works, and how the allow-list and the budget behave.
"""

from __future__ import annotations

import time

import attrs
import jinja2
import pytest
from limited import LimitedRunner

import dlgraph as dg
from dlgraph.nodes import Demonstration, Parent
from dlgraph.templates import MAX_SOURCE, Template, TemplateRefused
from dlgraph.templates._allowed import RECORD_FIELDS
from dlgraph.train.posterior import ChildView
from dlgraph.train.proposals import ShownExample

RICH = """{{ prompt|trim }}
{% for d in demonstrations %}{{ loop.index }}/{{ loop.length }}. {{ d.input|upper }} -> {{ d.output }}
{% else %}no examples
{% endfor %}{% for p in parents if p.name != "INPUT" %}{{ p.label ~ ": " ~ p.text[:5] }}
{% endfor %}{{ classes|join(", ") }} | {{ input.split()|length }} words | {{ input.strip().title() }}
{{ "long" if input|length > 10 else "short" }} | {{ parents[-1].text|replace("a", "A")|truncate(9) }}
{{ prompt|indent(2, first=True) }}|{{ missing|default("none") }}|{{ input is string }}"""


def render(template: str, **values: object) -> str:
    return Template.load(template).render(**values)


def test_a_template_may_use_what_prompts_need() -> None:
    text = render(
        RICH,
        prompt="  Answer.  ",
        demonstrations=[Demonstration("q1", "yes"), Demonstration("q2", "no")],
        parents=[Parent("INPUT", "Input", "a b c"), Parent("reason", "reason", "abracadabra")],
        classes=["yes", "no"],
        input="  a b c  ",
    )
    assert text == (
        "Answer.\n"
        "1/2. Q1 -> yes\n"
        "2/2. Q2 -> no\n"
        "reason: abrac\n"
        "yes, no | 3 words | A B C\n"
        "short | AbrAcAdAbrA\n"
        "    Answer.  |none|True"
    )


def load_and_render_a_constant_bomb() -> tuple[float, str]:
    """(in a child process under a memory limit) seconds to load, and the render's refusal"""
    started = time.monotonic()
    template = Template.load("{{ 'x'|indent(1500000000) }}{{ 1 is divisibleby 0 }}")
    seconds = time.monotonic() - started
    try:
        template.render()
    except TemplateRefused as error:
        return seconds, str(error)
    return seconds, "rendered"


def test_loading_a_template_evaluates_none_of_it() -> None:
    """jinja folds constant expressions while compiling; this one would write 1.5 GB."""
    with LimitedRunner(memory_bytes=1_000_000_000, time_limit_s=20) as limited:
        seconds, refusal = limited.run(load_and_render_a_constant_bomb)
    assert seconds < 1.0
    assert "it writes more than 1,000,000 characters" in refusal


def test_the_render_budget_grows_with_the_values_given() -> None:
    long_input = "word " * 600_000  # 3,000,000 characters: more than the floor of the budget
    assert render("{{ prompt }}\n{{ input|trim }}", prompt="P", input=long_input).endswith("word")
    with pytest.raises(TemplateRefused, match="it takes more than 3,100,000 steps"):
        render("{% for a in input %}{% for b in input %}{% endfor %}{% endfor %}", input=long_input)


def test_a_refusal_names_the_construct_and_its_line() -> None:
    with pytest.raises(TemplateRefused, match=r"the filter 'center' is not allowed .* \(line 3\)"):
        Template.load("{{ prompt }}\n{% if input %}\n{{ input|center(9) }}{% endif %}")


def test_a_method_call_is_refused_at_render_when_its_object_is_not_text() -> None:
    """`split` is an allowed name, but only text's own method may be called."""
    net = dg.Network()
    net.add_node("x", prompt="p", template="{{ parents.split() }}{{ input }}")
    net.add_edge(dg.INPUT, "x")
    with pytest.raises(dg.GraphError, match="node 'x': "):
        net.validate()


@pytest.mark.parametrize("record", [Parent, Demonstration, ShownExample, ChildView])
def test_the_allow_list_names_every_field_of_the_records_templates_see(record: type) -> None:
    assert {field.name for field in attrs.fields(record)} <= RECORD_FIELDS


def test_a_template_is_equal_to_the_same_text_loaded_again() -> None:
    assert Template.load(RICH) == Template.load(RICH)
    assert Template.load(RICH) != Template.load(RICH + " ")


def test_a_template_may_be_20_000_characters_long_and_no_longer() -> None:
    longest = "x." * (MAX_SOURCE // 2)
    assert Template.load(longest).render() == longest
    with pytest.raises(TemplateRefused, match="it is 20,001 characters long"):
        Template.load(longest + ".")


def test_a_template_may_nest_40_levels_and_no_deeper() -> None:
    """The template, its output, 37 `not` and the variable are 40 levels."""
    assert render("{{ " + "not " * 37 + "input }}", input="") == "True"
    with pytest.raises(TemplateRefused, match="it nests more than 40 levels deep"):
        Template.load("{{ " + "not " * 38 + "input }}")


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{{ prompt|join(*parents) }}", "the filter 'join' may not take"),
        ("{{ prompt|join(**parents) }}", "the filter 'join' may not take"),
        ("{{ prompt is divisibleby(*parents) }}", "the test 'divisibleby' may not take"),
        ("{{ prompt is divisibleby(**parents) }}", "the test 'divisibleby' may not take"),
    ],
    ids=["filter *args", "filter **kwargs", "test *args", "test **kwargs"],
)
def test_a_filter_or_test_given_unpacked_arguments_is_refused(source: str, message: str) -> None:
    with pytest.raises(TemplateRefused, match=rf"{message} \*args or \*\*kwargs \(line 1\)"):
        Template.load(source)


def test_a_template_reading_an_item_that_is_not_there_fails_rather_than_writing_nothing() -> None:
    with pytest.raises(jinja2.UndefinedError):
        render("{{ parents[3].text }}", parents=[])


@pytest.mark.parametrize(
    ("source", "size", "message"),
    [
        (
            "{% for a in input %}{% for b in input %}{% endfor %}{% endfor %}",
            400,
            "it takes more than 100,400 steps",
        ),
        ("{% for c in input %}" + "{{ c }}" * 25 + "{% endfor %}", 5_000, "105,000 steps"),
        ("{% for c in input %}{{ input }}{% endfor %}", 1_100, "1,011,000 characters"),
        ("{% for c in input %}{{ input[:]|length ~ '' }}{% endfor %}", 1_100, "characters"),
        ("{% for c in input %}{{ input[:][:1] }}{% endfor %}", 1_100, "characters"),
    ],
    ids=[
        "a loop inside a loop",
        "pieces of output",
        "output",
        "a slice inside ~",
        "a slice of a slice",
    ],
)
def test_a_render_that_outgrows_its_budget_is_refused(source: str, size: int, message: str) -> None:
    """Each case stays within its budget when one of its counters is missed."""
    template = Template.load(source)
    with pytest.raises(TemplateRefused, match=message):
        template.render(input="x" * size)
