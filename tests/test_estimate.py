"""The estimate against the calls that steps really make, phase by phase: the engines' ledgers
by node and phase. The trainer runs a step's phases and the estimate counts the same phases
(dlgraph.train.plan), so the two cannot drift; these tests are where a drift would show.

The scripted worlds here write every text unlike any other (`distinct`), so that no request
of a run repeats another and nothing is deduplicated: with the engine's cache off, what the
estimate expects is then exactly what the ledger counts.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable, Collection
from contextlib import asynccontextmanager

import pytest
from demo_world import TwoHeads, pair_task
from dlgraph_sim import ScriptedModel
from letter_world import PAIR_CLASSES, LetterWorld, single_word_task, word_pair_task
from test_pace import writers
from test_trainer import YES_NO, dln1, dln2

import dlgraph as dg
from dlgraph.train.proposals import END
from dlgraph.train.race import Race
from dlgraph.train.waves import Count, Wave, by_key

OPTIONS = dict(
    num_prompt_samples=3,
    num_hidden_samples=2,
    memory_size=2,
    num_demonstration_samples=1,  # one set per node: two could coincide, and count once
    posterior_temperature=1.0,
    min_weight=0.0,  # every posterior candidate is scored: the expectations are not pruned
    seed=3,
    stop_when_decided=False,  # these pin the arithmetic of full scoring; races have their own tests
)
BATCH = 6


def three_layers() -> dg.Network:
    """Two text nodes read the input, a third reads both and the input (fan-in), a class node
    answers."""
    net = dg.Network()
    for name in ("a", "b"):  # prompts of their own, else their calls would be one
        net.add_node(name, prompt=f"Look at the input ({name}).", max_tokens=16)
        net.add_edge(dg.INPUT, name)
    net.add_node("m", prompt="Combine the letters.", max_tokens=16)
    net.add_node("answer", prompt="Answer the question.", classes=PAIR_CLASSES)
    for edge in [("a", "m"), ("b", "m"), (dg.INPUT, "m"), ("m", "answer"), (dg.INPUT, "answer")]:
        net.add_edge(*edge)
    return net


def dln1_shown() -> dg.Network:
    """DLN-1 whose node starts with demonstrations (of inputs no task has), so that every
    step also scores its instruction without them."""
    net = dln1()
    shown = [dg.Demonstration("Input: QQQA", "yes"), dg.Demonstration("Input: QQQB", "no")]
    net.set_parameter("answer", dg.Parameter("Answer the question.", shown))
    return net


def two_outputs() -> dg.Network:
    """Two class nodes read the input (with prompts of their own: identical nodes would send
    identical requests, which the engine sends once)."""
    net = dg.Network()
    for name in ("first", "second"):
        net.add_node(name, prompt=f"Answer for the {name} word.", classes=YES_NO)
        net.add_edge(dg.INPUT, name)
    return net


def unique(examples: list[dg.Example], avoid: Collection[str] = ()) -> list[dg.Example]:
    """The examples with inputs seen neither before them nor in `avoid`."""
    seen, kept = set(avoid), []
    for example in examples:
        if example.input not in seen:
            seen.add(example.input)
            kept.append(example)
    return kept


def task(make: Callable[[int, int], list[dg.Example]]) -> tuple[list, list]:
    train = unique(make(24, 1))
    return train, unique(make(8, 2), {e.input for e in train})


NETWORKS = {
    "dln1": (dln1, LetterWorld(direct=True), lambda: task(single_word_task)),
    "dln1 with demonstrations to start": (
        dln1_shown,
        LetterWorld(direct=True),
        lambda: task(single_word_task),
    ),
    "dln2": (dln2, LetterWorld(), lambda: task(single_word_task)),
    "three layers with fan-in": (
        three_layers,
        LetterWorld(pair=True),
        lambda: task(word_pair_task),
    ),
    "two outputs": (two_outputs, TwoHeads(), lambda: task(pair_task)),
}


def distinct(world: object, name: str, continuations: int = 0, samples: int = 0) -> ScriptedModel:
    """The world's model, with every text it writes made unlike any other by a last line
    naming its prompt and seed (a line no world reads): proposals, posterior samples and the
    outputs of text nodes (which demonstrations and posteriors show) never coincide."""

    def generate(request: dg.GenerateRequest) -> str:
        text = world.generate(request)
        digest = hashlib.sha256(request.prompt.encode()).hexdigest()[:12]
        mark = f"\n#{digest}-{request.seed}"
        if request.phase == "propose":
            return text.split(END)[0].rstrip() + mark + END
        return text + mark

    capabilities = dg.Capabilities(continuations=continuations, samples=samples)
    return ScriptedModel(
        generate=generate, logprob=world.logprob, name=name, capabilities=capabilities
    )


def counted(engine: dg.Engine) -> dict[tuple[str, str], int]:
    """The calls the engine sent, by (node, phase)."""
    return {key: usage.calls for key, usage in engine.statistics().by_key.items() if usage.calls}


def side(waves: tuple[Wave, ...], backward: bool | None) -> dict[tuple[str, str], Count]:
    """The waves' calls by (node, phase), on one engine (or both, when `backward` is None)."""
    return by_key(w for w in waves if backward is None or w.backward == backward)


