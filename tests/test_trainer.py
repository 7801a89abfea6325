"""The variational trainer on scripted tasks where it can fail (see letter_world.py)."""

from __future__ import annotations

import json
import math

import anyio
import pytest
from dlgraph_sim import ScriptedModel
from letter_world import (
    DIRECT_KEY,
    OUTPUT_KEY,
    PAIR_CLASSES,
    LetterWorld,
    last,
    single_word_task,
    word_pair_task,
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import dlgraph as dg
from dlgraph.scoring import LOG_FLOOR
from dlgraph.train.pace import Wave
from dlgraph.train.proposals import REWRITES

YES_NO = ["yes|Yes", "no|No"]


def dln1() -> dg.Network:
    net = dg.Network()
    net.add_node("answer", prompt="Answer the question.", classes=YES_NO)
    net.add_edge(dg.INPUT, "answer")
    return net


def dln2() -> dg.Network:
    net = dg.Network()
    net.add_node("reason", prompt="Read the input.", max_tokens=16)
    net.add_node("answer", prompt="Answer the question.", classes=YES_NO)
    net.add_edge(dg.INPUT, "reason")
    net.add_edge("reason", "answer")
    net.add_edge(dg.INPUT, "answer")
    return net


def fan_in() -> dg.Network:
    net = dg.Network()
    net.add_node("a", prompt="Look at the input.", max_tokens=16)
    net.add_node("b", prompt="Look at the input.", max_tokens=16)
    net.add_node("c", prompt="Answer the question.", classes=PAIR_CLASSES)
    for edge in [(dg.INPUT, "a"), (dg.INPUT, "b"), ("a", "c"), ("b", "c"), (dg.INPUT, "c")]:
        net.add_edge(*edge)
    return net


TRAIN_OPTIONS = dict(
    num_prompt_samples=6,
    num_hidden_samples=5,
    posterior_temperature=0.25,
    seed=1,
    max_demonstrations=0,  # these worlds test instructions; demonstrations have their own
)
FULL_SCORING = dict(stop_when_decided=False)
"""For tests of what every candidate scores on every example (races have their own)."""


async def fit(net, world, train, dev, steps=6, **options):
    model = world.model()
    async with dg.Engine(model) as engine:
        trainer = dg.VariationalTrainer(net, engine, **(TRAIN_OPTIONS | options))
        result = await trainer.fit(train, dev, steps=steps, batch_size=10)
    return result, model


async def test_dln1_learns_an_instruction_only_proposals_can_write() -> None:
    world = LetterWorld(direct=True)
    train, dev = single_word_task(40, seed=1), single_word_task(40, seed=2)
    net = dln1()
    result, _ = await fit(net, world, train, dev)
    assert result.initial_dev_score <= 0.7
    assert result.best_dev_score >= 0.95
    assert DIRECT_KEY in net.prompts()["answer"]


async def test_dln2_learns_both_prompts_through_the_posterior() -> None:
    world = LetterWorld()
    train, dev = single_word_task(40, seed=1), single_word_task(40, seed=2)
    net = dln2()
    result, _ = await fit(net, world, train, dev)
    assert result.initial_dev_score <= 0.7
    assert result.best_dev_score >= 0.9
    assert net.prompts()["reason"] == last(1)
    assert net.prompts()["answer"] == OUTPUT_KEY


async def test_dln1_stays_near_chance_on_the_two_step_task() -> None:
    world = LetterWorld()
    train, dev = single_word_task(40, seed=1), single_word_task(40, seed=2)
    result, _ = await fit(dln1(), world, train, dev)
    assert result.best_dev_score <= 0.75


async def test_dln2_hidden_prompt_is_not_learnt_without_the_posterior() -> None:
    world = LetterWorld()
    train, dev = single_word_task(40, seed=1), single_word_task(40, seed=2)
    net = dln2()
    result, _ = await fit(net, world, train, dev, use_posterior=False)
    assert last(1) not in net.prompts()["reason"]
    assert result.best_dev_score <= 0.75


async def test_fan_in_graph_trains_every_node_without_special_cases() -> None:
    world = LetterWorld(pair=True)
    train, dev = word_pair_task(40, seed=1), word_pair_task(40, seed=2)
    net = fan_in()
    before = net.prompts()
    result, _ = await fit(net, world, train, dev, steps=8)
    after = net.prompts()
    assert all(after[name] != before[name] for name in before)
    assert result.best_dev_score >= result.initial_dev_score + 0.4


class Interrupt(Exception):
    pass


async def run_counting(net, world, train, dev, steps, **fit_options):
    model = world.model()
    async with dg.Engine(model, cache=False) as engine:
        trainer = dg.VariationalTrainer(net, engine, **TRAIN_OPTIONS)
        try:
            result = await trainer.fit(train, dev, steps=steps, batch_size=10, **fit_options)
        except Interrupt:
            result = None
    return result, len(model.calls)


async def test_fit_returns_the_best_network_on_dev_not_the_last(tmp_path) -> None:
    world = LetterWorld(direct=True)
    train = single_word_task(40, seed=1)
    flipped_dev = [
        dg.Example(e.input, "no" if e.target == "yes" else "yes")
        for e in single_word_task(40, seed=2)
    ]
    net = dln1()
    result, _ = await fit(net, world, train, flipped_dev, steps=3)
    last_prompts = result.history[-1].prompts
    assert DIRECT_KEY in last_prompts["answer"]  # training did move to the train-set rule
    assert result.history[-1].dev_score < result.initial_dev_score
    assert result.network.prompts() == {"answer": "Answer the question."} == net.prompts()
    assert result.best_dev_score == result.initial_dev_score


async def test_resume_after_interruption_repeats_no_step(tmp_path) -> None:
    world = LetterWorld()
    train, dev = single_word_task(40, seed=1), single_word_task(40, seed=2)
    _, uninterrupted_calls = await run_counting(dln2(), world, train, dev, steps=4)

    def crash_after_two(record: dg.StepRecord) -> None:
        if record.step == 2:
            raise Interrupt

    first, first_calls = await run_counting(
        dln2(), world, train, dev, 4, checkpoint_dir=tmp_path, on_step=crash_after_two
    )
    assert first is None
    net = dln2()
    resumed, resumed_calls = await run_counting(net, world, train, dev, 4, checkpoint_dir=tmp_path)
    assert [r.step for r in resumed.history] == [1, 2, 3, 4]
    assert first_calls + resumed_calls == uninterrupted_calls
    reference = dln2()
    await run_counting(reference, world, train, dev, steps=4)
    assert net.prompts() == reference.prompts()


async def test_corrupt_checkpoint_is_refused(tmp_path) -> None:
    world = LetterWorld()
    train, dev = single_word_task(20, seed=1), single_word_task(20, seed=2)
    await run_counting(dln2(), world, train, dev, steps=1, checkpoint_dir=tmp_path)
    path = tmp_path / "checkpoint.json"
    document = json.loads(path.read_text())
    document["payload"]["step"] = 7
    path.write_text(json.dumps(document))
    with pytest.raises(dg.CheckpointError, match="checksum mismatch"):
        await run_counting(dln2(), world, train, dev, steps=2, checkpoint_dir=tmp_path)
    path.write_text(path.read_text()[:100])
    with pytest.raises(dg.CheckpointError, match="corrupt or truncated"):
        await run_counting(dln2(), world, train, dev, steps=2, checkpoint_dir=tmp_path)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d | {"format": "other.tool"}, "not a dlgraph checkpoint"),
        (lambda d: [d], "not a dlgraph checkpoint"),
        (lambda d: d | {"version": 1}, "checkpoint version 1, expected 3"),
    ],
    ids=["another format", "not an object", "another version"],
)
async def test_a_checkpoint_of_another_format_or_version_is_refused(
    tmp_path, edit, message
) -> None:
    world = LetterWorld()
    train, dev = single_word_task(20, seed=1), single_word_task(20, seed=2)
    await run_counting(dln2(), world, train, dev, steps=1, checkpoint_dir=tmp_path)
    path = tmp_path / "checkpoint.json"
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    with pytest.raises(dg.CheckpointError, match=message):
        await run_counting(dln2(), world, train, dev, steps=2, checkpoint_dir=tmp_path)


