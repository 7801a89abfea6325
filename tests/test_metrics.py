"""Metrics: the built-ins, a user's metric choosing the network `fit` keeps, an async judge's
calls, failing metrics, and the per-class report."""

from __future__ import annotations

import math
import re

import pytest
from dlgraph_sim import ScriptedModel
from metric_plugin import install_metric_plugin

import dlgraph as dg
from dlgraph.metrics import contains, exact, number, token_f1

# -- a world where exact accuracy and the number metric disagree -------------------------------

WORKED = "Show your work."
"""The instruction under which the model writes a worked answer that ends with the sum; the
only one proposals write."""


def sums(count: int, seed: int) -> list[dg.Example]:
    pairs = [(3 + (seed + i) % 5, 4 + (seed + 2 * i) % 3) for i in range(count)]
    return [dg.Example(f"What is {a} plus {b}?", str(a + b)) for a, b in pairs]


def _operands(text: str) -> tuple[int, int]:
    a, b = re.findall(r"What is (\d+) plus (\d+)\?", text)[-1]
    return int(a), int(b)


def sums_model() -> ScriptedModel:
    """Under WORKED the model answers "3 plus 4 makes 7" (right); otherwise a bare wrong
    number (it multiplies). The DLN normalisation drops digits, so exact accuracy counts
    every bare number as matching a numeric target and no worked answer as matching: it
    prefers the wrong network. Log-likelihoods of the gold sums favour WORKED."""

    def generate(request: dg.GenerateRequest) -> str:
        if request.phase == "propose":
            return WORKED + "\n[/instruction]"
        a, b = _operands(request.prompt)
        return f"{a} plus {b} makes {a + b}" if WORKED in request.prompt else str(a * b)

    def logprob(request: dg.LogprobRequest) -> float:
        return -0.5 if WORKED in request.context else -3.0

    return ScriptedModel(generate=generate, logprob=logprob, name="sums")


def adder() -> dg.Network:
    net = dg.Network()
    net.add_node("answer", prompt="Answer.", max_tokens=32)
    net.add_edge(dg.INPUT, "answer")
    return net


async def fit_sums(metric: object = None, **options: object) -> tuple[dg.Network, dg.FitResult]:
    net = adder()
    async with dg.Engine(sums_model()) as engine:
        trainer = dg.VariationalTrainer(net, engine, num_prompt_samples=1, max_demonstrations=0)
        result = await trainer.fit(
            sums(8, 1), sums(6, 2), steps=1, batch_size=4, metric=metric, **options
        )
    return net, result


async def test_the_elbo_moves_to_worked_answers_but_exact_accuracy_keeps_the_bare_guesses() -> None:
    net, result = await fit_sums()
    assert result.history[0].prompts == {"answer": WORKED}  # what the ELBO chose
    assert (result.initial_dev_score, result.history[0].dev_score) == (1.0, 0.0)
    assert net.prompts() == {"answer": "Answer."} and result.metric == "exact"


async def test_a_metric_preferring_another_candidate_changes_the_network_fit_keeps() -> None:
    net, result = await fit_sums("number")
    assert (result.initial_dev_score, result.best_dev_score) == (0.0, 1.0)
    assert net.prompts() == {"answer": WORKED} == result.network.prompts()
    assert result.metric == result.history[0].metric == "number"


async def test_best_json_and_the_step_log_follow_the_metric(tmp_path) -> None:
    await fit_sums("number", checkpoint_dir=tmp_path, log_path=tmp_path / "steps.jsonl")
    assert dg.Network.load(tmp_path / "best.json").prompts() == {"answer": WORKED}
    record = dg.StepRecord.from_json(
        __import__("json").loads((tmp_path / "steps.jsonl").read_text())
    )
    assert (record.metric, record.dev_score) == ("number", 1.0)


async def test_a_metric_function_sees_the_outputs_and_the_example() -> None:
    seen: list[tuple[object, dg.Example]] = []

    def shortest(outputs: object, example: dg.Example) -> float:
        seen.append((outputs, example))
        return -len(str(outputs))

    async with dg.Engine(sums_model()) as engine:
        score = await dg.evaluate(adder(), engine, sums(2, 0), metric=shortest)
    assert sorted(seen, key=str) == [
        ("12", dg.Example("What is 3 plus 4?", "7")),
        ("24", sums(2, 0)[1]),
    ]
    assert score == -2.0 and score.metric == "shortest" and score.per_example == (-2.0, -2.0)


async def test_the_default_metric_is_exact_accuracy_a_float_with_each_outputs_own() -> None:
    async with dg.Engine(sums_model()) as engine:
        accuracy = await dg.evaluate(adder(), engine, sums(4, 0))
    assert isinstance(accuracy, dg.Accuracy) and isinstance(accuracy, float)
    assert accuracy == 1.0 and accuracy.metric == "exact" and accuracy.by_output == {"answer": 1.0}


# -- several outputs -----------------------------------------------------------------------------


def two_heads() -> dg.Network:
    net = dg.Network()
    for name in ("first", "second"):
        net.add_node(name, prompt=f"Answer the {name} question.", max_tokens=8)
        net.add_edge(dg.INPUT, name)
    return net


