"""What depends on a node's kind, checked on small cases: what a class node's score costs,
which classes its posterior weighs, how calibration divides out the prompt's bias, the
accuracy of outputs, and which settings a node of each kind takes."""

from __future__ import annotations

import math

import pytest
from dlgraph_sim import ScriptedModel

import dlgraph as dg
from dlgraph.nodes import ClassKind, Cost, NodeCall, Parent
from dlgraph.scoring import LOG_FLOOR

EXACT = dg.Capabilities()
SEVERAL = dg.Capabilities(continuations=3)


def test_a_class_nodes_score_asks_once_per_verbalizer_and_twice_when_calibrated() -> None:
    assert ClassKind(["yes|Yes", "no"]).score_cost(EXACT) == Cost(3, writes=False)
    assert ClassKind(["yes|Yes", "no"], calibrate=True).score_cost(EXACT) == Cost(6, writes=False)


@pytest.mark.parametrize(
    ("capabilities", "calls"),
    [
        (SEVERAL, 1),
        (dg.Capabilities(continuations=2), 2),  # three verbalizers: two calls of two at most
        (dg.Capabilities(continuations=1), 3),  # one a call: one each
        (dg.Capabilities(exact_logprobs=False, top_logprobs=5), 1),
        (dg.Capabilities(exact_logprobs=False), 1),
    ],
)
def test_a_class_nodes_score_is_one_call_when_the_backend_answers_a_distribution_in_one(
    capabilities: dg.Capabilities, calls: int
) -> None:
    kind = ClassKind(["yes|Yes", "no"])
    assert kind.score_cost(capabilities) == kind.run_cost(capabilities) == Cost(calls, False)
    assert ClassKind(["yes|Yes", "no"], calibrate=True).score_cost(capabilities).calls == 2 * calls


async def test_a_class_nodes_posterior_weighs_its_output_first_then_every_other_class() -> None:
    kind = ClassKind(["a", "b", "c"])
    assert await kind.posterior_candidates(None, "b", "", 0, None) == ["b", "a", "c"]  # type: ignore[arg-type]


def biased(request: dg.LogprobRequest) -> float:
    """P(yes) = 0.8 whatever the input: the prompt's bias, all of it."""
    return math.log(0.8 if request.target.strip().lower() == "yes" else 0.2)


async def test_a_calibrated_class_node_divides_out_the_bias_it_shows_without_content() -> None:
    net = dg.Network()
    net.add_node("answer", prompt="Answer.", classes=["yes", "no"], calibrate=True)
    net.add_edge(dg.INPUT, "answer")
    node = net.node("answer")
    parents = [Parent(dg.INPUT, "Input", "some text")]
    async with dg.Engine(ScriptedModel(logprob=biased)) as engine:
        call = NodeCall(engine=engine, phase="score")
        loglik, unknown = await node.logliks(parents, ["yes", "maybe"], call)
    assert loglik == pytest.approx(math.log(0.5))  # 0.8 / 0.8 against 0.2 / 0.2, normalised
    assert unknown == LOG_FLOOR  # no class of the node: the floor


def test_accuracy_is_the_share_of_outputs_right_and_refuses_an_empty_dataset() -> None:
    net = dg.Network()
    net.add_node("answer", prompt="Answer.", classes=["yes", "no"])
    node = net.node("answer")
    assert node.accuracy(["yes", "no", "no", "yes"], ["yes", "yes", "no", "no"]) == 0.5
    with pytest.raises(ValueError, match="empty dataset"):
        node.accuracy([], [])


def test_a_text_node_writes_128_tokens_at_temperature_zero_unless_told() -> None:
    net = dg.Network()
    net.add_node("say", prompt="Say it.")
    kind = net.node("say").kind
    assert (kind.max_tokens, kind.temperature, kind.stop) == (128, 0.0, ())


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"output": "yes"}, "output: expected bool"),
        ({"trainable": 1}, "trainable: expected bool"),
        ({"calibrate": True}, "calibrate applies to class nodes only"),
        ({"classes": ["yes", "no"], "max_tokens": 8}, "max_tokens applies to"),
    ],
    ids=["output not a bool", "trainable not a bool", "calibrated text", "class with tokens"],
)
def test_a_node_refuses_settings_of_the_wrong_type_or_kind(settings, message) -> None:
    with pytest.raises(dg.GraphError, match=message):
        dg.Network().add_node("n", prompt="Do it.", **settings)


@pytest.mark.parametrize("data", [["Answer.", []], {"prompt": "Answer."}], ids=["list", "no demos"])
def test_a_parameter_from_a_file_must_be_its_prompt_and_demonstrations(data) -> None:
    with pytest.raises(TypeError, match="expected an object with prompt and demonstrations"):
        dg.Parameter.from_json(data)


async def test_a_text_node_samples_at_its_own_temperature_unless_the_call_gives_one() -> None:
    net = dg.Network()
    net.add_node("say", prompt="Say it.", temperature=0.3)
    node = net.node("say")
    parents = [Parent(dg.INPUT, "Input", "x")]
    model = ScriptedModel(generate=lambda request: "out")
    async with dg.Engine(model) as engine:
        await node.run(parents, NodeCall(engine=engine, phase="forward"))
        await node.run(parents, NodeCall(engine=engine, phase="forward", seed=1, temperature=0.9))
    assert [record.request.temperature for record in model.calls] == [0.3, 0.9]
