"""Scoring that stops once the decision is made: races of candidates over the batch, and the
step's dev evaluation as a sequential comparison with the best network, held to full scoring
on worlds where every instruction's quality is known."""

from __future__ import annotations

import random
import statistics

import pytest
from dlgraph_sim import ScriptedModel
from race_world import CURRENT, QualityWorld, items, network

import dlgraph as dg
from dlgraph.metrics import DEFAULT, Metric, exact
from dlgraph.train.checkpoint import Checkpoint
from dlgraph.train.compare import Referee
from dlgraph.train.race import (
    EXPECTED_DEV_SHARE,
    Race,
    Tally,
    is_settled_worse,
    paired_upper_bound,
)

SEEDS = range(4)


def clear_winner_world(seed: int) -> tuple[QualityWorld, str]:
    """Six proposals below the current instruction, one far above it."""
    rng = random.Random(seed)
    qualities = {CURRENT: 0.0} | {f"Rule {k}.": rng.uniform(-2.5, -0.5) for k in range(6)}
    best = f"Rule {rng.randrange(6)}."
    qualities[best] = 3.0
    return QualityWorld(qualities), best


async def step(world: QualityWorld, seed: int, **options: object):
    """One step on a batch of 20, and the score calls it sent."""
    model = world.model()
    batch = items(20, start=20 * seed)
    async with dg.Engine(model, cache=False) as engine:
        trainer = dg.VariationalTrainer(
            network(),
            engine,
            num_prompt_samples=len(world.proposals),
            memory_size=0,
            max_demonstrations=0,
            seed=seed,
            **options,
        )
        outcome = await trainer.step(batch)
    return outcome, model.count(phase="score")


@pytest.mark.parametrize("seed", SEEDS)
async def test_race_picks_the_winner_full_scoring_picks_when_one_candidate_is_clearly_best(
    seed: int,
) -> None:
    world, best = clear_winner_world(seed)
    raced, raced_calls = await step(world, seed)
    full, full_calls = await step(world, seed, stop_when_decided=False)
    assert full.parameters["answer"].prompt == best
    assert raced.parameters["answer"] == full.parameters["answer"]
    assert raced_calls < full_calls / 2


@pytest.mark.parametrize("seed", SEEDS)
async def test_race_keeps_the_current_parameter_when_nothing_beats_it(seed: int) -> None:
    rng = random.Random(seed)
    world = QualityWorld({CURRENT: 2.0} | {f"Rule {k}.": rng.uniform(-2.0, 0.0) for k in range(6)})
    raced, raced_calls = await step(world, seed)
    full, full_calls = await step(world, seed, stop_when_decided=False)
    assert raced.parameters["answer"].prompt == CURRENT == full.parameters["answer"].prompt
    assert raced_calls < full_calls


@pytest.mark.parametrize("seed", range(8))
async def test_race_never_drops_the_eventual_winner_when_margins_are_wide(seed: int) -> None:
    rng = random.Random(seed)
    levels = [-3.0, -1.5, 1.5, 3.0, 4.5]
    rng.shuffle(levels)
    world = QualityWorld({CURRENT: 0.0} | {f"Rule {k}.": q for k, q in enumerate(levels)})
    raced, _ = await step(world, seed)
    full, _ = await step(world, seed, stop_when_decided=False)
    winner = full.parameters["answer"]
    assert winner in dict(raced.scored["answer"])
    assert raced.parameters["answer"] == winner


def test_race_scores_every_example_in_one_round_under_full_scoring() -> None:
    assert Race(None).rounds(20) == [range(20)]
    rounds = Race(1.645).rounds(20)
    assert [len(r) for r in rounds] == [5, 5, 10]
    assert [i for r in rounds for i in r] == list(range(20))