def expected(counts: dict[tuple[str, str], Count]) -> dict[tuple[str, str], int]:
    return {key: count.expected for key, count in counts.items() if count.expected}


def assert_bounded(counts: dict[tuple[str, str], Count], sent: dict[tuple[str, str], int]):
    """Every (node, phase) sent at most what the counts allow, and nothing else was sent."""
    assert set(sent) <= set(counts)
    assert all(sent[key] <= counts[key].calls for key in sent), (counts, sent)


CASES = [
    pytest.param(network, demonstrations, separate, id=f"{network}-{label}-{engines}")
    for network in NETWORKS
    for demonstrations, label in ((0, "no demonstrations"), (2, "demonstrations"))
    for separate, engines in ((False, "one engine"), (True, "backward engine"))
]


@asynccontextmanager
async def trainer_on(
    network: str,
    cache: bool = False,
    separate: bool = False,
    continuations: int = 0,
    samples: int = 0,
    **options: object,
) -> AsyncIterator[tuple[dg.VariationalTrainer, dg.Engine, dg.Engine]]:
    """A trainer of `network` on its distinct world, and its forward and backward engines
    (the backward one unused unless `separate`), whose models score `continuations` of one
    context, and draw `samples` samples of one prompt, in one call."""
    make, world, _ = NETWORKS[network]
    async with (
        dg.Engine(distinct(world, "runs", continuations, samples), cache=cache) as engine,
        dg.Engine(distinct(world, "writes", continuations, samples), cache=cache) as writer,
    ):
        backward = writer if separate else None
        trainer = dg.VariationalTrainer(make(), engine, backward=backward, **(OPTIONS | options))
        yield trainer, engine, writer


def by_engine(waves: tuple[Wave, ...], separate: bool) -> list[dict[tuple[str, str], Count]]:
    """The waves' calls by (node, phase) on the forward engine and on the backward one (on
    the one engine, and none on the other, when there is one)."""
    if separate:
        return [side(waves, False), side(waves, True)]
    return [side(waves, None), {}]


async def run(
    network: str,
    demonstrations: int,
    separate: bool,
    steps: int,
    continuations: int = 0,
    samples: int = 0,
    **options: object,
):
    """Estimate a run, then make it (no cache: each request is sent); the estimate's calls
    and each engine's, by (node, phase)."""
    train, dev = NETWORKS[network][2]()
    options |= {
        "max_demonstrations": demonstrations,
        "separate": separate,
        "continuations": continuations,
        "samples": samples,
    }
    async with trainer_on(network, **options) as (trainer, engine, writer):
        estimate = trainer.estimate(steps, BATCH, train, len(dev))
        await trainer.fit(train, dev, steps, BATCH)
        return by_engine(estimate.waves, separate), [counted(engine), counted(writer)]


