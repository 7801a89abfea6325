"""A training run's bookkeeping (`dlgraph.train.run.Training`) around a scripted learner:
each step proposes a prompt chosen by the test, and dev accuracy comes from a scripted model
that follows the prompt, so these tests check which network a run keeps, when it evaluates
and stops, and how it saves, resumes and logs, without sampling anything."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import anyio
import attrs
import pytest
from dlgraph_sim import ScriptedModel
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from test_trainer import CHECKPOINT_EDITS

import dlgraph as dg
from dlgraph.errors import BudgetExhausted
from dlgraph.metrics import resolve_metric
from dlgraph.train.candidates import Memory
from dlgraph.train.checkpoint import _digest
from dlgraph.train.options import TrainerOptions
from dlgraph.train.race import Tally
from dlgraph.train.records import StepOutcome
from dlgraph.train.run import KNOWN_NETWORKS, Schedule, Training, logged_steps
from dlgraph.train.waves import Wave

HALF, YES, NO = "Say half.", "Say yes.", "Say no."
"""Prompts and the dev accuracy they get: 0.5, 1.0, 0.0."""
DEV = [dg.Example("apple", "yes"), dg.Example("berry", "yes")]
TRAIN = [dg.Example(f"fruit {i}", "yes") for i in range(8)]


def follows_the_prompt(request: dg.LogprobRequest) -> float:
    """Says yes to everything under YES, to nothing under NO, to apples only under HALF."""
    says_yes = YES in request.context or (
        HALF in request.context and "berry" not in request.context
    )
    wanted = "yes" if says_yes else "no"
    return -0.1 if request.target.strip().lower() == wanted else -5.0


class Interrupt(Exception):
    pass


@attrs.define(eq=False)
class ScriptedLearner:
    """Proposes `prompts[k]` at step k+1 (None: no change); raises BudgetExhausted at
    `exhausted_at`."""

    prompts: Sequence[str | None]
    initial: str = HALF
    exhausted_at: int | None = None
    net: dg.Network = attrs.field(init=False)
    engine: dg.Engine = attrs.field(init=False)
    options: TrainerOptions = attrs.field(factory=TrainerOptions)
    rng: random.Random = attrs.field(factory=lambda: random.Random(0))
    memory: Memory = attrs.field(factory=lambda: Memory(4))
    steps_done: int = 0
    batches: list[list[str]] = attrs.field(factory=list)
    tally: Tally = attrs.field(factory=Tally)

    def __attrs_post_init__(self) -> None:
        self.net = dg.Network()
        self.net.add_node("answer", prompt=self.initial, classes=["yes", "no"])
        self.net.add_edge(dg.INPUT, "answer")
        self.engine = dg.Engine(ScriptedModel(logprob=follows_the_prompt))

    @property
    def engines(self) -> list[dg.Engine]:
        return [self.engine]

    def check_data(self, train: Sequence[dg.Example], dev: Sequence[dg.Example]) -> None:
        return None

    def planned(self, step: int, batch: int, dev_size: int, evaluates: bool) -> list[Wave]:
        return []  # no prior: the run's tally holds only what was sent

    async def step(self, batch: Sequence[dg.Example]) -> StepOutcome:
        self.batches.append([example.input for example in batch])
        if self.exhausted_at == self.steps_done + 1:
            raise BudgetExhausted("out of calls")
        prompt = self.prompts[self.steps_done]
        parameters = {} if prompt is None else {"answer": dg.Parameter(prompt)}
        scored = {name: [(p, -1.0)] for name, p in parameters.items()}
        return StepOutcome(0.5, parameters, scored, {})

    def apply(self, outcome: StepOutcome) -> None:
        for name, parameter in outcome.parameters.items():
            self.net.set_parameter(name, parameter)


async def run(learner: ScriptedLearner, steps: int, **options) -> dg.FitResult:
    schedule_keys = ("eval_every", "patience")
    schedule = Schedule(
        steps=steps, batch_size=3, **{k: options.pop(k) for k in schedule_keys if k in options}
    )
    async with learner.engine:
        return await Training(learner, TRAIN, DEV, schedule, **options).execute()


async def test_a_run_keeps_the_network_best_on_dev_in_place_and_in_best_json(tmp_path) -> None:
    learner = ScriptedLearner([YES, NO])
    result = await run(learner, 2, checkpoint_dir=tmp_path)
    assert [record.dev_score for record in result.history] == [1.0, 0.0]
    assert (result.initial_dev_score, result.best_dev_score) == (0.5, 1.0)
    assert result.network.prompts() == {"answer": YES}
    assert learner.net.prompts() == {"answer": YES}
    assert dg.Network.load(tmp_path / "best.json").prompts() == {"answer": YES}


async def test_a_run_evaluates_every_few_steps_and_after_the_last() -> None:
    result = await run(ScriptedLearner([YES, NO, YES]), 3, eval_every=2)
    assert [record.dev_score for record in result.history] == [None, 0.0, 1.0]


async def test_a_run_stops_after_patience_evaluations_without_a_better_dev_accuracy() -> None:
    learner = ScriptedLearner([NO, YES, NO, NO, YES, YES])
    result = await run(learner, 6, patience=2)
    assert result.stopped == "early_stopping"
    assert [record.step for record in result.history] == [1, 2, 3, 4]  # a new best resets it


async def test_a_network_that_only_ties_the_best_on_dev_neither_replaces_it_nor_resets_patience():
    again = f"{YES} {YES}"  # as good as YES on dev, no better
    result = await run(ScriptedLearner([YES, again, again]), 3, patience=1)
    assert [record.dev_score for record in result.history] == [1.0, 1.0]
    assert result.stopped == "early_stopping"
    assert result.network.prompts() == {"answer": YES}


async def test_a_step_that_runs_out_of_budget_leaves_no_trace_in_the_random_state() -> None:
    stopped = ScriptedLearner([YES, NO], exhausted_at=2)
    result = await run(stopped, 2)
    assert result.stopped == "budget" and len(result.history) == 1
    one_step = ScriptedLearner([YES])
    await run(one_step, 1)
    assert stopped.rng.getstate() == one_step.rng.getstate()


async def interrupted_after_two_steps(folder: Path) -> None:
    def interrupt(record: dg.StepRecord) -> None:
        if record.step == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        await run(
            ScriptedLearner([YES, NO, None, None]),
            4,
            checkpoint_dir=folder,
            log_path=folder / "steps.jsonl",
            on_step=interrupt,
        )


async def test_a_resumed_run_continues_where_the_checkpoint_left_it(tmp_path) -> None:
    await interrupted_after_two_steps(tmp_path)
    reported: list[int] = []
    resumed = ScriptedLearner([YES, NO, None, None])
    result = await run(
        resumed,
        4,
        checkpoint_dir=tmp_path,
        log_path=tmp_path / "steps.jsonl",
        on_step=lambda record: reported.append(record.step),
    )
    uninterrupted = ScriptedLearner([YES, NO, None, None])
    await run(uninterrupted, 4)
    assert resumed.batches == uninterrupted.batches[2:]  # the same random draws
    assert reported == [3, 4]  # steps 1 and 2 were logged before the interruption
    assert [record.step for record in result.history] == [1, 2, 3, 4]
    assert result.history[2].prompts == {"answer": NO}  # the prompt step 2 left
    assert result.initial_dev_score == 0.5 and result.best_dev_score == 1.0
    assert logged_steps(tmp_path / "steps.jsonl") == {1, 2, 3, 4}


async def test_a_resumed_run_reports_and_logs_again_the_steps_its_log_lost(tmp_path) -> None:
    await interrupted_after_two_steps(tmp_path)
    log = tmp_path / "steps.jsonl"
    first, second = log.read_text().splitlines()
    log.write_text(first + "\n" + second[:40])  # killed while writing step 2's line
    reported: list[int] = []
    await run(
        ScriptedLearner([YES, NO, None, None]),
        4,
        checkpoint_dir=tmp_path,
        log_path=log,
        on_step=lambda record: reported.append(record.step),
    )
    assert reported == [2, 3, 4]
    lines = log.read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4]


async def test_a_run_resumes_whatever_prompts_the_network_starts_with(tmp_path) -> None:
    await interrupted_after_two_steps(tmp_path)
    result = await run(
        ScriptedLearner([YES, NO, None, None], initial=YES), 4, checkpoint_dir=tmp_path
    )
    assert [record.step for record in result.history] == [1, 2, 3, 4]


async def test_a_run_removes_the_temporary_files_a_killed_run_left(tmp_path) -> None:
    leftovers = [
        tmp_path / ".checkpoint.json.abcd1234.dlgraph-tmp",
        tmp_path / ".best.json.abcd1234.dlgraph-tmp",
        tmp_path / ".steps.jsonl.abcd1234.dlgraph-tmp",
    ]
    for leftover in leftovers:
        leftover.write_text("half written")
    await run(ScriptedLearner([YES]), 1, checkpoint_dir=tmp_path, log_path=tmp_path / "steps.jsonl")
    assert not any(leftover.exists() for leftover in leftovers)


def test_a_step_log_is_read_past_a_damaged_line(tmp_path) -> None:
    lines = [
        json.dumps(step_record(1).to_json()),
        "{not json",
        json.dumps(step_record(2).to_json()),
    ]
    (tmp_path / "steps.jsonl").write_text("\n".join(lines) + "\n")
    assert logged_steps(tmp_path / "steps.jsonl") == {1, 2}


def step_record(step: int) -> dg.StepRecord:
    return dg.StepRecord(
        step=step,
        batch_loss=0.0,
        prompts={"answer": YES},
        demonstrations={"answer": []},
        elbo={},
        posterior_entropy={},
        dev_score=None,
        metric="exact",
        calls=0,
        tokens=0,
    )


# -- a checkpoint of format version 2, written by main before best_results ----------------------

VERSION_2 = Path(__file__).parent / "checkpoints" / "v2-after-two-steps.json"
"""Left by `interrupted_after_two_steps` on main (see checkpoints/README.md)."""


def version_2_folder(folder: Path, edit: Callable[[dict], dict] | None = None) -> Path:
    """`folder` holding the version-2 checkpoint, its payload replaced by what `edit` makes
    of it (the checksum recomputed, as whoever edits one would)."""
    folder.mkdir(parents=True, exist_ok=True)
    document = json.loads(VERSION_2.read_text())
    if edit is not None:
        document["payload"] = edit(document["payload"])
        document["sha256"] = _digest(document["payload"])
    (folder / "checkpoint.json").write_text(json.dumps(document))
    return folder


def eval_calls(learner: ScriptedLearner) -> int:
    return learner.engine.statistics().by_phase()["eval"].calls


async def one_dev_evaluation() -> int:
    """The calls of scoring the network the checkpoint keeps as best on the whole dev set."""
    model = ScriptedModel(logprob=follows_the_prompt)
    net = ScriptedLearner([]).net
    net.set_parameter("answer", dg.Parameter(YES))
    async with dg.Engine(model) as engine:
        await dg.evaluate(net, engine, DEV)
    return len(model.calls)


def test_the_version_2_checkpoint_holds_what_this_branch_writes_but_best_results(tmp_path) -> None:
    """The fixture is the state this code reaches too: the same steps, networks, scores,
    memory and random state; only best_results (and the fingerprint's options, the ledger)
    are new."""
    anyio.run(interrupted_after_two_steps, tmp_path)
    written = json.loads((tmp_path / "checkpoint.json").read_text())["payload"]
    old = json.loads(VERSION_2.read_text())["payload"]
    new = {"best_results", "fingerprint", "ledger"}
    assert set(written) - set(old) == {"best_results"}
    assert {k: v for k, v in written.items() if k not in new} == {
        k: v for k, v in old.items() if k not in new
    }


async def test_a_version_2_checkpoint_resumes_scoring_its_best_network_on_dev_once(
    tmp_path,
) -> None:
    """Upgrading mid-run: the run goes on from step 2 as from this version's own checkpoint,
    plus exactly one dev evaluation (the best network's results, which version 2 lacks), and
    its next save writes them as version 3."""
    upgraded = ScriptedLearner([YES, NO, None, None])
    result = await run(upgraded, 4, checkpoint_dir=version_2_folder(tmp_path / "v2"))
    await interrupted_after_two_steps(tmp_path / "v3")
    resumed = ScriptedLearner([YES, NO, None, None])
    reference = await run(resumed, 4, checkpoint_dir=tmp_path / "v3")
    assert result.history == reference.history and result.stopped == "steps"
    assert (result.initial_dev_score, result.best_dev_score) == (0.5, 1.0)
    assert upgraded.batches == resumed.batches  # the random state read as main wrote it
    assert eval_calls(upgraded) == eval_calls(resumed) + await one_dev_evaluation()
    written, expected = (
        json.loads((tmp_path / name / "checkpoint.json").read_text()) for name in ("v2", "v3")
    )
    assert written["version"] == 3
    assert written["payload"]["best_results"] == expected["payload"]["best_results"] == [1.0, 1.0]
    assert written["payload"]["fingerprint"] == expected["payload"]["fingerprint"]


async def test_a_version_2_checkpoint_resumes_under_full_scoring_too(tmp_path) -> None:
    """Version 2 knew no scoring settings, so its fingerprint holds under either: here the
    rebuild, then the whole dev set after steps 3 and 4 (step 4's the same requests as step
    3's, which the engine's cache answers)."""
    full = ScriptedLearner([YES, NO, None, None], options=TrainerOptions(stop_when_decided=False))
    result = await run(full, 4, checkpoint_dir=version_2_folder(tmp_path))
    assert [record.dev_score for record in result.history] == [1.0, 0.0, 0.0, 0.0]
    one = await one_dev_evaluation()
    assert eval_calls(full) == 2 * one
    assert full.engine.statistics().by_phase()["eval"].cache_hits == one
    assert json.loads((tmp_path / "checkpoint.json").read_text())["version"] == 3


async def test_a_version_2_checkpoint_with_no_step_left_is_not_scored_again(tmp_path) -> None:
    learner = ScriptedLearner([YES, NO])
    result = await run(learner, 2, checkpoint_dir=version_2_folder(tmp_path))
    assert [record.step for record in result.history] == [1, 2]
    assert learner.engine.statistics().total.calls == 0
    assert result.best_dev_score == 1.0 and result.network.prompts() == {"answer": YES}


async def test_a_version_2_checkpoint_whose_best_network_now_scores_otherwise_moves_the_best_score(
    tmp_path, caplog
) -> None:
    """The rebuilt results are what later steps are compared with, so the best score
    follows them (logged): here the checkpoint claimed 0.5 for a network that scores 1.0."""
    folder = version_2_folder(tmp_path, lambda payload: payload | {"best_score": 0.5})
    result = await run(ScriptedLearner([YES, NO, None, None]), 3, checkpoint_dir=folder)
    assert result.best_dev_score == 1.0
    assert "scores 1 on dev now, 0.5 when the checkpoint was written" in caplog.text


REMEMBERED = [[{"prompt": f"Say {i}.", "demonstrations": []}, -1.0] for i in range(4000)]

VERSION_2_DAMAGE = [
    *CHECKPOINT_EDITS,  # each damage a version-3 checkpoint is refused for, but best_results
    ("fields", lambda p: p | {"best_results": [1.0, 1.0]}, r"missing or unknown: best_results"),
    ("fields", lambda p: {k: v for k, v in p.items() if k != "memory"}, r"unknown: memory"),
    (
        "memory",
        lambda p: p | {"memory": {"answer": REMEMBERED}},
        r"memory: node 'answer' remembers 4,000 parameters",
    ),
    (
        "evaluations_since_best",
        lambda p: p | {"evaluations_since_best": 3},
        r"evaluations_since_best: 3 evaluations in 2 steps",
    ),
    ("fingerprint", lambda p: p | {"fingerprint": "0" * 64}, r"written for another setup"),
]


@pytest.mark.parametrize(
    ("field", "edit", "message"),
    VERSION_2_DAMAGE,
    ids=[f"{damage[0]}-{i}" for i, damage in enumerate(VERSION_2_DAMAGE)],
)
async def test_a_damaged_version_2_checkpoint_is_refused_naming_file_and_field(
    tmp_path, field: str, edit: Callable[[dict], dict], message: str
) -> None:
    """As strictly as main read it: every field checked, checked against the run, nothing
    changed and no call made before the refusal."""
    folder = version_2_folder(tmp_path, edit)
    before = (folder / "checkpoint.json").read_bytes()
    learner = ScriptedLearner([YES, NO, None, None])
    with pytest.raises(dg.CheckpointError, match=rf"checkpoint\.json: .*{message}"):
        await run(learner, 4, checkpoint_dir=folder)
    assert learner.net.prompts() == {"answer": HALF} and learner.steps_done == 0
    assert learner.engine.statistics().total.calls == 0
    assert (folder / "checkpoint.json").read_bytes() == before


async def test_a_run_makes_the_nested_folders_of_its_checkpoint_and_step_log(
    tmp_path: Path,
) -> None:
    checkpoints, log = tmp_path / "runs" / "one", tmp_path / "logs" / "today" / "steps.jsonl"
    await run(ScriptedLearner([YES]), 1, checkpoint_dir=checkpoints, log_path=log)
    assert (checkpoints / "checkpoint.json").is_file()
    assert logged_steps(log) == {1}


async def test_a_killed_run_leaves_the_best_network_so_far_in_best_json(tmp_path: Path) -> None:
    await interrupted_after_two_steps(tmp_path)  # step 1 proposed YES, step 2 NO
    assert dg.Network.load(tmp_path / "best.json").prompts() == {"answer": YES}


async def test_each_step_record_counts_only_the_calls_and_tokens_of_its_own_step() -> None:
    """The scripted learner calls nothing: a step without a dev evaluation spent nothing, one
    with it spent what the evaluation did, however much the run spent before."""
    learner = ScriptedLearner([YES, NO, YES, f"{NO} {NO}"])  # no evaluation from the cache
    result = await run(learner, 4, eval_every=2)
    assert [record.dev_score for record in result.history] == [None, 0.0, None, 0.0]
    first, second, third, fourth = result.history
    assert (first.calls, first.tokens) == (third.calls, third.tokens) == (0, 0)
    assert second.calls == fourth.calls == 2 * len(DEV)  # both classes of each dev example
    assert 0 < second.tokens < fourth.tokens  # step 4's prompt is the longer
    total = learner.engine.statistics().total
    assert second.tokens + fourth.tokens < total.tokens  # the first evaluation was no step's


async def resume_with(folder: Path, train: Sequence[dg.Example], metric: str) -> dg.FitResult:
    learner = ScriptedLearner([YES, NO, None, None])
    schedule = Schedule(steps=2, batch_size=3)
    async with learner.engine:
        return await Training(
            learner, train, DEV, schedule, checkpoint_dir=folder, metric=resolve_metric(metric)
        ).execute()


async def test_a_checkpoint_resumes_only_under_the_metric_it_was_written_with(
    tmp_path: Path,
) -> None:
    await resume_with(tmp_path, TRAIN, "contains")
    with pytest.raises(dg.CheckpointError, match="written for another setup"):
        await resume_with(tmp_path, TRAIN, "token_f1")
    result = await resume_with(tmp_path, TRAIN, "contains")
    assert [record.step for record in result.history] == [1, 2]


async def test_a_checkpoint_resumes_with_targets_that_name_their_outputs_in_another_order(
    tmp_path: Path,
) -> None:
    """The same examples, read from a file whose objects list their keys in another order."""
    train = [dg.Example(f"fruit {i}", {"answer": "yes", "colour": "red"}) for i in range(8)]
    reordered = [dg.Example(e.input, dict(reversed(e.target.items()))) for e in train]
    await resume_with(tmp_path, train, "exact")
    result = await resume_with(tmp_path, reordered, "exact")
    assert [record.step for record in result.history] == [1, 2]


class Spans:
    """An OpenTelemetry tracer provider that keeps every finished span."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))

    def named(self, name: str) -> list[dict[str, object]]:
        spans = self.exporter.get_finished_spans()
        return [dict(span.attributes or {}) for span in spans if span.name == name]


async def test_each_steps_span_holds_its_number_loss_and_dev_score_when_evaluated() -> None:
    spans = Spans()
    learner = ScriptedLearner([YES, NO, YES])
    learner.engine = dg.Engine(
        ScriptedModel(logprob=follows_the_prompt),
        tracing=dg.Tracing(tracer_provider=spans.provider),
    )
    result = await run(learner, 3, eval_every=2)
    steps = spans.named("dlgraph.step")
    assert [span["dlgraph.step"] for span in steps] == [1, 2, 3]
    assert [span["dlgraph.batch_loss"] for span in steps] == [0.5, 0.5, 0.5]
    assert [span.get("dlgraph.dev_score") for span in steps] == [None, 0.0, 1.0]
    assert [r.dev_score for r in result.history] == [None, 0.0, 1.0]


async def test_a_run_that_trains_no_demonstrations_resumes_from_its_checkpoint(
    tmp_path: Path,
) -> None:
    """Its nodes carry none, which is exactly as many as it may carry."""

    def learner() -> ScriptedLearner:
        return ScriptedLearner([YES, NO], options=TrainerOptions(max_demonstrations=0))

    await run(learner(), 1, checkpoint_dir=tmp_path)
    resumed = learner()
    result = await run(resumed, 2, checkpoint_dir=tmp_path)
    assert len(resumed.batches) == 1  # step 1 was not taken again
    assert [record.step for record in result.history] == [1, 2]


async def test_a_long_run_keeps_the_dev_results_of_its_most_recent_networks_only() -> None:
    """A network proposed again within the bound costs no dev call, one from long before is
    scored again: the run's memory of results stays bounded however many networks it scores."""
    prompts = [f"Say {i}." for i in range(KNOWN_NETWORKS + 10)]
    learner = ScriptedLearner([*prompts, prompts[-5], prompts[0]])
    learner.engine = dg.Engine(ScriptedModel(logprob=follows_the_prompt), cache=False)
    schedule = Schedule(steps=len(prompts) + 2, batch_size=3)
    async with learner.engine:
        training = Training(learner, TRAIN, DEV, schedule)
        await training.execute()
    assert len(training.known) == KNOWN_NETWORKS
    recent, forgotten = training.history[-2:]
    assert recent.calls == 0 and forgotten.calls > 0


async def test_a_step_that_keeps_the_initial_network_costs_no_dev_call() -> None:
    learner = ScriptedLearner([None, None])
    learner.engine = dg.Engine(ScriptedModel(logprob=follows_the_prompt), cache=False)
    result = await run(learner, 2)
    assert [record.calls for record in result.history] == [0, 0]
    assert result.best_dev_score == result.initial_dev_score == 0.5


async def test_the_runs_tally_holds_every_steps_calls_by_phase() -> None:
    """What the expected figure scales the prior by: the calls of the steps (here, their dev
    comparisons), not those of the first evaluation before them."""
    learner = ScriptedLearner([YES, NO])
    learner.engine = dg.Engine(ScriptedModel(logprob=follows_the_prompt), cache=False)
    result = await run(learner, 2)
    assert learner.tally.sent == {"eval": sum(record.calls for record in result.history)}
    assert learner.tally.sent["eval"] > 0
