"""The projected wall time of a run: a few timed calls, projected over the run's waves."""

from __future__ import annotations

import time

import anyio
import attrs
import pytest
from dlgraph_sim import ScriptedModel
from letter_world import LetterWorld, single_word_task
from test_trainer import TRAIN_OPTIONS, dln1, dln2

import dlgraph as dg
from dlgraph.train.pace import EnginePace, Latency, Wave
from dlgraph.train.proposals import END


@attrs.define(eq=False)
class OneAtATime(dg.Backend):
    """Answers one call at a time, as llama-cpp-python's server does, without saying so in
    its capabilities: only the probe can find out."""

    inner: dg.Backend
    lock: anyio.Lock = attrs.field(factory=anyio.Lock)

    @property
    def capabilities(self) -> dg.Capabilities:  # type: ignore[override]
        return self.inner.capabilities

    @property
    def identity(self) -> str:
        return self.inner.identity

    async def generate(self, request: dg.GenerateRequest) -> str:
        async with self.lock:
            return await self.inner.generate(request)

    async def logprob(self, request: dg.LogprobRequest) -> float:
        async with self.lock:
            return await self.inner.logprob(request)


def distinct_proposals(latency_s: float) -> ScriptedModel:
    """The letter world, with every proposal worded apart as a language model's are (the
    world's own proposals repeat a few hints, which the trainer scores once)."""
    world = LetterWorld()

    def generate(request: dg.GenerateRequest) -> str:
        text = world.generate(request)
        if request.phase != "propose":
            return text
        return text.replace(END, f" Take care ({request.seed}, {len(request.prompt)}).{END}")

    return ScriptedModel(generate=generate, logprob=world.logprob, latency_s=latency_s)


async def projected_and_measured(
    backend: dg.Backend, net: dg.Network
) -> tuple[float, float, object]:
    train, dev = single_word_task(100, seed=1), single_word_task(6, seed=2)
    async with dg.Engine(backend) as engine:
        trainer = dg.VariationalTrainer(net, engine, **TRAIN_OPTIONS | {"num_prompt_samples": 3})
        pace = await trainer.pace(train, batch_size=6)
        projected = trainer.estimate(2, 6, train, len(dev)).seconds(pace)
        started = time.monotonic()
        await trainer.fit(train, dev, steps=2, batch_size=6)
        return projected, time.monotonic() - started, pace


@pytest.mark.slow  # a real run timed against a server of real latency
@pytest.mark.parametrize(
    ("serial", "network", "latency_s"),
    [(False, dln1, 0.1), (False, dln2, 0.1), (True, dln1, 0.005)],
    ids=["parallel-dln1", "parallel-dln2", "serial-dln1"],
)
async def test_the_projected_time_of_a_run_is_within_twice_the_measured_time(
    serial: bool, network, latency_s: float
) -> None:
    model = distinct_proposals(latency_s)
    backend = OneAtATime(model) if serial else model
    projected, measured, pace = await projected_and_measured(backend, network())
    assert measured / 2 <= projected <= 2 * measured, (projected, measured, pace)


async def test_the_probe_finds_a_server_that_answers_one_call_at_a_time() -> None:
    train = single_word_task(10, seed=1)
    for backend, parallel in (
        (LetterWorld().model(latency_s=0.05), True),
        (OneAtATime(LetterWorld().model(latency_s=0.05)), False),
    ):
        async with dg.Engine(backend) as engine:
            pace = await dg.VariationalTrainer(dln1(), engine).pace(train)
        score = pace.forward.latency["score"]
        assert score.calls == 4  # one score of a yes|Yes / no|No node asks for four
        assert score.alone_s == pytest.approx(0.05 * (1 if parallel else 4), rel=0.5)
        expected = score.alone_s if parallel else score.together * score.alone_s
        assert score.together_s == pytest.approx(expected, rel=0.5)


async def test_probe_calls_never_come_from_the_cache_and_are_counted() -> None:
    train = single_word_task(10, seed=1)
    model = LetterWorld().model(latency_s=0.02)
    async with dg.Engine(model) as engine:
        trainer = dg.VariationalTrainer(dln2(), engine)
        first, second = await trainer.pace(train), await trainer.pace(train)
        usage = engine.statistics().total
    assert second.forward.latency["score"].alone_s >= 0.015
    assert usage.cache_hits == 0
    samples = 5  # an example's posterior samples: one probe, one call each here
    assert usage.calls == len(model.calls) == 2 * 6 * (4 + 1 + samples + 1)  # 4 classes a score
    assert set(first.forward.latency) == {"score", "generate", "sample", "propose"}


async def test_a_backward_engine_is_timed_for_what_it_writes() -> None:
    train = single_word_task(10, seed=1)
    forward, backward = LetterWorld().model(), LetterWorld().model(latency_s=0.05)
    async with dg.Engine(forward) as f, dg.Engine(backward) as b:
        pace = await dg.VariationalTrainer(dln2(), f, backward=b).pace(train)
    assert set(pace.forward.latency) == {"score", "generate"}
    assert set(pace.backward.latency) == {"propose", "sample"}
    assert pace.backward.latency["propose"].alone_s > pace.forward.latency["score"].alone_s
    assert backward.count(phase="score") == 0 and forward.count(phase="propose") == 0