async def test_a_checkpoint_after_a_perfect_dev_accuracy_resumes(tmp_path) -> None:
    from dlgraph.train.checkpoint import _digest

    await checkpoint_after_two_steps(tmp_path)
    path = tmp_path / "checkpoint.json"
    document = json.loads(path.read_text())
    payload = document["payload"] | {"best_score": 1.0, "initial_score": 0.0}
    path.write_text(json.dumps(document | {"payload": payload, "sha256": _digest(payload)}))
    result, _ = await run_counting(
        dln2(),
        LetterWorld(),
        single_word_task(20, seed=1),
        single_word_task(20, seed=2),
        3,
        checkpoint_dir=tmp_path,
    )
    assert [r.step for r in result.history] == [1, 2, 3]
    assert result.initial_dev_score == 0.0 and result.best_dev_score == 1.0


async def test_checkpoint_of_another_setup_is_refused(tmp_path) -> None:
    world = LetterWorld()
    train, dev = single_word_task(20, seed=1), single_word_task(20, seed=2)
    await run_counting(dln2(), world, train, dev, steps=1, checkpoint_dir=tmp_path)
    with pytest.raises(dg.CheckpointError, match="written for another setup"):
        await run_counting(dln1(), world, train, dev, steps=2, checkpoint_dir=tmp_path)


