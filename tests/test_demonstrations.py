"""Demonstrations, a backward model and several output nodes, on scripted worlds where the
test can fail (see demo_world.py)."""

from __future__ import annotations

import json
import math

import pytest
from demo_world import (
    FIRST_KEY,
    SECOND_KEY,
    RelayWorld,
    SecretWorld,
    TwoHeads,
    colour,
    follows,
    pair_task,
    query,
    secret,
    secret_task,
    shown,
)
from dlgraph_sim import ScriptedModel
from letter_world import LetterWorld, single_word_task
from test_trainer import dln1

import dlgraph as dg

YES_NO = ["yes|Yes", "no|No"]
OPTIONS = dict(num_prompt_samples=2, num_hidden_samples=3, posterior_temperature=0.5, seed=2)


def relay() -> dg.Network:
    net = dg.Network()
    net.add_node("reason", prompt="Read the word.", max_tokens=8)
    net.add_node("answer", prompt="Answer the question.", classes=YES_NO)
    net.add_edge(dg.INPUT, "reason")
    net.add_edge("reason", "answer")
    net.add_edge(dg.INPUT, "answer")
    return net


async def train(net, model, steps=4, backward=None, **options):
    async with dg.Engine(model) as engine:
        if backward is None:
            trainer = dg.VariationalTrainer(net, engine, **(OPTIONS | options))
            return await trainer.fit(*DATA[type(model).__name__ + model.name], steps, 10)
        async with dg.Engine(backward) as writer:
            trainer = dg.VariationalTrainer(net, engine, backward=writer, **(OPTIONS | options))
            return await trainer.fit(*DATA[type(model).__name__ + model.name], steps, 10)


DATA = {
    "ScriptedModelsecret": (secret_task(40, seed=1), secret_task(40, seed=2)),
    "ScriptedModelrelay": (secret_task(40, seed=1), secret_task(40, seed=2)),
    "ScriptedModelheads": (pair_task(40, seed=1), pair_task(40, seed=2)),
}


async def test_dln1_learns_a_rule_only_demonstrations_can_show() -> None:
    net = dln1()
    result = await train(net, SecretWorld().model())
    assert result.initial_dev_score <= 0.6
    assert result.best_dev_score >= 0.9
    pairs = shown(net.render("answer", {dg.INPUT: "zzzz"}))
    assert len(pairs) >= 2 and len({answer for _, answer in pairs}) == 2


async def test_without_demonstrations_the_rule_cannot_be_learnt() -> None:
    net = dln1()
    result = await train(net, SecretWorld().model(), max_demonstrations=0)
    assert result.best_dev_score <= 0.6
    assert net.node("answer").demonstrations == ()


async def test_candidates_whose_demonstrations_exceed_the_context_window_are_left_out() -> None:
    """A window (79 tokens, four characters each to the scripted model) with room for the
    prompt and the 64 tokens the trainer keeps free, not for one demonstration: no call
    carries one, and the rule only demonstrations show is not learnt. Would fail if the
    trainer ignored the backend's stated window."""
    net = dln1()
    model = SecretWorld().model(capabilities=dg.Capabilities(context_window=79))
    result = await train(net, model)
    scored = [r.request.context for r in model.calls if isinstance(r.request, dg.LogprobRequest)]
    assert scored and not any(shown(context) for context in scored)
    assert result.best_dev_score <= 0.6 and net.node("answer").demonstrations == ()


async def test_candidates_whose_demonstrations_fit_the_context_window_are_kept() -> None:
    """The same task under a window with room for every demonstration set: the rule is
    learnt as without a window."""
    net = dln1()
    model = SecretWorld().model(capabilities=dg.Capabilities(context_window=100_000))
    result = await train(net, model)
    assert result.best_dev_score >= 0.9 and len(net.node("answer").demonstrations) >= 2


async def test_a_hidden_node_learns_demonstrations_of_outputs_only_the_posterior_reveals() -> None:
    net = relay()
    result = await train(net, RelayWorld().model(), steps=5)
    assert result.initial_dev_score <= 0.6
    assert result.best_dev_score >= 0.9
    hidden = net.node("reason").demonstrations
    assert len(hidden) >= 2
    for demonstration in hidden:  # each shows the colour of its own word, which no input states
        word = demonstration.input.removeprefix("Input: ")
        assert demonstration.output == f"colour: {colour(word)}"


async def test_without_the_posterior_the_hidden_node_has_nothing_to_show() -> None:
    net = relay()
    result = await train(net, RelayWorld().model(), steps=5, use_posterior=False)
    assert result.best_dev_score <= 0.65


