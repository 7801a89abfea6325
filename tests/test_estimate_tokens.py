"""The tokens an estimate bounds, on a backend that counts four characters a token: a call on
the forward engine carries an input with its demonstrations, the longest prompt and room for
the answer; a proposal on the backward engine carries a batch of inputs and writes an
instruction. (Its calls are checked against real steps in test_estimate.py.)"""

from __future__ import annotations

from dlgraph_sim import ScriptedModel
from test_trainer import dln2

import dlgraph as dg

LONGEST_PROMPT = 5  # "Answer the question.": 20 characters
OPTIONS = dict(max_demonstrations=2, proposal_max_tokens=100, seed=1)


def model() -> ScriptedModel:
    return ScriptedModel(generate=lambda request: "ok")


def examples(count: int, length: int) -> list[dg.Example]:
    return [dg.Example("x" * length, "yes") for _ in range(count)]


def test_each_forward_call_is_charged_an_input_its_demonstrations_the_prompt_and_an_answer() -> (
    None
):
    trainer = dg.VariationalTrainer(dln2(), dg.Engine(model()), **OPTIONS)
    estimate = trainer.estimate(2, 10, examples(3, 39), dev_size=4)
    per_input = (39 * 3 + 2) // 4 // 3  # the three inputs joined by spaces: 9 tokens each
    assert estimate.tokens == estimate.calls * (per_input * (1 + 2) + LONGEST_PROMPT + 64)
    assert (estimate.backward_calls, estimate.backward_tokens) == (0, 0)


def test_an_estimate_without_examples_takes_an_input_for_64_tokens() -> None:
    trainer = dg.VariationalTrainer(dln2(), dg.Engine(model()), **OPTIONS)
    estimate = trainer.estimate(1, 10)
    assert estimate.tokens == estimate.calls * (64 * 3 + LONGEST_PROMPT + 64)


def test_the_input_length_is_sampled_from_the_first_50_examples() -> None:
    trainer = dg.VariationalTrainer(dln2(), dg.Engine(model()), **OPTIONS)
    train = examples(50, 39) + examples(10, 4000)
    estimate = trainer.estimate(1, 10, train)
    per_input = (39 * 50 + 49) // 4 // 50
    assert estimate.tokens == estimate.calls * (per_input * 3 + LONGEST_PROMPT + 64)


def test_a_backward_engine_is_charged_apart_for_a_batch_of_inputs_and_the_instruction() -> None:
    train = examples(3, 39)
    shared = dg.VariationalTrainer(dln2(), dg.Engine(model()), **OPTIONS).estimate(2, 10, train, 4)
    trainer = dg.VariationalTrainer(
        dln2(), dg.Engine(model()), backward=dg.Engine(model()), **OPTIONS
    )
    apart = trainer.estimate(2, 10, train, 4)
    assert apart.backward_calls > 0
    assert apart.calls + apart.backward_calls == shared.calls
    per_input = (39 * 3 + 2) // 4 // 3
    assert apart.tokens == apart.calls * (per_input * 3 + LONGEST_PROMPT + 64)
    batch = 3  # the batch is never larger than the training set
    assert apart.backward_tokens == apart.backward_calls * (
        per_input * batch + LONGEST_PROMPT + 100
    )