@pytest.mark.parametrize(("network", "demonstrations", "separate"), CASES)
async def test_the_estimate_of_one_step_expects_exactly_the_calls_of_each_phase(
    network: str, demonstrations: int, separate: bool
) -> None:
    """The first step and the dev evaluations around it, where nothing is deduplicated and
    the memory is empty: per (node, phase), the expected figure is the count and the upper
    bound is not below it, on each engine."""
    planned, sent = await run(network, demonstrations, separate, steps=1)
    for counts, calls in zip(planned, sent, strict=True):
        assert expected(counts) == calls
        assert_bounded(counts, calls)
    phases = {phase for calls in sent for _, phase in calls}
    assert phases == {"eval", "forward", "posterior", "propose", "score"} - (
        set() if "dln2" in network or "layers" in network else {"posterior"}
    )


@pytest.mark.parametrize("network", list(NETWORKS))
async def test_with_a_class_distribution_in_one_call_the_estimate_expects_each_phases_calls(
    network: str,
) -> None:
    """On a backend that scores every verbalizer of a class distribution in one call, each
    class node's run and score is one call: the estimate counts one, phase by phase, and
    the dev evaluation of a class output sends one call per example."""
    planned, sent = await run(network, 2, False, steps=1, continuations=8)
    for counts, calls in zip(planned, sent, strict=True):
        assert expected(counts) == calls
        assert_bounded(counts, calls)
    _, per_verbalizer = await run(network, 2, False, steps=1)
    assert sum(sent[0].values()) < sum(per_verbalizer[0].values())
    _, dev = NETWORKS[network][2]()
    outputs = {"two outputs": ["first", "second"]}.get(network, ["answer"])
    for name in outputs:
        assert sent[0][name, "eval"] == 2 * len(dev)  # before the step and after it


@pytest.mark.parametrize("separate", [False, True], ids=["one engine", "a backward engine"])
@pytest.mark.parametrize("network", ["dln2", "three layers with fan-in"])
async def test_with_samples_drawn_in_one_call_the_estimate_expects_each_phases_calls(
    network: str, separate: bool
) -> None:
    """On a backend that draws several samples of one prompt in one call, a hidden node's
    posterior samples of an example are one call: the estimate counts one, phase by phase,
    on the engine that draws them."""
    planned, sent = await run(network, 0, separate, steps=1, samples=8)
    for counts, calls in zip(planned, sent, strict=True):
        assert expected(counts) == calls
        assert_bounded(counts, calls)
    _, each = await run(network, 0, separate, steps=1)
    side = 1 if separate else 0
    hidden = {"dln2": ["reason"], "three layers with fan-in": ["a", "b", "m"]}[network]
    for name in hidden:  # two samples an example: one call instead of two
        assert each[side][name, "posterior"] - sent[side][name, "posterior"] == BATCH


@pytest.mark.parametrize(("network", "demonstrations", "separate"), CASES)
async def test_the_estimate_bounds_every_phase_of_a_run(
    network: str, demonstrations: int, separate: bool
) -> None:
    """Three steps: the memory fills and candidates repeat, so fewer calls than expected may
    be sent, never more than the upper bound."""
    planned, sent = await run(network, demonstrations, separate, steps=3)
    for counts, calls in zip(planned, sent, strict=True):
        assert_bounded(counts, calls)
    assert sum(sent[0].values()) > 0


SCORING_MODES = [
    pytest.param(decided, continuations, id=f"{label}-{calls}")
    for decided, label in ((False, "full scoring"), (True, "stopping when decided"))
    for continuations, calls in ((0, "a call per verbalizer"), (8, "a class in one call"))
]
"""bench/efficiency.py's row kinds (full: full scoring with a call per verbalizer), and the
fourth combination."""


@pytest.mark.parametrize("network", list(NETWORKS))
@pytest.mark.parametrize(("decided", "continuations"), SCORING_MODES)
async def test_in_every_scoring_mode_a_run_stays_within_the_estimate_s_upper_bound(
    network: str, decided: bool, continuations: int
) -> None:
    """Three steps, with demonstrations: every (node, phase) sends at most what the estimate
    allows, whether candidates are raced and comparisons stop or not, and whether a class
    costs a call per verbalizer or one."""
    planned, sent = await run(
        network, 2, False, steps=3, continuations=continuations, stop_when_decided=decided
    )
    for counts, calls in zip(planned, sent, strict=True):
        assert_bounded(counts, calls)
    assert sum(sent[0].values()) > 0


