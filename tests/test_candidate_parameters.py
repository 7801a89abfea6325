"""A node's candidates for one step, from their parts: the current parameter first, then the
remembered ones, the proposed instructions (with the current demonstrations) and the drawn
demonstration sets (with the current instruction), and the current instruction alone when it
carries demonstrations; no repeats, no blank instruction."""

from __future__ import annotations

import dlgraph as dg
from dlgraph.train.candidates import candidate_parameters

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