def test_a_wave_costs_rounds_of_the_concurrency_ceiling_and_respects_the_request_rate() -> None:
    parallel = Latency(alone_s=1.0, together_s=1.0, together=4)
    noisy = Latency(alone_s=1.0, together_s=1.2, together=4)
    serial = Latency(alone_s=1.0, together_s=4.0, together=4)
    assert parallel.wave_s(100, ceiling=256) == noisy.wave_s(100, ceiling=256) == 1.0
    assert parallel.wave_s(100, ceiling=10) == 10.0
    assert serial.wave_s(100, ceiling=256) == pytest.approx(1 + 99 * 2.75 / 3)
    assert parallel.wave_s(0, ceiling=4) == 0.0
    class_scores = Latency(alone_s=1.0, together_s=1.0, together=4, calls=4)
    assert class_scores.wave_s(100, ceiling=256) == 1.0
    assert class_scores.wave_s(100, ceiling=8) == 13.0  # 25 scores, two in flight
    limited = EnginePace({"score": parallel}, ceiling=256, requests_per_s=10.0)
    assert limited.wave_s(Wave(False, "score", 100)) == 10.0
    assert limited.wave_s(Wave(False, "propose", 5)) == 1.0  # unmeasured kinds cost a score


def test_the_estimates_waves_hold_exactly_its_calls() -> None:
    train = single_word_task(20, seed=1)
    for separate in (False, True):
        engine = dg.Engine(LetterWorld().model())
        backward = dg.Engine(LetterWorld().model()) if separate else None
        trainer = dg.VariationalTrainer(dln2(), engine, backward=backward)
        estimate = trainer.estimate(3, 10, train, dev_size=7, eval_every=2)
        forward = sum(w.calls for w in estimate.waves if not w.backward)
        writes = sum(w.calls for w in estimate.waves if w.backward)
        if separate:
            assert (forward, writes) == (estimate.calls, estimate.backward_calls)
        else:
            assert forward + writes == estimate.calls
        assert sum(w.action == "propose" for w in estimate.waves) == 3


async def test_measuring_the_pace_without_examples_is_a_data_error() -> None:
    async with dg.Engine(LetterWorld().model()) as engine:
        with pytest.raises(dg.DataError, match="at least one training example"):
            await dg.VariationalTrainer(dln1(), engine).pace([])


def writers(depth: int) -> dg.Network:
    """A chain of `depth` text nodes, each reading the input too: a network that only writes."""
    net = dg.Network()
    names = ["reason", "say"][-depth:]
    for name in names:
        net.add_node(name, prompt=f"Write ({name}).", max_tokens=8)
        net.add_edge(dg.INPUT, name)
    if depth == 2:
        net.add_edge("reason", "say")
    return net


@pytest.mark.parametrize(("depth", "phase"), [(2, "posterior"), (1, "score")])
async def test_a_score_is_probed_by_the_first_phase_of_the_step_that_scores(
    depth: int, phase: str
) -> None:
    """In a network that only writes, the forward pass scores nothing: a hidden node's
    posterior scores first (its evidence), else the candidates' scores do. Two probes alone
    and four together, each one log-likelihood of a tagged input."""
    model = LetterWorld().model()
    async with dg.Engine(model) as engine:
        pace = await dg.VariationalTrainer(writers(depth), engine).pace(single_word_task(10, 1))
    scores = [c.request for c in model.calls if isinstance(c.request, dg.LogprobRequest)]
    assert len(scores) == 6 and {r.phase for r in scores} == {phase}
    assert len({r.context for r in scores}) == 6  # tagged: none answered from the cache
    assert pace.forward.latency["score"].calls == 1


@pytest.mark.parametrize("together", [0, 8], ids=["one call a sample", "samples in one call"])
async def test_a_backward_engine_is_timed_drawing_posterior_samples_as_the_step_does(
    together: int,
) -> None:
    """A probe is an example's draw, as the step makes it: its five samples in five calls,
    or in one where the backend draws several of one prompt (which the probe then times)."""
    world = LetterWorld()
    forward = world.model()
    backward = attrs.evolve(world.model(), capabilities=dg.Capabilities(samples=together))
    async with dg.Engine(forward) as f, dg.Engine(backward) as b:
        pace = await dg.VariationalTrainer(dln2(), f, backward=b).pace(single_word_task(10, 1))
    draws = [c.request for c in backward.calls if c.request.phase == "posterior"]
    per_probe = 1 if together else 5
    assert len(draws) == 6 * per_probe and pace.backward.latency["sample"].calls == per_probe
    assert all("Better output:" in r.prompt and r.node == "reason" for r in draws)