@pytest.mark.parametrize("network", list(NETWORKS))
@pytest.mark.parametrize(("decided", "continuations"), SCORING_MODES)
async def test_in_every_scoring_mode_each_step_reports_the_calls_it_sent(
    network: str, decided: bool, continuations: int
) -> None:
    """A step's own waves, counted from its state by the estimate's arithmetic, expect what
    the ledger counts (with no cache: the pairs each candidate was really scored on, fewer
    than it could have been once a race drops it) and bound it."""
    train, _ = NETWORKS[network][2]()
    options = {"max_demonstrations": 2, "continuations": continuations}
    async with trainer_on(network, stop_when_decided=decided, **options) as (trainer, engine, _):
        for start in range(0, 3 * BATCH, BATCH):
            before = counted(engine)
            outcome = await trainer.step(train[start : start + BATCH])
            sent = difference(counted(engine), before)
            reported = by_key(outcome.waves)
            assert expected(reported) == sent
            assert_bounded(reported, sent)
            trainer.apply(outcome)


def difference(now: dict[tuple[str, str], int], was: dict[tuple[str, str], int]):
    return {key: calls - was.get(key, 0) for key, calls in now.items() if calls > was.get(key, 0)}


@pytest.mark.parametrize(("network", "demonstrations", "separate"), CASES)
async def test_each_step_reports_the_calls_it_sent_as_its_phases_count_them(
    network: str, demonstrations: int, separate: bool
) -> None:
    """The step's own description of its waves, counted from its state (the same code the
    estimate counts a plan with), is what each engine's ledger counts, step after step."""
    train, _ = NETWORKS[network][2]()
    options = {"max_demonstrations": demonstrations, "separate": separate}
    async with trainer_on(network, **options) as (trainer, engine, writer):
        for start in range(0, 3 * BATCH, BATCH):
            before = [counted(engine), counted(writer)]
            outcome = await trainer.step(train[start : start + BATCH])
            sent = [
                difference(counted(e), was) for e, was in zip((engine, writer), before, strict=True)
            ]
            reported = by_engine(outcome.waves, separate)
            assert [{k: c.calls for k, c in r.items()} for r in reported] == sent
            trainer.apply(outcome)


@pytest.mark.parametrize("scoring", ["logprob", "accuracy"])
@pytest.mark.parametrize("network", ["dln1", "two outputs"])
async def test_with_a_cache_the_current_prompts_scores_are_expected_from_the_forward_pass(
    network: str, scoring: str
) -> None:
    """An output node that reads the input alone scores its current prompt on what the
    forward pass already asked (a class node's score is its run, with either scorer): the
    cache answers, and the estimate expects no such call."""
    train, _ = NETWORKS[network][2]()
    options = {"cache": True, "max_demonstrations": 0, "scoring": scoring}
    async with trainer_on(network, **options) as (trainer, engine, _):
        counts = side(trainer.estimate(1, BATCH, train, dev_size=0).waves, None)
        await trainer.step(train[:BATCH])
    assert expected(counts) == counted(engine)
    outputs = {"dln1": ["answer"], "two outputs": ["first", "second"]}[network]
    for name in outputs:  # the proposals' scores alone: 4 calls each (yes|Yes, no|No)
        proposals = OPTIONS["num_prompt_samples"] * BATCH * 4
        assert counts[name, "score"].expected == proposals < counts[name, "score"].calls
        assert engine.statistics().by_key[name, "score"].cache_hits == BATCH * 4


@pytest.mark.parametrize("continuations", [0, 8])
async def test_with_a_cache_dln2_s_current_prompts_scores_are_expected_from_the_posterior(
    continuations: int,
) -> None:
    """The posterior weighs each hidden candidate by the hidden node's prompt (its prior) and
    the answer node's (the answer given the candidate): exactly the current prompts' scores
    over the posterior's candidates. The cache answers them, and the estimate expects no
    such call, whether a node's targets are one call or one each."""
    train, _ = NETWORKS["dln2"][2]()
    options = {"cache": True, "max_demonstrations": 0, "continuations": continuations}
    async with trainer_on("dln2", **options) as (trainer, engine, _):
        counts = side(trainer.estimate(1, BATCH, train, dev_size=0).waves, None)
        await trainer.step(train[:BATCH])
    assert expected(counts) == counted(engine)
    for name in ("reason", "answer"):
        assert engine.statistics().by_key[name, "score"].cache_hits > 0
        assert counts[name, "score"].expected < counts[name, "score"].calls


