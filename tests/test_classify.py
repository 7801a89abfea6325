"""Class distributions from first-token alternatives: each class sums its verbalizers'
alternatives, and an answer with no alternative is an error, never a uniform distribution."""

from __future__ import annotations

import math
from collections.abc import Callable

import attrs
import pytest
from dlgraph_sim import ScriptedModel

import dlgraph as dg
from dlgraph.engine.cache import SqliteStore
from dlgraph.engine.stage import request_key
from dlgraph.scoring import LOG_FLOOR

FAST = dg.RetryPolicy(deadline_s=0.5, initial_wait_s=0.01, max_wait_s=0.02)


@attrs.define(eq=False)
class FirstTokenModel(dg.Backend):
    """A model that only reports first-token alternatives, answer n from `answers(n)`."""

    answers: Callable[[int], dict[str, float]]
    capabilities: dg.Capabilities = dg.Capabilities(exact_logprobs=False, top_logprobs=5)
    calls: int = 0

    async def top_logprobs(self, request: dg.TopLogprobsRequest) -> dict[str, float]:
        self.calls += 1
        return self.answers(self.calls)


ALTERNATIVES = {" yes": math.log(0.5), "Yes": math.log(0.1), " no": math.log(0.2), " the": -1.5}


async def test_a_class_sums_the_alternatives_of_its_verbalizers_in_any_case_or_spacing() -> None:
    """Would fail if only the first matching alternative counted, or case was not folded."""
    async with dg.Engine(FirstTokenModel(lambda n: ALTERNATIVES)) as engine:
        distribution = await engine.classify("Is it hot? Answer:", ["yes", "no"])
    assert distribution == pytest.approx([0.6 / 0.8, 0.2 / 0.8])


async def test_an_answer_without_alternatives_fails_naming_the_backend_never_uniform() -> None:
    """The bug of issue 22: an answer the backend could not read came back as {}, every class
    fell to the floor and the distribution was exactly uniform."""
    model = FirstTokenModel(lambda n: {})
    async with dg.Engine(model, retry=FAST) as engine:
        with pytest.raises(dg.RetriesExhausted) as caught:
            await engine.classify("Is it hot? Answer:", ["yes", "no"], node="answer")
    assert isinstance(caught.value.__cause__, dg.MalformedAnswer)
    assert "FirstTokenModel: no first-token alternatives" in str(caught.value)
    assert "node 'answer'" in str(caught.value) and model.calls > 1


async def test_an_empty_answer_once_is_retried_and_the_next_answer_used() -> None:
    model = FirstTokenModel(lambda n: {} if n == 1 else ALTERNATIVES)
    async with dg.Engine(model, retry=FAST) as engine:
        distribution = await engine.classify("Is it hot? Answer:", ["yes", "no"])
        assert engine.statistics().total.retries == 1
    assert distribution == pytest.approx([0.75, 0.25])


async def test_a_nan_alternative_is_a_malformed_answer() -> None:
    model = FirstTokenModel(lambda n: {" yes": math.nan, " no": -1.0})
    async with dg.Engine(model, retry=FAST) as engine:
        with pytest.raises(
            dg.RetriesExhausted, match="the log-probability nan is not a number <= 0"
        ):
            await engine.classify("Is it hot? Answer:", ["yes", "no"])


async def test_an_empty_answer_an_older_version_cached_on_disk_is_asked_again(tmp_path) -> None:
    """Before the fix, {} reached the cache; a cache file from then must not keep a class
    distribution uniform."""
    path = tmp_path / "cache.sqlite"
    model = FirstTokenModel(lambda n: ALTERNATIVES)
    request = dg.TopLogprobsRequest("Is it hot? Answer:", count=5)
    store = await SqliteStore.open(path)
    await store.put(request_key(model.identity, request), {})
    await store.aclose()
    async with dg.Engine(model, cache=path) as engine:
        distribution = await engine.classify("Is it hot? Answer:", ["yes", "no"])
    assert model.calls == 1 and distribution == pytest.approx([0.75, 0.25])


async def test_a_model_that_only_generates_classifies_by_the_class_its_answer_names() -> None:
    """Without log-probabilities, one short greedy answer picks the class (any verbalizer);
    every other class keeps the floor, e^-20 of the chosen one's probability."""
    answers = {"hot": "Yes", "cold": "nah", "odd": "maybe"}
    model = ScriptedModel(
        generate=lambda r: answers[r.prompt.split()[2].rstrip("?")],
        capabilities=dg.Capabilities(exact_logprobs=False),
    )
    classes = ["yes|Yes", "no|nah"]
    async with dg.Engine(model) as engine:
        hot = await engine.classify("Is it hot? Answer:", classes)
        cold = await engine.classify("Is it cold? Answer:", classes)
        odd = await engine.classify("Is it odd? Answer:", classes)
    floor = math.exp(LOG_FLOOR)
    assert hot == pytest.approx([1 / (1 + floor), floor / (1 + floor)], rel=1e-12, abs=0)
    assert cold == pytest.approx([floor / (1 + floor), 1 / (1 + floor)], rel=1e-12, abs=0)
    assert odd == pytest.approx([0.5, 0.5])  # an answer naming no class
    assert [type(call.request) for call in model.calls] == [dg.GenerateRequest] * 3