async def test_budget_stop_keeps_the_best_network_and_a_checkpoint(tmp_path) -> None:
    world = LetterWorld()
    train, dev = single_word_task(40, seed=1), single_word_task(40, seed=2)
    net = dln2()
    model = world.model()
    async with dg.Engine(model, budget=dg.Budget(max_calls=1300)) as engine:
        trainer = dg.VariationalTrainer(net, engine, **TRAIN_OPTIONS)
        result = await trainer.fit(train, dev, steps=10, batch_size=10, checkpoint_dir=tmp_path)
    assert result.stopped == "budget"
    assert 1 <= len(result.history) < 10
    assert len(model.calls) == 1300
    saved = dg.Network.load(tmp_path / "best.json")
    assert saved.prompts() == result.network.prompts() == net.prompts()
    checkpoint = json.loads((tmp_path / "checkpoint.json").read_text())
    assert checkpoint["payload"]["step"] == len(result.history)


async def test_same_seed_learns_the_same_prompts_twice() -> None:
    world = LetterWorld(pair=True)
    train, dev = word_pair_task(40, seed=1), word_pair_task(40, seed=2)
    runs = []
    for _ in range(2):
        net = fan_in()
        result, _ = await fit(net, world, train, dev, steps=3, seed=5)
        runs.append((net.prompts(), [r.elbo for r in result.history]))
    assert runs[0] == runs[1]


async def test_different_seeds_draw_different_batches() -> None:
    world = LetterWorld()
    train, dev = single_word_task(40, seed=1), single_word_task(20, seed=2)
    elbos = []
    for seed in (1, 2):
        result, _ = await fit(dln2(), world, train, dev, steps=1, seed=seed)
        elbos.append(result.history[0].elbo)
    assert elbos[0] != elbos[1]


async def test_estimate_bounds_the_calls_a_run_makes() -> None:
    world = LetterWorld()
    train, dev = single_word_task(40, seed=1), single_word_task(40, seed=2)
    model = world.model()
    async with dg.Engine(model, cache=False) as engine:
        trainer = dg.VariationalTrainer(dln2(), engine, **TRAIN_OPTIONS, **FULL_SCORING)
        estimate = trainer.estimate(3, 10, train, dev_size=len(dev))
        await trainer.fit(train, dev, steps=3, batch_size=10)
    assert len(model.calls) <= estimate.calls <= 6 * len(model.calls)
    assert estimate.tokens > estimate.calls


async def test_estimate_lays_out_a_dln2_run_in_the_waves_the_trainer_sends() -> None:
    """Written out by hand for DLN-2 (a text node, then a yes/no node: 4 verbalizers), batch
    10, 6 proposals, 5 hidden samples, memory 5, no demonstrations, dev 20, two steps."""
    train = single_word_task(40, seed=1)
    async with dg.Engine(LetterWorld().model()) as engine:
        trainer = dg.VariationalTrainer(dln2(), engine, **TRAIN_OPTIONS, **FULL_SCORING)
        estimate = trainer.estimate(2, 10, train, dev_size=20)
    dev = [Wave(False, "generate", 20), Wave(False, "score", 20 * 4)]
    forward = [Wave(False, "generate", 10), Wave(False, "score", 10 * 4)]
    posterior = [
        Wave(True, "sample", 10 * 5),  # 5 samples besides the forward output, one call each
        # the child's likelihood (the forward output's from the cache: the forward pass's)
        # and the prior (one call per candidate: this model scores one continuation a call)
        Wave(False, "score", 10 * 6 * (4 + 1), 10 * 5 * 4 + 10 * 6),
    ]
    propose = [Wave(True, "propose", 6 * 2)]
    candidates = 2 + 5 + 6  # current (and it without demonstrations), memory, proposals
    per_candidate = 10 * 6 * 1 + 10 * 6 * 4  # reason over its 6 samples, answer over reason's

    def scores(remembered: int) -> list[Wave]:
        expected = (6 + remembered) * per_candidate  # the current's: the posterior's, cached
        return [Wave(False, "score", candidates * per_candidate, expected)]

    first = forward + posterior + propose + scores(0)
    second = forward + posterior + propose + scores(5)
    assert list(estimate.waves) == dev + first + dev + second + dev
    assert estimate.calls == sum(wave.calls for wave in estimate.waves)


