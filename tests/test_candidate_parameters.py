"""A node's candidates for one step, from their parts: the current parameter first, then the
remembered ones, the proposed instructions (with the current demonstrations) and the drawn
demonstration sets (with the current instruction), and the current instruction alone when it
carries demonstrations; no repeats, no blank instruction. The examples a candidate's
demonstrations show, which it is not scored on; the memory of the best ones, reloaded."""

from __future__ import annotations

import math

from test_trainer import dln2

import dlgraph as dg
from dlgraph.forward import Trace
from dlgraph.train.candidates import Memory, candidate_parameters, shown_examples
from dlgraph.train.step import StepState

SHOWN = (dg.Demonstration("Input: a", "yes"),)
DRAWN = (dg.Demonstration("Input: b", "no"),)


def test_candidates_put_the_current_parameter_first_then_each_kind_in_turn() -> None:
    current = dg.Parameter("Answer.")
    candidates = candidate_parameters(
        current, [dg.Parameter("Remembered.")], ["Proposed."], [DRAWN]
    )
    assert candidates == [
        current,
        dg.Parameter("Remembered."),
        dg.Parameter("Proposed."),
        dg.Parameter("Answer.", DRAWN),
    ]


def test_candidates_of_a_parameter_with_demonstrations_include_its_instruction_alone() -> None:
    current = dg.Parameter("Answer.", SHOWN)
    candidates = candidate_parameters(current, [], ["Proposed."], [])
    assert candidates == [current, dg.Parameter("Proposed.", SHOWN), dg.Parameter("Answer.")]


def test_candidates_leave_out_repeats_and_blank_instructions() -> None:
    current = dg.Parameter("Answer.")
    candidates = candidate_parameters(current, [current], ["Answer.", "  ", "Other."], [])
    assert candidates == [current, dg.Parameter("Other.")]


def letters_state() -> StepState:
    """A batch of two words through dln2: `reason` wrote a letter, `answer` a class."""
    xs = ("abc", "dfe")
    state = StepState(
        (dg.Example("abc", "no"), dg.Example("dfe", "yes")), {"answer": ["no", "yes"]}
    )
    state.trace = Trace(
        xs,
        {dg.INPUT: xs, "reason": ("letter: c", "letter: e"), "answer": ("no", "yes")},
        {},
    )
    state.targets["reason"] = ["letter: c", "letter: e"]
    return state


def test_a_demonstration_of_an_input_keeps_its_example_out_of_the_score_whatever_it_read() -> None:
    """A remembered demonstration shows the word "abc" with another hidden value than this
    step's: the candidate would still be copying an answer it was given on that example."""
    shown = dg.Demonstration("reason: letter: x\nInput: abc", "no")
    candidate = dg.Parameter("Answer.", (shown,))
    assert shown_examples(dln2(), "answer", candidate, letters_state()) == {0}


def test_a_demonstration_read_exactly_as_the_node_reads_it_keeps_its_example_out() -> None:
    shown = dg.Demonstration("reason: letter: e\nInput: dfe", "yes")
    candidate = dg.Parameter("Answer.", (shown,))
    assert shown_examples(dln2(), "answer", candidate, letters_state()) == {1}


def test_the_memory_reloads_a_candidate_that_was_scored_on_no_example() -> None:
    """A candidate whose demonstrations showed the whole batch has an ELBO of minus infinity;
    a checkpoint that remembers it must load again."""
    memory = Memory(2)
    memory.remember("answer", {dg.Parameter("Answer."): -math.inf, dg.Parameter("Other."): -1.0})
    again = Memory.from_json(2, memory.to_json())
    assert again.parameters("answer") == [dg.Parameter("Other."), dg.Parameter("Answer.")]
