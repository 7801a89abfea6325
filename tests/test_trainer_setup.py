"""What a trainer knows before its first call: the network it refuses, the engines it spends
on, the nodes it trains, the data it refuses."""

from __future__ import annotations

import pytest
from dlgraph_sim import ScriptedModel
from test_trainer import YES_NO, dln2

import dlgraph as dg


def engine() -> dg.Engine:
    return dg.Engine(ScriptedModel())


def test_a_trainer_refuses_a_network_that_does_not_validate() -> None:
    net = dg.Network()
    net.add_node("answer", prompt="Answer.", classes=YES_NO)  # no edge reaches it
    with pytest.raises(dg.GraphError, match="'answer': has no parents"):
        dg.VariationalTrainer(net, engine())


def test_a_trainer_spends_on_one_engine_or_on_the_forward_one_then_the_backward_one() -> None:
    forward, backward = engine(), engine()
    assert dg.VariationalTrainer(dln2(), forward).engines == [forward]
    assert dg.VariationalTrainer(dln2(), forward, backward=backward).engines == [forward, backward]


def test_a_trainer_trains_the_nodes_named_or_else_every_trainable_one_in_order() -> None:
    assert dg.VariationalTrainer(dln2(), engine()).trainable_nodes == ["reason", "answer"]
    chosen = dg.VariationalTrainer(dln2(), engine(), trainable=["reason"])
    assert chosen.trainable_nodes == ["reason"]


def test_a_trainer_refuses_dev_targets_outside_the_classes_before_any_call() -> None:
    model = ScriptedModel()
    trainer = dg.VariationalTrainer(dln2(), dg.Engine(model))
    good = [dg.Example("a word", "yes")]
    with pytest.raises(dg.DataError, match="dev"):
        trainer.check_data(good, [dg.Example("a word", "maybe")])
    assert model.calls == []


async def test_a_steps_batch_loss_is_its_output_nodes_mean_error_on_the_batch() -> None:
    """Both heads always answer yes: the first is right on half the batch, the second on a
    quarter, so the loss is the mean of 0.5 and 0.75."""
    net = dg.Network()
    for head in ("first", "second"):
        net.add_node(head, prompt=f"Is the {head} word good?", classes=YES_NO)
        net.add_edge(dg.INPUT, head)

    def always_yes(request: dg.LogprobRequest) -> float:
        return -0.1 if request.target.strip().lower() == "yes" else -5.0

    batch = [
        dg.Example(
            f"word {i}", {"first": "yes" if i < 2 else "no", "second": "yes" if i < 1 else "no"}
        )
        for i in range(4)
    ]
    async with dg.Engine(ScriptedModel(logprob=always_yes)) as engine:
        trainer = dg.VariationalTrainer(net, engine, num_prompt_samples=1, max_demonstrations=0)
        outcome = await trainer.step(batch)
    assert outcome.batch_loss == pytest.approx((0.5 + 0.75) / 2)