async def test_progress_reaches_callback_and_jsonl_log(tmp_path) -> None:
    world = LetterWorld()
    train, dev = single_word_task(20, seed=1), single_word_task(20, seed=2)
    seen: list[int] = []

    async def on_step(record: dg.StepRecord) -> None:
        seen.append(record.step)

    log = tmp_path / "steps.jsonl"
    model = world.model()
    async with dg.Engine(model) as engine:
        trainer = dg.VariationalTrainer(dln2(), engine, **TRAIN_OPTIONS)
        await trainer.fit(train, dev, steps=2, batch_size=10, on_step=on_step, log_path=log)
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert seen == [1, 2] and [line["step"] for line in lines] == [1, 2]
    assert lines[0]["calls"] > 0 and "reason" in lines[0]["posterior_entropy"]
    assert lines[0]["elbo"]["answer"][0][0] == "Answer the question."


async def test_fit_refuses_target_outside_the_output_classes() -> None:
    world = LetterWorld()
    train = single_word_task(10, seed=1) + [dg.Example("kbt", "maybe")]
    with pytest.raises(
        dg.DataError, match=r"train\[10\]: target 'maybe' is not a class of node 'answer'"
    ):
        await fit(dln2(), world, train, single_word_task(10, seed=2), steps=1)


async def test_fit_refuses_empty_dev_set() -> None:
    with pytest.raises(dg.DataError, match="dev: empty dataset"):
        await fit(dln2(), LetterWorld(), single_word_task(10, seed=1), [], steps=1)


async def test_early_stopping_ends_a_run_that_stops_improving() -> None:
    model = LetterWorld().model()
    async with dg.Engine(model) as engine:
        trainer = dg.VariationalTrainer(dln1(), engine, **TRAIN_OPTIONS)
        result = await trainer.fit(
            single_word_task(40, seed=1),
            single_word_task(40, seed=2),
            steps=10,
            batch_size=10,
            patience=2,
        )
    assert result.stopped == "early_stopping" and len(result.history) == 2


# -- against a separately written reference, as micrograd tests against PyTorch ---------------


def reference_class_loglik(
    world: LetterWorld, prompt: str, context_lines: str, label: str
) -> float:
    context = f"{prompt}\n\n{context_lines}\nAnswer:"
    probability = world.class_probability(prompt, context, label)
    return max(math.log(probability), -20.0) if probability > 0 else -20.0  # the floor, e^-20


async def test_generic_step_on_one_node_matches_a_hand_written_dln1_step() -> None:
    world = LetterWorld(direct=True)
    batch = single_word_task(8, seed=3)
    async with dg.Engine(world.model()) as engine:
        trainer = dg.VariationalTrainer(dln1(), engine, **TRAIN_OPTIONS)
        outcome = await trainer.step(batch)
    scored = outcome.elbo["answer"]
    for prompt, elbo in scored:
        expected = sum(
            reference_class_loglik(world, prompt, f"Input: {e.input}", e.target) for e in batch
        ) / len(batch)
        assert elbo == pytest.approx(expected, abs=1e-9)
    best = max(range(len(scored)), key=lambda i: (scored[i][1], -i))
    assert outcome.parameters["answer"].prompt == scored[best][0]


async def test_trust_region_charges_a_candidate_what_it_loses_against_the_current_prompt() -> None:
    """ELBO with a trust region λ: the mean log-likelihood, minus λ times the mean of what the
    candidate loses against the current prompt example by example (gains are not paid)."""
    world = LetterWorld(direct=True)
    batch = single_word_task(8, seed=3)
    async with dg.Engine(world.model()) as engine:
        trainer = dg.VariationalTrainer(
            dln1(), engine, **TRAIN_OPTIONS, **FULL_SCORING, trust_region=2.0
        )
        outcome = await trainer.step(batch)

    def logliks(prompt: str) -> list[float]:
        return [reference_class_loglik(world, prompt, f"Input: {e.input}", e.target) for e in batch]

    current = logliks("Answer the question.")
    penalties = []
    for prompt, elbo in outcome.elbo["answer"]:
        own = logliks(prompt)
        penalty = 2.0 * sum(max(0.0, c - o) for c, o in zip(current, own, strict=True)) / 8
        assert elbo == pytest.approx(sum(own) / 8 - penalty, abs=1e-9)
        penalties.append(penalty)
    assert any(p > 0 for p in penalties)  # some candidate lost somewhere, and paid for it


async def test_the_memory_keeps_the_best_candidates_a_step_scored() -> None:
    world = LetterWorld(direct=True)
    async with dg.Engine(world.model()) as engine:
        trainer = dg.VariationalTrainer(
            dln1(), engine, **TRAIN_OPTIONS, **FULL_SCORING, memory_size=2
        )
        outcome = await trainer.step(single_word_task(8, seed=3))
        trainer.apply(outcome)
    scored = outcome.scored["answer"]
    best = sorted(scored, key=lambda pair: pair[1], reverse=True)
    assert len(scored) > 2 and best[1][1] > best[2][1]
    assert trainer.memory.parameters("answer") == [best[0][0], best[1][0]]


