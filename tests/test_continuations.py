"""A class distribution in one call: every verbalizer of every class scored as continuations
of one context (`ContinuationsRequest`) when the backend says it can, through the whole engine
(cache, single-flight, ledger, journal, tracing), with the same distribution as one request
per verbalizer."""

from __future__ import annotations

import math

import anyio
import pytest
from dlgraph_sim import ScriptedModel, stable_random
from test_tracing import Spans

import dlgraph as dg
from dlgraph.engine.journal import read_journal
from dlgraph.engine.tokens import estimated_tokens

CONTEXT = "Is the tweet positive, negative or neutral? Tweet: the flight was late. Answer:"
CLASSES = ["positive|Positive", "negative|Negative", "neutral|Neutral"]
FAST = dg.RetryPolicy(deadline_s=0.5, initial_wait_s=0.01, max_wait_s=0.02)
SEVERAL = dg.Capabilities(continuations=8)


def logprob(request: dg.LogprobRequest) -> float:
    """A value of its own for each (context, target), as a model's would be."""
    return -0.1 - 5 * stable_random(request.context, request.target)


def scripted(capabilities: dg.Capabilities = SEVERAL, **options: object) -> ScriptedModel:
    return ScriptedModel(logprob=logprob, capabilities=capabilities, **options)  # type: ignore[arg-type]


async def test_a_class_distribution_is_one_call_on_a_backend_that_scores_continuations() -> None:
    model = scripted()
    async with dg.Engine(model) as engine:
        await engine.classify(CONTEXT, CLASSES, node="answer", phase="eval")
        usage = engine.statistics().by_key["answer", "eval"]
    (call,) = model.calls
    assert isinstance(call.request, dg.ContinuationsRequest)
    assert call.request.continuations == (
        " positive",
        " Positive",
        " negative",
        " Negative",
        " neutral",
        " Neutral",
    )
    assert (call.request.node, call.request.phase) == ("answer", "eval")
    assert usage.calls == 1
    texts = call.request.continuations
    assert usage.tokens_in == model.count_tokens(CONTEXT) + sum(map(model.count_tokens, texts))


@pytest.mark.parametrize("classes", [CLASSES, ["yes", "no"], ["a|A|b", "c", "d|D"]])
async def test_the_distribution_in_one_call_equals_the_one_of_a_call_per_verbalizer(
    classes: list[str],
) -> None:
    each = scripted(dg.Capabilities())
    together = scripted()
    async with dg.Engine(each) as one, dg.Engine(together) as other:
        separate = await one.classify(CONTEXT, classes)
        joint = await other.classify(CONTEXT, classes)
    assert len(together.calls) == 1
    assert len(each.calls) == sum(len(spec.split("|")) for spec in classes)
    assert joint == pytest.approx(separate, abs=1e-9)
    assert math.fsum(joint) == pytest.approx(1.0)


async def test_more_verbalizers_than_one_call_takes_are_asked_one_call_each() -> None:
    model = scripted(dg.Capabilities(continuations=5))
    async with dg.Engine(model) as engine:
        await engine.classify(CONTEXT, CLASSES)
    assert len(model.calls) == 6
    assert all(isinstance(call.request, dg.LogprobRequest) for call in model.calls)


async def test_a_distribution_asked_again_is_answered_from_the_cache(tmp_path) -> None:
    path = tmp_path / "cache.sqlite"
    model = scripted()
    async with dg.Engine(model, cache=path) as engine:
        first = await engine.classify(CONTEXT, CLASSES)
        again = await engine.classify(CONTEXT, CLASSES, node="other", phase="score")
        assert engine.statistics().total.cache_hits == 1
    async with dg.Engine(model, cache=path) as engine:  # from disk: a JSON list, read back
        from_disk = await engine.classify(CONTEXT, CLASSES)
    assert len(model.calls) == 1
    assert first == again == from_disk


async def test_identical_distributions_in_flight_share_one_call() -> None:
    model = scripted(latency_s=0.05)
    async with dg.Engine(model, cache=False) as engine:
        async with anyio.create_task_group() as group:
            for node in ("a", "b", "c"):
                group.start_soon(lambda node=node: engine.classify(CONTEXT, CLASSES, node=node))
        assert engine.statistics().total.calls == 1
    assert len(model.calls) == 1


async def test_a_distribution_in_one_call_is_one_call_in_the_journal(tmp_path) -> None:
    journal = tmp_path / "calls.jsonl"
    async with dg.Engine(scripted(), journal=journal) as engine:
        await engine.classify(CONTEXT, CLASSES, node="answer")
    assert read_journal(journal).by_key["answer", "score"].calls == 1


async def test_a_distribution_in_one_call_is_one_span_naming_its_continuations() -> None:
    spans = Spans()
    async with dg.Engine(scripted(), tracing=spans.tracing()) as engine:
        await engine.classify(CONTEXT, CLASSES, node="answer")
    (call,) = spans.calls()
    assert call.attributes["dlgraph.request.kind"] == "continuations"
    assert call.attributes["dlgraph.request.continuations"] == 6
    assert len(call.attributes["dlgraph.logprobs"]) == 6


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (lambda r: (-1.0,), "1 log-probabilities for 6 continuations"),
        (lambda r: (-1.0,) * 5 + (math.nan,), "not a number <= 0"),
        (lambda r: (-1.0,) * 5 + (0.5,), "not a number <= 0"),
    ],
    ids=["too few", "NaN", "positive"],
)
async def test_a_malformed_continuations_answer_is_retried_and_never_cached(
    answer, message
) -> None:
    class Broken(dg.Backend):
        capabilities = SEVERAL
        calls = 0

        async def continuations(self, request: dg.ContinuationsRequest) -> tuple[float, ...]:
            self.calls += 1
            return answer(request)

    model = Broken()
    async with dg.Engine(model, retry=FAST) as engine:
        for _ in range(2):
            with pytest.raises(dg.RetriesExhausted, match=message):
                await engine.classify(CONTEXT, CLASSES)
    assert model.calls > 2  # retried, and the second classification was asked again


def test_a_continuations_request_keys_on_its_context_and_continuations_only() -> None:
    one = dg.ContinuationsRequest("c", [" a", " b"], node="x", phase="eval", priority=3)
    other = dg.ContinuationsRequest("c", (" a", " b"))
    assert one.key() == other.key() == ("continuations", "c", (" a", " b"))
    assert one.key() != dg.ContinuationsRequest("c", [" b", " a"]).key()


def test_a_limit_on_tokens_charges_the_context_once_and_each_continuation() -> None:
    """What the limiter and the coalescer charge before the call (`estimated_tokens`)."""
    model = scripted()
    request = dg.ContinuationsRequest(CONTEXT, [" positive", " negative", " neutral"])
    texts = request.continuations
    once = model.count_tokens(CONTEXT) + sum(map(model.count_tokens, texts))
    assert estimated_tokens(model, request) == (once, 0)
