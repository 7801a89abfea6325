"""What a trainer knows before its first call: the network it refuses, the engines it spends
on, the nodes it trains, the data it refuses."""

from __future__ import annotations

import pytest
from dlgraph_sim import ScriptedModel
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from test_trainer import YES_NO, dln1, dln2

import dlgraph as dg
from dlgraph.forward import Trace
from dlgraph.train.records import StepOutcome


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


def test_applying_a_step_puts_its_chosen_prompts_in_the_network_and_remembers_its_scores() -> None:
    trainer = dg.VariationalTrainer(dln1(), engine())
    chosen = dg.Parameter("Say yes or no.")
    trainer.apply(StepOutcome(0.5, {"answer": chosen}, {"answer": [(chosen, -1.0)]}, {}))
    assert trainer.net.prompts() == {"answer": "Say yes or no."}
    assert trainer.memory.parameters("answer") == [chosen]


SHORT, LONG = "a word", "a much longer input, of many more words than the short one has"
WITH_DEMONSTRATIONS = dg.Parameter("Answer.", [dg.Demonstration("an input", "yes")] * 3)


def fits(candidate: dg.Parameter, window: int) -> bool:
    """Whether the trainer keeps `candidate` for its node on a batch of a short input and a
    long one, under a model of `window` tokens."""
    model = ScriptedModel(capabilities=dg.Capabilities(context_window=window))
    trainer = dg.VariationalTrainer(dln1(), dg.Engine(model))
    xs = (SHORT, LONG)
    trace = Trace(xs, {dg.INPUT: xs, "answer": ("yes", "no")}, {"answer": xs})
    return trainer._fits("answer", candidate, trace)


def tokens(text: str) -> int:
    net = dln1()
    return ScriptedModel().count_tokens(
        net.render("answer", {dg.INPUT: text, "answer": "no"}, WITH_DEMONSTRATIONS)
    )


def test_a_candidate_with_demonstrations_fits_when_the_longest_input_leaves_64_tokens() -> None:
    needed = tokens(LONG) + 64
    assert tokens(SHORT) + 64 < needed - 1  # the short input alone would fit in less
    assert fits(WITH_DEMONSTRATIONS, needed)
    assert not fits(WITH_DEMONSTRATIONS, needed - 1)


def test_a_candidate_without_demonstrations_always_fits_however_small_the_window() -> None:
    assert fits(dg.Parameter("Answer at length. " * 50), 1)
    assert not fits(WITH_DEMONSTRATIONS, 1)


async def test_a_fit_span_says_why_the_run_stopped() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    data = [dg.Example(f"word {i}", "yes") for i in range(4)]
    tracing = dg.Tracing(tracer_provider=provider)
    async with dg.Engine(ScriptedModel(), tracing=tracing) as traced:
        trainer = dg.VariationalTrainer(dln1(), traced, num_prompt_samples=1, max_demonstrations=0)
        result = await trainer.fit(data, data, steps=1, batch_size=2)
    (fit,) = [span for span in exporter.get_finished_spans() if span.name == "dlgraph.fit"]
    assert fit.attributes is not None
    assert fit.attributes["dlgraph.stopped"] == result.stopped == "steps"


def test_an_estimate_knows_the_calls_of_a_plain_metric_but_not_of_an_async_one() -> None:
    async def judged(outputs: object, example: dg.Example) -> float:
        return 1.0

    trainer = dg.VariationalTrainer(dln1(), engine())
    assert trainer.estimate(2, 4, dev_size=4).unknown == ()
    assert trainer.estimate(2, 4, dev_size=4, metric="contains").unknown == ()
    unknown = trainer.estimate(2, 4, dev_size=4, metric=judged).unknown
    assert len(unknown) == 1 and "async metric" in unknown[0]