async def test_generic_step_on_two_nodes_matches_a_hand_written_dln2_step() -> None:
    world = LetterWorld()
    batch = single_word_task(6, seed=4)
    tau = TRAIN_OPTIONS["posterior_temperature"]
    async with dg.Engine(world.model()) as engine:
        trainer = dg.VariationalTrainer(dln2(), engine, **TRAIN_OPTIONS)
        outcome = await trainer.step(batch)
    posterior = outcome.posteriors["reason"]
    reason_prompt, answer_prompt = "Read the input.", "Answer the question."
    for i, example in enumerate(batch):
        scores = []
        for candidate in posterior.candidates[i]:
            likelihood = reference_class_loglik(
                world, answer_prompt, f"reason: {candidate}\nInput: {example.input}", example.target
            )
            prior = world.logprob(
                dg.LogprobRequest(
                    f"{reason_prompt}\n\nInput: {example.input}\nOutput:", " " + candidate
                )
            )
            scores.append((likelihood + prior) / tau)
        top = max(scores)
        weights = [math.exp(s - top) for s in scores]
        assert list(posterior.weights[i]) == pytest.approx(
            [w / sum(weights) for w in weights], abs=1e-9
        )
    for prompt, elbo in outcome.elbo["answer"]:
        total = 0.0
        for i, example in enumerate(batch):
            terms = [
                (c, w)
                for c, w in zip(posterior.candidates[i], posterior.weights[i], strict=True)
                if w >= 0.01
            ]
            norm = sum(w for _, w in terms)
            total += sum(
                w
                / norm
                * reference_class_loglik(
                    world, prompt, f"reason: {c}\nInput: {example.input}", example.target
                )
                for c, w in terms
            )
        assert elbo == pytest.approx(total / len(batch), abs=1e-9)


async def test_budget_spent_in_the_first_dev_evaluation_stops_cleanly_with_the_initial_network(
    tmp_path,
) -> None:
    world = LetterWorld()
    net = dln2()
    async with dg.Engine(world.model(), budget=dg.Budget(max_calls=5)) as engine:
        trainer = dg.VariationalTrainer(net, engine, **TRAIN_OPTIONS)
        result = await trainer.fit(
            single_word_task(20, seed=1),
            single_word_task(20, seed=2),
            steps=2,
            batch_size=5,
            checkpoint_dir=tmp_path,
        )
    assert result.stopped == "budget" and result.history == []
    assert result.initial_dev_score is None and result.best_dev_score is None
    assert dg.Network.load(tmp_path / "best.json").prompts() == dln2().prompts()


def checkpoint_after_two_steps(tmp_path):
    return run_counting(
        dln2(),
        LetterWorld(),
        single_word_task(20, seed=1),
        single_word_task(20, seed=2),
        2,
        checkpoint_dir=tmp_path,
    )


