"""Which stored values the cache takes for an answer (a damaged or foreign row is a miss, not
an answer), and where an on-disk cache may live."""

from __future__ import annotations

import math

import pytest
from dlgraph_sim import ScriptedModel

import dlgraph as dg
from dlgraph.engine.cache import fits

GENERATE = dg.GenerateRequest("hi")
LOGPROB = dg.LogprobRequest("context", "target")
TOP = dg.TopLogprobsRequest("context")
CONTINUATIONS = dg.ContinuationsRequest("context", [" yes", " no"])


@pytest.mark.parametrize(
    ("value", "work", "answers"),
    [
        ("text", GENERATE, True),
        (3, GENERATE, False),
        (-1.5, LOGPROB, True),
        (0, LOGPROB, True),
        (0.5, LOGPROB, False),
        (True, LOGPROB, False),
        ("-1", LOGPROB, False),
        ({"yes": -0.1, "no": -2}, TOP, True),
        ({}, TOP, False),
        ({"yes": -0.1, "no": math.nan}, TOP, False),
        ({"yes": -0.1, 7: -2.0}, TOP, False),
        ({"yes": "-0.1"}, TOP, False),
        (["yes", -0.1], TOP, False),
        ({"yes": -0.1, "no": math.inf}, TOP, False),
        ({"yes": 3.0}, TOP, False),
        ({"yes": -math.inf, "no": 0.0}, TOP, True),
        ((-0.1, -2.0), CONTINUATIONS, True),
        ([-0.1, -2], CONTINUATIONS, True),  # from disk: JSON has no tuple
        ([-0.1], CONTINUATIONS, False),
        ([-0.1, -2.0, -3.0], CONTINUATIONS, False),
        ([-0.1, 0.5], CONTINUATIONS, False),
        ([0.5, 0.5], CONTINUATIONS, False),
        ([-0.1, True], CONTINUATIONS, False),
        (["-0.1", "-2"], CONTINUATIONS, False),
        ({"yes": -0.1, "no": -2.0}, CONTINUATIONS, False),
        (-0.1, CONTINUATIONS, False),
    ],
)
def test_the_cache_answers_only_with_a_value_of_the_requests_kind(value, work, answers) -> None:
    assert fits(value, work) is answers


async def test_an_on_disk_cache_makes_the_folders_it_lives_in(tmp_path) -> None:
    path = tmp_path / "runs" / "first" / "cache.sqlite"
    async with dg.Engine(ScriptedModel(generate=lambda r: "x"), cache=path) as engine:
        assert await engine.generate("hi") == "x"
    assert path.is_file()


async def test_an_on_disk_cache_at_a_folder_is_refused_naming_it(tmp_path) -> None:
    model = ScriptedModel(generate=lambda r: "x")
    with pytest.raises(dg.CacheError, match=f"{tmp_path}: is a folder; the cache must be a file"):
        async with dg.Engine(model, cache=tmp_path) as engine:
            await engine.generate("hi")
    assert model.calls == []