def class_hidden() -> dg.Network:
    """A hidden class node (a topic) the answer reads beside the input."""
    net = dg.Network()
    net.add_node("topic", prompt="Name the topic.", classes=PAIR_CLASSES)
    net.add_node("answer", prompt="Answer the question.", classes=PAIR_CLASSES)
    for edge in [(dg.INPUT, "topic"), ("topic", "answer"), (dg.INPUT, "answer")]:
        net.add_edge(*edge)
    return net


@pytest.mark.parametrize("continuations", [0, 8])
@pytest.mark.parametrize("scoring", ["logprob", "accuracy"])
@pytest.mark.parametrize("prior", [True, False])
async def test_with_a_cache_a_hidden_class_node_s_prior_and_scores_are_expected_from_its_run(
    continuations: int, scoring: str, prior: bool
) -> None:
    """A hidden class node's prior over its classes is the distribution its forward run
    read, and so are its current prompt's scores: the cache answers them, with or without
    the prior in the posterior, and the estimate expects each (node, phase) as sent."""
    train = word_pair_task(24, 1)
    options = {"max_demonstrations": 0, "scoring": scoring, "posterior_prior": prior}
    world = LetterWorld(pair=True)
    async with dg.Engine(distinct(world, "runs", continuations), cache=True) as engine:
        trainer = dg.VariationalTrainer(class_hidden(), engine, **(OPTIONS | options))
        counts = side(trainer.estimate(1, BATCH, train, dev_size=0).waves, None)
        await trainer.step(train[:BATCH])
        sent = counted(engine)
    assert expected(counts) == sent
    assert_bounded(counts, sent)
    assert counts["topic", "score"].expected < counts["topic", "score"].calls


# -- the plan's arithmetic, written out by hand -------------------------------------------------


def planned(net: dg.Network, steps: int = 1, batch: int = BATCH, **options: object):
    """The estimate of `steps` steps of `batch` examples (no dev set), by (node, phase)."""
    trainer = dg.VariationalTrainer(net, dg.Engine(LetterWorld().model()), **(OPTIONS | options))
    return by_key(trainer.estimate(steps, batch).waves)


def test_a_wave_of_class_and_text_nodes_takes_the_time_of_the_text() -> None:
    net = dg.Network()
    net.add_node("say", prompt="Say it.", max_tokens=8, output=True)
    net.add_node("answer", prompt="Answer the question.", classes=YES_NO, output=True)
    for name in ("say", "answer"):
        net.add_edge(dg.INPUT, name)
    trainer = dg.VariationalTrainer(net, dg.Engine(LetterWorld().model()), **OPTIONS)
    first = trainer.estimate(1, BATCH).waves[0]  # the forward pass: both nodes at depth 1
    assert (first.action, first.calls) == ("generate", BATCH * (1 + 4))


@pytest.mark.parametrize(
    ("options", "new", "per_step"),
    [
        (dict(max_demonstrations=0), 3, 3 * BATCH),
        (dict(max_demonstrations=2, num_demonstration_samples=2), 5, 3 * BATCH + 2 * (BATCH - 2)),
    ],
    ids=["proposals", "proposals and demonstration sets"],
)
def test_the_estimate_expects_the_memory_to_fill_with_each_steps_new_candidates(
    options: dict, new: int, per_step: int
) -> None:
    """Memory for ten: step n expects the remembered candidates of the steps before it (as
    many as they added, up to ten) besides its own new ones; the current prompt's scores
    repeat the forward pass and are expected from the cache."""
    scores = [
        planned(dln1(), steps, memory_size=10, **options)["answer", "score"].expected
        for steps in range(1, 6)
    ]
    each = [scores[0]] + [b - a for a, b in zip(scores, scores[1:], strict=False)]
    remembered = [min(10, new * (n - 1)) * BATCH for n in range(1, 6)]
    assert each == [(per_step + r) * 4 for r in remembered]  # 4 calls a score: yes|Yes, no|No