@pytest.fixture(scope="module")
def two_step_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The checkpoint file of a two-step run, trained once for every edit of it."""
    folder = tmp_path_factory.mktemp("two-steps")
    anyio.run(checkpoint_after_two_steps, folder)
    return (folder / "checkpoint.json").read_text()


CHECKPOINT_EDITS = [
    ("step", lambda p: p | {"step": 5}, r"history: steps \[1, 2\] do not run 1..5"),
    ("step", lambda p: p | {"step": -1}, r"step: step must be >= 0"),
    ("step", lambda p: p | {"step": "2"}, r"step: step: expected int"),
    ("rng_state", lambda p: p | {"rng_state": [3, [1, 2], None]}, r"rng_state:"),
    ("rng_state", lambda p: p | {"rng_state": "abc"}, r"rng_state: expected \[version"),
    (
        "history",
        lambda p: p | {"history": p["history"][:1]},
        r"history: steps \[1\] do not run 1..2",
    ),
    ("history", lambda p: p | {"history": [p["history"][0], p["history"][0]]}, r"do not run 1..2"),
    (
        "history",
        lambda p: p | {"history": [{"step": 1}] + p["history"][1:]},
        r"history: step record: missing",
    ),
    (
        "best_network",
        lambda p: p | {"best_network": {"format": "x"}},
        r"best_network: not a dlgraph network",
    ),
    ("best_network", lambda p: p | {"best_network": [1]}, r"best_network: not a dlgraph network"),
    (
        "network",
        lambda p: p | {"network": p["network"] | {"edges": [["INPUT", "ghost"]]}},
        r"network: edge 'INPUT' -> 'ghost'",
    ),
    (
        "best_score",
        lambda p: p | {"best_score": "high"},
        r"best_score: score: expected float, got 'high'",
    ),
    (
        "initial_score",
        lambda p: p | {"initial_score": True},
        r"initial_score: score: expected float, got True",
    ),
    (
        "memory",
        lambda p: p | {"memory": {"answer": {"x": "high"}}},
        r"memory: answer: expected a list",
    ),
    (
        "memory",
        lambda p: p | {"memory": {"answer": [[{"prompt": "x", "demonstrations": []}, "high"]]}},
        r"memory: elbo: expected float",
    ),
    (
        "memory",
        lambda p: p | {"memory": {"answer": [[{"prompt": "x", "demonstrations": "Yes"}, 1.0]]}},
        r"memory: demonstrations: expected a list",
    ),
    (
        "fields",
        lambda p: {k: v for k, v in p.items() if k != "ledger"},
        r"missing or unknown: ledger",
    ),
    ("history", lambda p: p | {"history": {"1": 1}}, r"history: expected a list of step records"),
    ("ledger", lambda p: p | {"ledger": [1]}, r"ledger: expected a list of objects"),
    (
        "rng_state",
        lambda p: p | {"rng_state": p["rng_state"][:2]},
        r"rng_state: expected \[version",
    ),
]


@pytest.mark.parametrize(
    "field, edit, message",
    CHECKPOINT_EDITS,
    ids=[f"{e[0]}-{i}" for i, e in enumerate(CHECKPOINT_EDITS)],
)
async def test_a_checkpoint_with_a_valid_checksum_but_bad_content_is_refused_before_any_change(
    tmp_path, two_step_checkpoint, field, edit, message
) -> None:
    from dlgraph.train.checkpoint import _digest

    path = tmp_path / "checkpoint.json"
    document = json.loads(two_step_checkpoint)
    payload = edit(document["payload"])
    path.write_text(json.dumps(document | {"payload": payload, "sha256": _digest(payload)}))
    net = dln2()
    before = net.prompts()
    model = LetterWorld().model()
    async with dg.Engine(model) as engine:
        trainer = dg.VariationalTrainer(net, engine, **TRAIN_OPTIONS)
        with pytest.raises(dg.CheckpointError, match=message):
            await trainer.fit(
                single_word_task(20, seed=1),
                single_word_task(20, seed=2),
                3,
                10,
                checkpoint_dir=tmp_path,
            )
    assert net.prompts() == before and trainer.steps_done == 0 and model.calls == []


async def test_a_step_committed_but_not_logged_is_logged_and_reported_on_resume(tmp_path) -> None:
    """A kill between saving the checkpoint and writing the log (or mid-line), simulated by
    cutting the first run's log line short."""
    train, dev = single_word_task(20, seed=1), single_word_task(20, seed=2)
    log = tmp_path / "steps.jsonl"
    await run_counting(dln2(), LetterWorld(), train, dev, 1, checkpoint_dir=tmp_path, log_path=log)
    assert json.loads((tmp_path / "checkpoint.json").read_text())["payload"]["step"] == 1
    log.write_text('{"step": 1, "batch_lo')  # a line cut short by the kill
    leftover = tmp_path / ".best.json.abcd1234.dlgraph-tmp"  # as write_atomic names one
    leftover.write_text("half a file")
    reported: list[int] = []
    result, _ = await run_counting(
        dln2(),
        LetterWorld(),
        train,
        dev,
        3,
        checkpoint_dir=tmp_path,
        log_path=log,
        on_step=lambda record: reported.append(record.step),
    )
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 2, 3]
    assert reported == [1, 2, 3] and [r.step for r in result.history] == [1, 2, 3]
    assert not leftover.exists()