async def test_a_metric_of_several_outputs_sees_them_all() -> None:
    seen = []

    def both(outputs: object, example: dg.Example) -> float:
        seen.append(outputs)
        return 1.0

    model = ScriptedModel(
        generate=lambda request: "out " + re.findall(r"the (\w+) q", request.prompt)[0]
    )
    data = [dg.Example("x", {"first": "a", "second": "b"})]
    async with dg.Engine(model) as engine:
        score = await dg.evaluate(two_heads(), engine, data, metric=both)
        builtin = await dg.evaluate(two_heads(), engine, data, metric="contains")
    assert seen == [{"first": "out first", "second": "out second"}]
    assert score.by_output == {}  # a function of all outputs has no per-output part
    assert builtin.by_output == {"first": 0.0, "second": 0.0}


# -- an async judge ----------------------------------------------------------------------------


async def test_an_async_judge_metric_spends_its_calls_on_its_own_engine() -> None:
    judge_model = ScriptedModel(
        generate=lambda request: "yes" if "makes" in request.prompt else "no"
    )
    forward_model = sums_model()
    async with dg.Engine(forward_model) as engine, dg.Engine(judge_model) as judge:

        async def judged(outputs: object, example: dg.Example) -> float:
            verdict = await judge.generate(
                f"Is {outputs!r} a right answer to {example.input}?", max_tokens=2, phase="eval"
            )
            return 1.0 if verdict == "yes" else 0.0

        score = await dg.evaluate(adder(), engine, sums(5, 0), metric=judged)
        estimate = dg.VariationalTrainer(adder(), engine).estimate(
            1, 2, sums(4, 0), 5, metric=judged
        )
    assert score == 0.0 and len(judge_model.calls) == 5
    assert judge.statistics().total.calls == 5
    assert engine.statistics().total.calls == len(forward_model.calls) == 5
    assert estimate.unknown == ("the calls of the async metric 'judged'",)


def test_an_estimate_knows_every_call_of_a_sync_metric() -> None:
    trainer = dg.VariationalTrainer(adder(), dg.Engine(sums_model()))
    assert trainer.estimate(1, 2, sums(4, 0), 5, metric="number").unknown == ()


# -- a failing metric ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (ValueError("no verdict"), r"raised ValueError: no verdict$"),
        (math.nan, r"returned nan; a metric returns a finite number"),
        ("0.5", r"returned '0.5'; a metric"),
        (True, r"returned True; a metric"),
    ],
    ids=["raises", "nan", "text", "bool"],
)
async def test_a_failing_metric_stops_the_run_naming_it_and_the_example_before_any_save(
    tmp_path, bad, message
) -> None:
    broken = [False]

    def flaky(outputs: object, example: dg.Example) -> object:
        if broken[0] and example.input.startswith("What is 5"):
            if isinstance(bad, Exception):
                raise bad
            return bad
        return float(str(outputs) == example.target)

    metric = dg.Metric("flaky", flaky)  # type: ignore[arg-type]
    await fit_sums(metric, checkpoint_dir=tmp_path)
    saved = {name: (tmp_path / name).read_bytes() for name in ("best.json", "checkpoint.json")}
    broken[0] = True
    with pytest.raises(dg.MetricError) as raised:
        net = adder()
        async with dg.Engine(sums_model()) as engine:
            trainer = dg.VariationalTrainer(net, engine, num_prompt_samples=1, max_demonstrations=0)
            await trainer.fit(
                sums(8, 1),
                sums(6, 2),
                steps=2,
                batch_size=4,
                metric=metric,
                checkpoint_dir=tmp_path,
            )
    text = str(raised.value)
    assert "\n" not in text
    assert re.match(
        r"metric 'flaky' on evaluation data\[\d\] \(input 'What is 5 plus \d\?'\): ", text
    )
    assert re.search(message, text)
    assert {name: (tmp_path / name).read_bytes() for name in saved} == saved


# -- the built-ins -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "target"),
    [
        ("The answer is twelve.", "12"),
        ("twenty-one", "21"),
        ("One hundred and five apples", "105"),
        ("two thousand three hundred", "2,300"),
        ("I count 12", "twelve"),
    ],
)
def test_number_reads_answers_written_in_words(answer: str, target: str) -> None:
    assert number(answer, target) == 1.0


@pytest.mark.parametrize(
    ("answer", "target"),
    [
        ("12 km", "12"),
        ("$40", "40 dollars"),
        ("It is 75%.", "75"),
        ("-3.5 degrees", "-3.50"),
        ("1,234 kg", "1234"),
    ],
)
def test_number_ignores_units_around_a_number(answer: str, target: str) -> None:
    assert number(answer, target) == 1.0


def test_number_counts_the_last_of_several_numbers() -> None:
    worked = "3 boxes of 4 pens make 12 pens"
    assert number(worked, "12") == 1.0
    assert number(worked, "4") == 0.0 and number(worked, "3") == 0.0
    assert number("one two three", "3") == 1.0  # a list of words is several numbers, not six
    assert number("no idea", "3") == 0.0