@pytest.mark.parametrize("examples", [1, 4, 5, 10, 19, 40])
def test_race_drops_nothing_before_its_first_five_examples(examples: int) -> None:
    """Halving after three examples of a batch of 10 dropped full scoring's winner by a wide
    margin (0.11 nats per example) on mpqa: the first round is the bound's own minimum."""
    rounds = Race(1.645).rounds(examples)
    assert len(rounds[0]) == min(examples, max(5, -(-examples // 4)))
    assert [i for r in rounds for i in r] == list(range(examples))


# -- the dev comparison -------------------------------------------------------------------


async def compare(
    world: QualityWorld,
    incumbent: list[float],
    dev: list[dg.Example],
    z: float | None = 1.645,
    metric: Metric = DEFAULT,
):
    async with dg.Engine(world.model(), cache=False) as engine:
        return await Referee(z, metric).compare(
            network(), engine, dev, list(range(len(dev))), incumbent, known={}
        )


async def test_dev_comparison_stops_early_on_a_clear_loser() -> None:
    dev = items(40)
    loser = QualityWorld({CURRENT: -6.0}, noise=0.0)  # wrong on every example
    incumbent = [1.0] * 30 + [0.0] * 10
    comparison = await compare(loser, incumbent, dev)
    assert not comparison.is_better
    assert comparison.scored < len(dev) / 2
    full = await compare(loser, incumbent, dev, z=None)
    assert full.scored == len(dev) and not full.is_better


@pytest.mark.parametrize("seed", SEEDS)
async def test_dev_comparison_runs_to_the_end_on_a_tie(seed: int) -> None:
    dev = items(40, start=100 * seed)
    world = QualityWorld({CURRENT: 0.0}, noise=3.0)  # right on some examples, wrong on others
    async with dg.Engine(world.model(), cache=False) as engine:
        incumbent = list((await dg.evaluate(network(), engine, dev)).per_example)
    assert 0 < sum(incumbent) < len(dev) - 5
    comparison = await compare(world, incumbent, dev)
    assert comparison.scored == len(dev)
    assert not comparison.is_better  # a tie keeps the incumbent


async def test_dev_comparison_of_a_better_network_runs_to_the_end_and_wins() -> None:
    dev = items(40)
    winner = QualityWorld({CURRENT: 6.0}, noise=0.0)
    comparison = await compare(winner, [1.0] * 20 + [0.0] * 20, dev)
    assert comparison.is_better and comparison.scored == len(dev)
    assert comparison.score == 1.0


def points(outputs, example: dg.Example) -> float:
    """A metric beyond [0, 1] that states no maximum: 7 for a right answer, -3 for a wrong one."""
    return 10 * exact(outputs, example.target) - 3


async def test_dev_comparison_keeps_a_metric_s_scores_beyond_0_and_1() -> None:
    """The per-example results are the metric's scores, whatever their range: a loser is
    settled on the paired bound alone, a winner runs to the end and wins by the metric's mean."""
    dev = items(40)
    metric = Metric("points", points)
    loser = await compare(QualityWorld({CURRENT: -6.0}, noise=0.0), [7.0] * 40, dev, metric=metric)
    assert not loser.is_better and loser.scored < len(dev) / 2
    assert set(loser.results.values()) == {-3.0} and loser.score == -3.0
    incumbent = [-3.0] * 20 + [7.0] * 20
    winner = await compare(QualityWorld({CURRENT: 6.0}, noise=0.0), incumbent, dev, metric=metric)
    assert winner.is_better and winner.scored == len(dev)
    assert set(winner.results.values()) == {7.0} and winner.score == 7.0


def wrong_on_item_0(outputs, example: dg.Example) -> float:
    return 0.0 if example.input == "item 0" else 1.0


@pytest.mark.parametrize(("maximum", "scored"), [(1.0, 5), (None, 40)])
async def test_dev_comparison_stops_exactly_only_for_a_metric_that_states_its_maximum(
    maximum: float | None, scored: int
) -> None:
    """Wrong on the first example against a perfect best: with a maximum of 1 no network can
    win once one point is lost; without one, one wrong example in 40 settles nothing."""
    metric = Metric("judge", wrong_on_item_0, maximum=maximum)
    world = QualityWorld({CURRENT: 0.0})
    comparison = await compare(world, [1.0] * 40, items(40), metric=metric)
    assert comparison.scored == scored and not comparison.is_better


async def test_a_metric_refuses_a_score_above_the_maximum_it_states() -> None:
    metric = Metric("judge", lambda outputs, example: 2.0, maximum=1.0)
    with pytest.raises(dg.MetricError, match=r"returned 2.0, above its maximum 1.0"):
        await compare(QualityWorld({CURRENT: 0.0}), [1.0] * 10, items(10), metric=metric)


# -- a run -------------------------------------------------------------------------------


class Interrupt(Exception):
    pass


def counting(world: QualityWorld, answered: list[int], interrupt_at: int | None = None):
    """The world's model, counting the answers it gives; score call number `interrupt_at`
    stops the run (an exception out of it) once every other call of its round has been
    answered and stored: what was in flight at a crash cannot be saved."""
    scores, stopping = [0], []

    def latency(request: dg.LogprobRequest) -> float:
        if request.phase == "score":
            scores[0] += 1
            if scores[0] == interrupt_at:
                stopping.append(request)
                return 0.5
        return 0.0

    def fault(request: dg.LogprobRequest, number: int) -> Exception | None:
        return Interrupt() if stopping and request is stopping[0] else None

    def logprob(request: dg.LogprobRequest) -> float:
        answered[0] += 1
        answered[1] += request.phase == "score"
        return world.logprob(request)

    return ScriptedModel(
        generate=world.generate, logprob=logprob, latency_s=latency, fault=fault, name="quality"
    )


async def train(world, cache, checkpoint, answered, interrupt_at=None):
    train_set, dev = items(60), items(20, start=500)
    async with dg.Engine(counting(world, answered, interrupt_at), cache=str(cache)) as engine:
        trainer = dg.VariationalTrainer(
            network(), engine, num_prompt_samples=4, max_demonstrations=0, seed=1
        )
        return await trainer.fit(train_set, dev, steps=3, batch_size=20, checkpoint_dir=checkpoint)


async def test_resuming_a_run_interrupted_mid_race_repeats_no_call(tmp_path) -> None:
    world, _ = clear_winner_world(0)
    whole = [0, 0]  # calls, score calls
    reference = await train(world, tmp_path / "a.sqlite", tmp_path / "a", whole)
    answered = [0, 0]
    stop = whole[1] * 2 // 3  # in the last step's race
    with pytest.raises(Interrupt):
        await train(world, tmp_path / "b.sqlite", tmp_path / "b", answered, interrupt_at=stop)
    assert (tmp_path / "b" / "checkpoint.json").exists()
    assert answered[0] < whole[0]
    resumed = await train(world, tmp_path / "b.sqlite", tmp_path / "b", answered)
    assert answered[0] == whole[0]
    assert resumed.network.prompts() == reference.network.prompts()


async def test_expected_calls_lie_below_the_upper_bound_and_the_run_so_far_reproduces_its_calls() -> (
    None
):
    """Before the run, the expected figure is below the bound and above what a race can
    save at best; after it, scaling each phase by what the run sent makes the figure the
    run's own calls (up to rounding)."""
    world, _ = clear_winner_world(1)
    model = world.model()
    train_set, dev = items(60), items(20, start=500)
    async with dg.Engine(model, cache=False) as engine:
        trainer = dg.VariationalTrainer(
            network(), engine, num_prompt_samples=4, max_demonstrations=0, seed=1
        )
        before = trainer.estimate(3, 20, train_set, len(dev))
        await trainer.fit(train_set, dev, steps=3, batch_size=20)
        after = trainer.estimate(3, 20, train_set, len(dev))
    assert before.expected_calls < before.calls
    assert after.calls == before.calls
    assert after.expected_calls == pytest.approx(len(model.calls), rel=0.01)


async def test_a_run_under_a_metric_beyond_0_and_1_checkpoints_its_scores_and_resumes(
    tmp_path,
) -> None:
    """The best network's per-example results are the run's metric scores: checkpointed as
    they are (any finite number, their mean the best score) and compared against on resume."""
    world, _ = clear_winner_world(0)
    train_set, dev = items(60), items(20, start=500)
    metric = Metric("points", points)

    async def fit(steps: int) -> dg.FitResult:
        async with dg.Engine(world.model(), cache=False) as engine:
            trainer = dg.VariationalTrainer(
                network(), engine, num_prompt_samples=4, max_demonstrations=0, seed=1
            )
            return await trainer.fit(
                train_set, dev, steps=steps, batch_size=20, checkpoint_dir=tmp_path, metric=metric
            )

    first = await fit(1)
    checkpoint = Checkpoint.read(tmp_path)
    assert checkpoint is not None and len(checkpoint.best_results) == len(dev)
    assert set(checkpoint.best_results) <= {-3.0, 7.0}
    assert checkpoint.best_score == first.best_dev_score
    assert first.best_dev_score == pytest.approx(statistics.mean(checkpoint.best_results))
    assert first.best_dev_score > first.initial_dev_score
    resumed = await fit(2)
    assert [record.step for record in resumed.history] == [1, 2]
    assert {record.metric for record in resumed.history} == {"points"}
    assert resumed.best_dev_score >= first.best_dev_score


def test_race_neither_ranks_nor_drops_a_candidate_paired_on_fewer_than_five_examples() -> None:
    """Candidate 1's demonstrations show three of the round's five examples: two pairs say
    little, so halving passes it by (and candidate 2, worse on five, goes)."""
    current = [-1.0, -1.3, -0.8, -1.1, -2.0]
    shown = [None, None, None, -3.0, -3.0]
    worse = [s - 0.5 for s in current]
    better = [s + 0.5 for s in current]
    alive = Race(1.645).survivors([current, shown, worse, better], [0, 1, 2, 3], halve=True)
    assert alive == [0, 1, 3]


def test_race_ranks_alike_in_any_order_when_every_candidate_scores_minus_infinity_somewhere() -> (
    None
):
    """-inf on an example for everyone is no difference between them (it made every mean NaN,
    and the ranking followed the list order)."""
    inf = float("-inf")
    current = [-1.0, -1.2, inf, -0.9, -1.1]
    best = [-0.2, -0.3, inf, -0.1, -0.2]
    middle = [-0.9, -1.0, inf, -0.8, -1.0]
    worst = [-2.0, -2.5, inf, -1.9, -2.2]
    for order in ([best, middle, worst], [worst, middle, best]):
        utilities = [current, *order]
        alive = Race(1.645).survivors(utilities, [0, 1, 2, 3], halve=True)
        assert [utilities[c] for c in alive] == [current, best]


# -- the race's arithmetic ------------------------------------------------------------------


def test_the_paired_bound_is_the_mean_plus_z_standard_errors_of_the_sample() -> None:
    differences = [1.0, 2.0, 3.0, 6.0]  # mean 3, sample variance 14 / 3
    assert paired_upper_bound(differences, 2.0) == pytest.approx(3 + 2 * (14 / 3 / 4) ** 0.5)
    assert paired_upper_bound([-1.0, -2.0], 1.0) == pytest.approx(-1.5 + 0.5)
    assert paired_upper_bound([-5.0], 1.0) == float("inf")  # one difference: no spread known


def test_a_loser_is_settled_from_five_differences_whose_bound_is_below_zero() -> None:
    assert not is_settled_worse([-1.0] * 4, 1.645)
    assert is_settled_worse([-1.0] * 5, 1.645)
    assert not is_settled_worse([-1.0, -1.0, -1.0, -1.0, 3.0], 1.645)


@pytest.mark.parametrize(
    ("examples", "share"),
    [(0, 1.0), (4, 1.0), (10, 0.5 + 0.5 * 0.5), (20, 0.25 + 0.25 * 0.5 + 0.5 * 0.25)],
)
def test_a_race_is_expected_to_send_each_rounds_share_halved_after_every_round(
    examples: int, share: float
) -> None:
    assert Race(1.645).expected_share(examples) == pytest.approx(share)
    assert Race(None).expected_share(examples) == 1.0


def test_a_step_is_expected_to_compare_on_part_of_dev_only_when_stopping_early() -> None:
    assert Race(None).dev_share == 1.0
    assert Race(1.645).dev_share == EXPECTED_DEV_SHARE < 1


def test_the_tally_sums_each_phase_and_scales_by_what_was_sent_over_what_was_expected() -> None:
    tally = Tally()
    tally.add({"score": 10, "eval": 4}, {"score": 40, "eval": 8, "propose": 2})
    tally.add({"score": 20, "propose": 2}, {"score": 20, "eval": 0, "propose": 2})
    assert tally.sent == {"score": 30, "eval": 4, "propose": 2}
    assert tally.expected == {"score": 60, "eval": 8, "propose": 4}
    assert tally.factors() == {"score": 0.5, "eval": 0.5, "propose": 0.5}
    tally.add({"forward": 3}, {"forward": 0})
    assert "forward" not in tally.factors()  # nothing expected: no factor


@pytest.mark.parametrize(
    ("race", "examples", "kept"),
    [(Race(None), 20, 7), (Race(1.645), 5, 7), (Race(1.645), 10, 4), (Race(1.645), 20, 2)],
    ids=["full scoring keeps all", "one round", "two rounds", "three rounds"],
)
def test_a_race_is_expected_to_keep_what_its_halvings_leave(
    race: Race, examples: int, kept: int
) -> None:
    assert race.kept(7, examples) == kept


async def test_midway_the_figure_is_the_steps_done_and_the_others_scaled_as_they_went() -> None:
    """After one step of three, the figure is what the run sent (its first dev evaluation
    and the step) and the prior's two other steps scaled by phase as that step went; the
    bound does not move."""
    world, _ = clear_winner_world(1)
    model = world.model()
    train_set, dev = items(60), items(20, start=500)
    async with dg.Engine(model, cache=False) as engine:
        trainer = dg.VariationalTrainer(
            network(), engine, num_prompt_samples=4, max_demonstrations=0, seed=1
        )
        before = trainer.estimate(3, 20, train_set, len(dev))
        await trainer.fit(train_set, dev, steps=1, batch_size=20)
        midway = trainer.estimate(3, 20, train_set, len(dev))
        factors = trainer.tally.factors()
        later = [w for s in (2, 3) for w in trainer.planned(s, 20, len(dev), True)]
    assert midway.calls == before.calls
    expected_later = sum(
        p.count.expected * factors.get(p.phase, 1.0) for w in later for p in w.parts
    )
    assert midway.expected_calls == pytest.approx(len(model.calls) + expected_later, abs=len(later))
    assert before.expected_calls != midway.expected_calls


def test_halving_keeps_the_better_half_by_mean_difference_to_the_current_parameter() -> None:
    """Six noisy candidates (no bound settles any of them): the three best by their mean
    difference to the current parameter go on, wherever they stand in the list."""
    best = [3.0, -2.0, 4.0, -1.0, 1.0]  # mean 1.0
    noise = [3.0, -3.0, 3.0, -3.0, 0.0]

    def mean_of(mu: float) -> list[float]:
        return [b + n + mu - 1.0 for b, n in zip(best, noise, strict=True)]

    field = [
        [0.0] * 5,
        mean_of(0.3),
        mean_of(-0.2),
        best,
        mean_of(0.5),
        mean_of(-0.3),
        mean_of(-0.4),
    ]
    alive = Race(1.645).survivors(field, list(range(7)), halve=True)
    assert alive == [0, 1, 3, 4]
    assert Race(1.645).survivors(field, list(range(7)), halve=False) == list(range(7))


def test_a_race_charges_a_candidate_the_trust_region_on_what_it_loses_to_the_current_one() -> None:
    """Per example, as the ELBO does over the whole batch: a loss of 2 nats costs 2 x 0.5
    more, a gain costs nothing, an example either was not scored on stays unscored."""
    from dlgraph.train.elbo import utilities

    current, candidate = [-1.0, -2.0, None, -1.0], [-3.0, -1.0, -2.0, None]
    assert utilities([current, candidate], 0.5) == [current, [-4.0, -1.0, -2.0, None]]
    assert utilities([current, candidate], 0.0) == [current, candidate]