def test_trainer_options_take_every_value_down_to_their_bounds() -> None:
    options = dg.TrainerOptions(
        num_prompt_samples=1,
        num_hidden_samples=0,
        posterior_temperature=0.01,
        sample_temperature=0.0,
        trust_region=0.0,
        memory_size=0,
        max_demonstrations=0,
        num_demonstration_samples=0,
        proposal_max_tokens=1,
        min_weight=0.0,
        seed=-1,
    )
    assert (options.num_hidden_samples, options.memory_size, options.seed) == (0, 0, -1)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("num_prompt_samples", 0, "must be > 0"),
        ("num_hidden_samples", -1, "must be >= 0"),
        ("posterior_temperature", 0.0, "must be > 0"),
        ("sample_temperature", -0.5, "must be >= 0"),
        ("trust_region", -1.0, "must be >= 0"),
        ("memory_size", -1, "must be >= 0"),
        ("max_demonstrations", -1, "must be >= 0"),
        ("num_demonstration_samples", -1, "must be >= 0"),
        ("proposal_max_tokens", 0, "must be > 0"),
        ("min_weight", -0.01, "must be >= 0"),
        ("use_posterior", "yes", "expected bool"),
        ("seed", 1.5, "expected int"),
        ("scoring", "best", "must be in"),
        ("stop_when_decided", 1, "expected bool"),
        ("decision_confidence", 0.5, "must be > 0.5"),
        ("decision_confidence", 1.0, "must be below 1"),
    ],
)
def test_trainer_options_refuse_a_value_outside_their_bounds(field, value, message) -> None:
    with pytest.raises((TypeError, ValueError), match=f"{field}.*{message}"):
        dg.TrainerOptions(**{field: value})


# -- one small step, seen from its outcome (fast) -----------------------------------------------


def proposing(text: str) -> ScriptedModel:
    """A model that proposes `text` and otherwise answers nothing."""
    return ScriptedModel(generate=lambda r: text if r.phase == "propose" else "")


async def proposal_prompts(batch_size: int, samples: int) -> list[str]:
    model = proposing("New rule.")
    async with dg.Engine(model) as engine:
        trainer = dg.VariationalTrainer(
            dln1(), engine, num_prompt_samples=samples, max_demonstrations=0
        )
        await trainer.step(single_word_task(batch_size, seed=1))
    return [c.request.prompt for c in model.calls if c.request.phase == "propose"]


@pytest.mark.parametrize("batch_size, shown", [(2, 1), (6, 3)])
async def test_a_proposal_is_shown_half_the_batch_each_input_as_the_node_reads_it(
    batch_size: int, shown: int
) -> None:
    (prompt,) = await proposal_prompts(batch_size, samples=1)
    assert f"[example {shown}]" in prompt and f"[example {shown + 1}]" not in prompt
    inputs = [line for line in prompt.splitlines() if line.startswith("Input: ")]
    words = {f"Input: {e.input}" for e in single_word_task(batch_size, seed=1)}
    assert len(inputs) == shown and set(inputs) <= words


async def test_proposal_samples_of_one_step_ask_for_different_rewrites() -> None:
    prompts = await proposal_prompts(4, samples=3)
    assert [next(r for r in REWRITES if r in p) for p in prompts] == list(REWRITES[:3])


async def test_a_proposal_becomes_an_instruction_trimmed_at_its_end_marker() -> None:
    async with dg.Engine(proposing("  New rule.  \n[/instruction] and more")) as engine:
        trainer = dg.VariationalTrainer(dln1(), engine, num_prompt_samples=1, max_demonstrations=0)
        outcome = await trainer.step(single_word_task(4, seed=1))
    assert [prompt for prompt, _ in outcome.elbo["answer"]] == ["Answer the question.", "New rule."]


async def test_a_step_draws_demonstration_sets_of_one_example_when_one_is_allowed() -> None:
    async with dg.Engine(proposing("")) as engine:
        trainer = dg.VariationalTrainer(
            dln1(), engine, num_prompt_samples=1, max_demonstrations=1, num_demonstration_samples=1
        )
        outcome = await trainer.step(single_word_task(3, seed=1))
    assert [len(p.demonstrations) for p, _ in outcome.scored["answer"]] == [0, 1]


def always_yes(request: dg.LogprobRequest) -> float:
    return -0.1 if request.target.strip().lower() == "yes" else -5.0


async def test_accuracy_scoring_scores_a_right_answer_zero_and_a_wrong_one_the_floor() -> None:
    """The node always answers yes: right on two examples of four, wrong on the others."""
    batch = [dg.Example(f"word {i}", "yes" if i < 2 else "no") for i in range(4)]
    async with dg.Engine(ScriptedModel(logprob=always_yes)) as engine:
        trainer = dg.VariationalTrainer(
            dln1(), engine, num_prompt_samples=1, max_demonstrations=0, scoring="accuracy"
        )
        outcome = await trainer.step(batch)
    assert outcome.elbo["answer"][0] == ("Answer the question.", pytest.approx(LOG_FLOOR / 2))


