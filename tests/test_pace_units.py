"""The pace's small parts without a training run: what the probe sends for each action (how
many, with which tags, what it records), and how a wall time is said."""

from __future__ import annotations

import pytest
from dlgraph_sim import ScriptedModel

import dlgraph as dg
from dlgraph.train.pace import PROBE_CONCURRENCY, duration, measure


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
