"""The pace's small parts without a training run: what the probe sends for each action (how
many, with which tags, what it records), and how a wall time is said."""

from __future__ import annotations

import pytest
from dlgraph_sim import ScriptedModel

import dlgraph as dg
from dlgraph.train.pace import PROBE_CONCURRENCY, EnginePace, Latency, duration, measure
from dlgraph.train.waves import Wave


class Probe:
    """Stands in for a phase's probe: records the tags it is sent, answers at once."""

    def __init__(self, calls: int) -> None:
        self.calls = calls
        self.tags: list[int] = []

    async def __call__(self, tag: int) -> int:
        self.tags.append(tag)
        return self.calls


def engine(**limits: int) -> dg.Engine:
    return dg.Engine(ScriptedModel(generate=lambda request: "ok"), **limits)


async def test_the_probe_times_each_action_alone_twice_then_a_few_together_on_fresh_tags() -> None:
    score, propose = Probe(calls=2), Probe(calls=1)
    pace = await measure(engine(rpm=120), {"score": score, "propose": propose})
    assert len(score.tags) == len(propose.tags) == 2 + PROBE_CONCURRENCY
    tags = score.tags + propose.tags
    assert len(set(tags)) == len(tags)  # no probe is answered from the cache
    assert pace.latency["score"].together == PROBE_CONCURRENCY
    assert (pace.latency["score"].calls, pace.latency["propose"].calls) == (2, 1)
    assert pace.ceiling == 256 and pace.requests_per_s == 2.0
    for latency in pace.latency.values():  # instant probes: no time to speak of
        assert 0 <= latency.alone_s < 60 and 0 <= latency.together_s < 60


async def test_the_probe_sends_no_more_together_than_the_engine_keeps_in_flight() -> None:
    probe = Probe(calls=1)
    pace = await measure(engine(max_concurrency=1), {"generate": probe})
    assert len(probe.tags) == 2 + 1
    assert pace.latency["generate"].together == 1
    assert pace.ceiling == 1 and pace.requests_per_s is None


@pytest.mark.parametrize(
    ("seconds", "said"),
    [
        (0, "0 s"),
        (89.4, "89 s"),
        (90, "2 min"),
        (100, "2 min"),
        (5399, "90 min"),
        (5400, "1.5 h"),
        (36_000, "10.0 h"),
    ],
)
def test_a_wall_time_is_said_in_seconds_minutes_or_hours(seconds: float, said: str) -> None:
    assert duration(seconds) == said


def test_a_wave_of_one_call_costs_one_call_alone() -> None:
    assert Latency(alone_s=2.0, together_s=2.0, together=4).wave_s(1, ceiling=256) == 2.0


def test_a_probe_of_more_calls_than_the_ceiling_runs_one_at_a_time() -> None:
    """A class score of four calls under a ceiling of four: one score in flight, so two
    scores take two rounds of one, however slowly they would run together."""
    serial = Latency(alone_s=1.0, together_s=4.0, together=4, calls=4)
    assert serial.wave_s(8, ceiling=4) == 2.0
    assert serial.wave_s(8, ceiling=7) == 2.0  # seven calls in flight hold one score


def test_a_wave_counts_rounds_of_whole_probes_under_the_ceiling() -> None:
    """Ten calls in flight hold two scores of four calls, not two and a half."""
    parallel = Latency(alone_s=1.0, together_s=1.0, together=4, calls=4)
    assert parallel.wave_s(100, ceiling=10) == 13.0  # 25 scores, two in flight


def test_the_slope_is_what_each_further_probe_in_flight_adds_beyond_the_noise() -> None:
    """Two probes together took 3 s where one alone took 2 s: beyond the noise (a quarter of
    2 s), the second added 0.5 s; four together that took 8 s added 5.5 s over three."""
    assert Latency(alone_s=2.0, together_s=3.0, together=2).slope_s == pytest.approx(0.5)
    assert Latency(alone_s=2.0, together_s=8.0, together=4).slope_s == pytest.approx(5.5 / 3)
    assert Latency(alone_s=2.0, together_s=3.0, together=2).wave_s(2, 256) == pytest.approx(2.5)


def test_a_wave_of_an_action_the_engine_never_timed_costs_no_time() -> None:
    pace = EnginePace({"generate": Latency(1.0, 1.0, 4)}, ceiling=256, requests_per_s=None)
    assert pace.wave_s(Wave(True, "propose", 5)) == 0.0
    limited = EnginePace({}, ceiling=256, requests_per_s=10.0)
    assert limited.wave_s(Wave(True, "propose", 5)) == 0.5  # the request rate still holds