async def test_a_hidden_nodes_elbo_pays_no_trust_region() -> None:
    """The trust region is for output nodes: a remembered hidden prompt that loses against the
    current one on every example is scored by its mean log-likelihood alone."""
    world = LetterWorld()
    batch = single_word_task(3, seed=4)
    async with dg.Engine(world.model()) as engine:
        trainer = dg.VariationalTrainer(
            dln2(), engine, **TRAIN_OPTIONS | dict(num_prompt_samples=1), use_posterior=False
        )
        trainer.memory.remember("reason", {dg.Parameter(last(1)): 0.0})
        outcome = await trainer.step(batch)
    outputs = [c for (c,) in outcome.posteriors["reason"].candidates]

    def loglik(prompt: str, example: dg.Example, output: str) -> float:
        context = f"{prompt}\n\nInput: {example.input}\nOutput:"
        return world.logprob(dg.LogprobRequest(context, " " + output))

    assert [prompt for prompt, _ in outcome.elbo["reason"]] == ["Read the input.", last(1)]
    for prompt, score in outcome.elbo["reason"]:
        own = [loglik(prompt, e, o) for e, o in zip(batch, outputs, strict=True)]
        assert score == pytest.approx(sum(own) / len(own), abs=1e-9)
    assert outcome.elbo["reason"][1][1] < outcome.elbo["reason"][0][1]  # it lost everywhere


async def test_a_chain_of_hidden_nodes_gives_the_deeper_one_its_targets_first() -> None:
    net = dg.Network()
    net.add_node("first", prompt="Read the input.", max_tokens=16)
    net.add_node("second", prompt="Read the notes.", max_tokens=16)
    net.add_node("answer", prompt="Answer the question.", classes=YES_NO)
    for edge in [(dg.INPUT, "first"), ("first", "second"), ("second", "answer")]:
        net.add_edge(*edge)
    async with dg.Engine(ScriptedModel()) as engine:
        trainer = dg.VariationalTrainer(
            net, engine, num_prompt_samples=1, num_hidden_samples=1, max_demonstrations=0
        )
        outcome = await trainer.step(single_word_task(2, seed=1))
    assert set(outcome.posteriors) == {"first", "second"}


async def test_posterior_weights_add_the_candidates_own_log_likelihood_as_a_prior() -> None:
    """A smaller hand-written DLN-2 posterior: the hidden prompt names the last letter, so
    its prior tells the posterior samples apart."""
    world = LetterWorld()
    batch = single_word_task(2, seed=4)
    net = dln2()
    net.set_parameter("reason", dg.Parameter(last(1)))
    tau = TRAIN_OPTIONS["posterior_temperature"]
    options = TRAIN_OPTIONS | dict(num_prompt_samples=1, num_hidden_samples=3)
    async with dg.Engine(world.model()) as engine:
        outcome = await dg.VariationalTrainer(net, engine, **options).step(batch)
    posterior = outcome.posteriors["reason"]
    priors_differ = False
    for i, example in enumerate(batch):
        scores, priors = [], []
        for candidate in posterior.candidates[i]:
            likelihood = reference_class_loglik(
                world,
                "Answer the question.",
                f"reason: {candidate}\nInput: {example.input}",
                example.target,
            )
            context = f"{last(1)}\n\nInput: {example.input}\nOutput:"
            prior = world.logprob(dg.LogprobRequest(context, " " + candidate))
            priors.append(prior)
            scores.append((likelihood + prior) / tau)
        priors_differ |= len(set(priors)) > 1
        weights = [math.exp(s - max(scores)) for s in scores]
        assert list(posterior.weights[i]) == pytest.approx(
            [w / sum(weights) for w in weights], abs=1e-9
        )
    assert priors_differ


async def test_a_steps_score_span_counts_every_candidate_it_scores() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = dg.Tracing(tracer_provider=provider)
    async with dg.Engine(proposing("New rule."), tracing=tracing) as engine:
        trainer = dg.VariationalTrainer(dln1(), engine, num_prompt_samples=1, max_demonstrations=0)
        outcome = await trainer.step(single_word_task(4, seed=1))
    (score,) = [s for s in exporter.get_finished_spans() if s.name == "dlgraph.score"]
    assert len(outcome.scored["answer"]) == 2
    assert score.attributes["dlgraph.candidates"] == 2


async def test_a_step_reports_exactly_the_score_calls_it_sent() -> None:
    """Without a cache every score reaches the model: two candidates on four examples, each
    score of the yes/no node one call per verbalizer (yes, Yes, no, No)."""
    model = proposing("New rule.")
    async with dg.Engine(model, cache=False) as engine:
        trainer = dg.VariationalTrainer(dln1(), engine, num_prompt_samples=1, max_demonstrations=0)
        outcome = await trainer.step(single_word_task(4, seed=1))
    assert len(outcome.scored["answer"]) == 2
    reported = [part.count for w in outcome.waves for part in w.parts if part.phase == "score"]
    sent = model.count("logprob", phase="score")
    assert sent == 2 * 4 * 4
    assert sum(c.calls for c in reported) == sum(c.expected for c in reported) == sent