@pytest.mark.parametrize(("batch", "kept"), [(6, 2), (12, 1)])
def test_a_racing_run_expects_its_memory_to_fill_with_what_each_race_keeps(
    batch: int, kept: int
) -> None:
    """Only the candidates still in a race at its end are remembered: of three proposals,
    two after the one halving of a batch of six (rounds of 5 and 1 examples), one after the
    two halvings of a batch of twelve (5, 5, 2); step n expects those of the steps before it
    (up to the memory's ten), each scored on the race's share of the batch."""
    share = Race(1.645).expected_share(batch)
    scores = [
        planned(dln1(), steps, batch, memory_size=10, max_demonstrations=0, stop_when_decided=True)[
            "answer", "score"
        ].expected
        for steps in range(1, 6)
    ]
    each = [scores[0]] + [b - a for a, b in zip(scores, scores[1:], strict=False)]
    others = [3 + min(10, kept * (n - 1)) for n in range(1, 6)]
    assert each == [round(o * batch * share) * 4 for o in others]


@pytest.mark.parametrize(("batch", "shown"), [(1, 0), (2, 1), (3, 2), (6, 2)])
def test_a_demonstration_set_is_expected_to_be_scored_on_the_examples_it_does_not_show(
    batch: int, shown: int
) -> None:
    """Sets of up to two demonstrations, never the whole batch (so none from a batch of one):
    two sets are scored on what they leave. At most: the current prompt, two remembered,
    three proposals, two sets and the current instruction without demonstrations."""
    options = dict(max_demonstrations=2, num_demonstration_samples=2)
    score = planned(dln1(), batch=batch, **options)["answer", "score"]
    assert score.calls == (1 + 2 + 3 + 2 + 1) * batch * 4
    assert score.expected == (3 * batch + (2 * (batch - shown) if shown else 0)) * 4


def test_an_output_node_is_expected_over_its_largest_parent_posterior() -> None:
    """Its hidden parents' candidates are aligned: a topic node's four classes and a text
    node's forward output and two samples make four terms per example. A class node's own
    prior is one class distribution, which every class is read from."""
    net = dg.Network()
    net.add_node("topic", prompt="Name the topic.", classes=PAIR_CLASSES)
    net.add_node("reason", prompt="Read the input.", max_tokens=16)
    net.add_node("answer", prompt="Answer the question.", classes=YES_NO)
    for edge in [(dg.INPUT, "topic"), (dg.INPUT, "reason"), ("topic", "answer")]:
        net.add_edge(*edge)
    net.add_edge("reason", "answer")
    counts = planned(net, max_demonstrations=0)
    candidates = 1 + 2 + 3 + 1  # current, remembered, proposals, current without demonstrations
    assert counts["answer", "score"].calls == candidates * BATCH * 4 * 4
    assert counts["topic", "posterior"].calls == BATCH * 4  # one distribution: 4 verbalizers


def test_without_posterior_inference_nothing_is_sampled_and_an_example_is_one_term() -> None:
    counts = planned(dln2(), use_posterior=False, max_demonstrations=0)
    assert [key for key in counts if key[1] == "posterior"] == []
    candidates = 1 + 2 + 3 + 1
    assert counts["answer", "score"].calls == candidates * BATCH * 4
    assert counts["reason", "score"].calls == candidates * BATCH


@pytest.mark.parametrize("net", [dln2, lambda: writers(2), lambda: writers(1)])
async def test_the_pace_of_a_run_with_batches_of_one_example_is_measured(
    net: Callable[[], dg.Network],
) -> None:
    """Every probe builds its call from the one example a stand-in batch then holds (the
    forward run, an example's posterior samples and their evidence, a proposal, a
    candidate's score); a proposal is timed as the one call it is, a draw as its samples."""
    world = LetterWorld()
    forward_model, backward_model = world.model(), world.model()
    async with dg.Engine(forward_model) as forward, dg.Engine(backward_model) as backward:
        trainer = dg.VariationalTrainer(net(), forward, backward=backward)
        pace = await trainer.pace(single_word_task(4, seed=1), batch_size=1)
    assert forward_model.count(phase="forward") >= 6  # two alone, four together
    assert backward_model.count(phase="propose") == 6
    assert {"generate", "score"} <= set(pace.forward.latency)
    assert pace.backward.latency["propose"].calls == 1
    if "sample" in pace.backward.latency:  # an example's samples: one call each here
        assert pace.backward.latency["sample"].calls == trainer.options.num_hidden_samples