def test_number_refuses_a_target_without_a_number() -> None:
    with pytest.raises(ValueError, match="target 'yes' holds no number"):
        number("12", "yes")


def test_exact_is_the_dln_normalised_match_of_the_first_word() -> None:
    assert exact("Yes, it is.", "yes") == 1.0
    assert exact("Option (B)", "b") == 1.0
    assert exact("It is yes", "yes") == 0.0


def test_contains_finds_the_target_words_together_in_the_answer() -> None:
    assert contains("So the capital is Paris.", "paris") == 1.0
    assert contains("New York, I think", "new york") == 1.0
    assert contains("York is new", "new york") == 0.0
    assert contains("Parisian", "paris") == 0.0


def test_token_f1_gives_partial_credit_for_shared_words() -> None:
    assert token_f1("the red house", "a red house") == 1.0  # articles do not count
    assert token_f1("red car", "red house") == 0.5
    assert token_f1("", "") == 1.0 and token_f1("x", "") == 0.0


# -- the per-class report ----------------------------------------------------------------------

CLASSES = ["yes|Yes", "no|No", "maybe|Maybe"]
ANSWERS = {  # input: (target, what the model answers)
    "alpha": ("yes", "yes"),
    "bravo": ("yes", "yes"),
    "charlie": ("yes", "no"),
    "delta": ("no", "no"),
    "echo": ("no", "yes"),
    "foxtrot": ("maybe", "maybe"),
}


def classes_model() -> ScriptedModel:
    def logprob(request: dg.LogprobRequest) -> float:
        word = re.findall(r"\b(" + "|".join(ANSWERS) + r")\b", request.context)[-1]
        return 0.0 if request.target.strip().lower() == ANSWERS[word][1] else -10.0

    return ScriptedModel(logprob=logprob)


def labeller() -> dg.Network:
    net = dg.Network()
    net.add_node("label", prompt="Label it.", classes=CLASSES)
    net.add_edge(dg.INPUT, "label")
    return net


def labelled() -> list[dg.Example]:
    return [dg.Example(word, target) for word, (target, _) in ANSWERS.items()]


async def test_the_per_class_report_counts_a_known_confusion() -> None:
    net, data = labeller(), labelled()
    async with dg.Engine(classes_model()) as engine:
        score = await dg.evaluate(net, engine, data)
    report = score.reports["label"]
    assert score == 4 / 6
    assert report.count("yes", "no") == 1 and report.count("no", "yes") == 1
    assert report.count("yes", "yes") == 2 and report.count("maybe", "maybe") == 1
    assert (report.precision("yes"), report.recall("yes")) == (2 / 3, 2 / 3)
    assert (report.precision("no"), report.recall("no")) == (1 / 2, 1 / 2)
    assert (report.precision("maybe"), report.recall("maybe")) == (1.0, 1.0)
    assert report.columns == ("yes", "no", "maybe")


def test_a_report_names_predictions_outside_the_classes_and_adds_up() -> None:
    one = dg.ClassReport.of(["yes", "no"], ["yes", "perhaps"], ["yes", "no"])
    two = dg.ClassReport.of(["yes", "no"], ["no"], ["no"])
    both = one + two
    assert both.columns == ("yes", "no", "(other)")
    assert both.recall("no") == 1 / 2 and both.precision("no") == 1.0
    assert both.precision("yes") == 1.0 and both.support("no") == 2


# -- names ---------------------------------------------------------------------------------------


def test_an_unknown_metric_name_lists_the_known_ones() -> None:
    with pytest.raises(
        dg.MetricError, match=r"^unknown metric 'f1' \(known: contains, exact, number, token_f1"
    ):
        dg.VariationalTrainer(adder(), dg.Engine(sums_model())).estimate(1, 2, metric="f1")


async def test_a_plugin_metric_is_found_by_its_entry_point_name(tmp_path, monkeypatch) -> None:
    install_metric_plugin(tmp_path, monkeypatch)
    model = ScriptedModel(generate=lambda request: "LOUD")
    async with dg.Engine(model) as engine:
        score = await dg.evaluate(adder(), engine, sums(2, 0), metric="shouted")
    assert score == 1.0 and score.metric == "shouted"
    with pytest.raises(
        dg.MetricError, match=r"\(known: contains, exact, fragile, number, shouted, token_f1\)"
    ):
        await dg.evaluate(adder(), engine, sums(2, 0), metric="shout")


async def test_scores_of_chunks_concatenate_to_the_score_of_the_whole() -> None:
    net, data = labeller(), labelled()
    async with dg.Engine(classes_model()) as engine:
        whole = await dg.evaluate(net, engine, data)
        parts = [await dg.evaluate(net, engine, data[:4]), await dg.evaluate(net, engine, data[4:])]
    joined = dg.Score.concatenate(parts)
    assert joined == whole and joined.per_example == whole.per_example
    assert joined.by_output == pytest.approx(whole.by_output)
    assert joined.reports == whole.reports