async def test_the_backward_engine_writes_and_the_forward_engine_scores() -> None:
    world = LetterWorld()
    forward = world.model()
    backward = ScriptedModel(generate=world.generate, logprob=world.logprob, name="writer")
    net = dg.Network()
    net.add_node("reason", prompt="Read the input.", max_tokens=16)
    net.add_node("answer", prompt="Answer the question.", classes=YES_NO)
    for edge in [(dg.INPUT, "reason"), ("reason", "answer"), (dg.INPUT, "answer")]:
        net.add_edge(*edge)
    async with dg.Engine(forward) as engine, dg.Engine(backward) as writer:
        trainer = dg.VariationalTrainer(net, engine, backward=writer, **OPTIONS)
        await trainer.fit(single_word_task(20, seed=1), single_word_task(10, seed=2), 2, 10)
        by_phase = {e: e.statistics().by_phase() for e in (engine, writer)}
    assert backward.count("generate", phase="propose") == 2 * 2 * 2  # 2 steps, 2 nodes, 2 samples
    assert backward.count("generate", phase="posterior") > 0
    assert backward.count("logprob") == 0  # no log-likelihood on the writer
    assert forward.count(phase="propose") == 0 and forward.count("generate", phase="posterior") == 0
    assert (
        forward.count("logprob", phase="score") > 0
        and forward.count("logprob", phase="posterior") > 0
    )
    assert set(by_phase[writer]) == {"propose", "posterior"}


async def test_two_output_nodes_learn_both_heads_from_mapping_targets() -> None:
    net = dg.Network()
    net.add_node("first", prompt="Answer.", classes=YES_NO)
    net.add_node("second", prompt="Answer.", classes=YES_NO)
    net.add_edge(dg.INPUT, "first")
    net.add_edge(dg.INPUT, "second")
    result = await train(net, TwoHeads().model(), steps=4, max_demonstrations=0)
    assert net.prompts() == {"first": FIRST_KEY, "second": SECOND_KEY}
    assert result.best_dev_score >= 0.9 > 0.6 >= result.initial_dev_score
    async with dg.Engine(TwoHeads().model()) as engine:
        accuracy = await dg.evaluate(net, engine, pair_task(20, seed=3))
        predictions = await net.predict(engine, ["bcda zzzt"])
    assert set(accuracy.by_output) == {"first", "second"} and accuracy >= 0.9
    assert predictions == [{"first": "yes", "second": "no"}]


async def test_a_plain_target_for_two_outputs_is_refused_naming_the_example() -> None:
    net = dg.Network()
    for name in ("first", "second"):
        net.add_node(name, prompt="Answer.", classes=YES_NO)
        net.add_edge(dg.INPUT, name)
    model = TwoHeads().model()
    async with dg.Engine(model) as engine:
        try:
            await dg.evaluate(net, engine, [dg.Example("ab cd", "yes")])
        except dg.DataError as error:
            assert "evaluation data[0]: one target for 2 output nodes (first, second)" in str(error)
        else:
            raise AssertionError("a plain target for two outputs was accepted")
    assert model.calls == []


async def test_demonstrations_survive_save_load_and_resume(tmp_path) -> None:
    net = dln1()
    await train(net, SecretWorld().model(), steps=2)
    assert net.node("answer").demonstrations
    net.save(tmp_path / "net.json")
    assert dg.Network.load(tmp_path / "net.json").parameters() == net.parameters()
    saved = json.loads((tmp_path / "net.json").read_text())["nodes"][0]["demonstrations"]
    assert saved == [d.to_json() for d in net.node("answer").demonstrations]

    class Stop(Exception):
        pass

    def stop_after_one(record: dg.StepRecord) -> None:
        if record.step == 1:
            raise Stop

    train_set, dev_set = DATA["ScriptedModelsecret"]
    runs = []
    for interrupted in (False, True):
        folder = tmp_path / f"run{interrupted}"
        net = dln1()
        async with dg.Engine(SecretWorld().model(), cache=False) as engine:
            trainer = dg.VariationalTrainer(net, engine, **OPTIONS)
            if interrupted:
                try:
                    await trainer.fit(
                        train_set, dev_set, 3, 10, checkpoint_dir=folder, on_step=stop_after_one
                    )
                except Stop:
                    pass
                net = dln1()
                trainer = dg.VariationalTrainer(net, engine, **OPTIONS)
            await trainer.fit(train_set, dev_set, 3, 10, checkpoint_dir=folder)
        runs.append(net.parameters())
    assert runs[0] == runs[1] and runs[0]["answer"].demonstrations


async def test_a_candidate_is_not_scored_on_the_examples_its_demonstrations_show() -> None:
    """Scoring a candidate on an example it shows would reward copying: those examples cost
    no call and count for nothing in its ELBO. In this world a candidate whose demonstrations
    reveal the rule gets p = 0.9 on every example, so its ELBO is exactly log 0.9."""
    model = SecretWorld().model()
    batch = secret_task(10, seed=3)
    async with dg.Engine(model) as engine:
        trainer = dg.VariationalTrainer(dln1(), engine, **OPTIONS)
        outcome = await trainer.step(batch)
    score_calls = [call.request.context for call in model.calls if call.request.phase == "score"]
    assert any(shown(context) for context in score_calls)
    for context in score_calls:
        assert query(context) not in [word for word, _ in shown(context)]
    revealing = [
        elbo
        for parameter, elbo in outcome.scored["answer"]
        if follows(
            [(d.input.removeprefix("Input: "), d.output) for d in parameter.demonstrations],
            lambda word: "yes" if secret(word) else "no",
        )
    ]
    assert revealing and revealing == pytest.approx([math.log(0.9)] * len(revealing))