# -- which current scores the cache answers, and the shares of what is expected ---------------


def reads_two_thoughts() -> dg.Network:
    """An answer that reads the input and two hidden nodes."""
    net = dg.Network()
    net.add_node("topic", prompt="Name the topic.", classes=PAIR_CLASSES)
    net.add_node("reason", prompt="Read the input.", max_tokens=16)
    net.add_node("answer", prompt="Answer the question.", classes=YES_NO)
    for edge in [(dg.INPUT, "topic"), (dg.INPUT, "reason"), (dg.INPUT, "answer")]:
        net.add_edge(*edge)
    for parent in ("topic", "reason"):
        net.add_edge(parent, "answer")
    return net


@pytest.mark.parametrize(
    ("network", "options", "known"),
    [
        (dln2, {}, True),
        (dln2, {"posterior_likelihood": False}, False),
        (reads_two_thoughts, {}, False),
    ],
    ids=["one hidden parent", "no likelihood in the posterior", "two hidden parents"],
)
def test_an_output_s_current_scores_are_expected_from_the_cache_only_where_the_posterior_asked(
    network: Callable[[], dg.Network], options: dict[str, object], known: bool
) -> None:
    """The posterior scores the answer under its current prompt with one hidden parent's
    candidate in place; with two, an ELBO term puts both parents' candidates in place at
    once, which nothing asked before. Against the same estimate without a cache."""

    def unexpected(cache: bool) -> int:
        model = LetterWorld().model()
        settings = OPTIONS | {"max_demonstrations": 0} | options
        trainer = dg.VariationalTrainer(network(), dg.Engine(model, cache=cache), **settings)
        score = by_key(trainer.estimate(1, BATCH).waves)["answer", "score"]
        return score.calls - score.expected

    assert (unexpected(cache=True) > unexpected(cache=False)) is known


def test_without_likelihood_or_prior_every_posterior_candidate_weighs_alike() -> None:
    train, _ = NETWORKS["dln2"][2]()
    options = {"posterior_likelihood": False, "posterior_prior": False}

    async def step():  # noqa: ANN202
        async with trainer_on("dln2", **options) as (trainer, _, _):
            return await trainer.step(train[:BATCH])

    import anyio

    weights = anyio.run(step).posteriors["reason"].weights
    assert all(len(set(example)) == 1 and len(example) > 1 for example in weights)


def test_a_comparison_is_expected_over_its_share_of_dev_in_whole_calls() -> None:
    from dlgraph.train.plan import forward_waves

    capabilities = dg.Capabilities()
    (wave,) = forward_waves(dln1(), capabilities, 20, "eval", share=0.62)
    assert (wave.calls, wave.expected) == (20 * 4, 12 * 4)  # round(12.4) examples, 4 calls each
    assert isinstance(wave.expected, int)
    for steps in (1, 3):  # a race expects whole calls too, never more than it may send
        for count in planned(dln1(), steps=steps, max_demonstrations=2).values():
            assert isinstance(count.expected, int) and count.expected <= count.calls


def test_the_trust_region_charges_output_nodes_only() -> None:
    """A hidden node's targets are the posterior's, not a fixed answer the current prompt
    is trusted on: its ELBO is the plain mean whatever the trust region."""
    import anyio

    train, _ = NETWORKS["dln2"][2]()

    async def step(trust: float):  # noqa: ANN202
        options = {"trust_region": trust, "stop_when_decided": False}
        async with trainer_on("dln2", **options) as (trainer, _, _):
            return (await trainer.step(train[:BATCH])).scored

    plain, trusted = anyio.run(step, 0.0), anyio.run(step, 5.0)
    assert trusted["reason"] == plain["reason"]
    assert [s for _, s in trusted["answer"]] != [s for _, s in plain["answer"]]
