"""A class distribution in one call: every verbalizer of every class scored as continuations
of one context (`ContinuationsRequest`) when the backend says it can, through the whole engine
(cache, single-flight, ledger, journal, tracing), with the same distribution as one request
per verbalizer."""

from __future__ import annotations

import math

import anyio
import attrs
import pytest
from dlgraph_sim import ScriptedModel, stable_random
from test_tracing import Spans

import dlgraph as dg
from dlgraph.engine.journal import read_journal
from dlgraph.engine.tokens import estimated_tokens
from dlgraph.nodes import Cost

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


async def test_more_verbalizers_than_one_call_takes_are_asked_in_as_few_calls_as_fit() -> None:
    model = scripted(dg.Capabilities(continuations=4))
    async with dg.Engine(model) as engine:
        chunked = await engine.classify(CONTEXT, CLASSES)
    async with dg.Engine(scripted(dg.Capabilities())) as engine:
        each = await engine.classify(CONTEXT, CLASSES)
    sizes = sorted(len(call.request.continuations) for call in model.calls)
    assert sizes == [2, 4] and chunked == pytest.approx(each, abs=1e-12)


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
        (lambda r: -1.0, "expected a list of log-probabilities, got -1.0"),
    ],
    ids=["too few", "NaN", "positive", "one number"],
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


def test_a_limit_on_tokens_charges_the_context_with_each_continuation_where_it_is_repeated() -> (
    None
):
    """A list of prompts over HTTP sends the context with every continuation, and the server
    charges it each time."""
    model = scripted(dg.Capabilities(continuations=8, repeats_context=True))
    request = dg.ContinuationsRequest(CONTEXT, [" positive", " negative", " neutral"])
    each = sum(model.count_tokens(CONTEXT) + model.count_tokens(t) for t in request.continuations)
    assert estimated_tokens(model, request) == (each, 0)


# -- several targets of one context: a text node's candidates --------------------------------

TARGETS = [" left", " right", " left twice", " back to the start"]


async def test_several_targets_of_one_context_are_one_call_each_valued_as_alone() -> None:
    together, each = scripted(), scripted(dg.Capabilities())
    async with dg.Engine(together) as one, dg.Engine(each) as other:
        joint = await one.logprobs(CONTEXT, TARGETS, node="reason", phase="posterior")
        alone = [await other.logprob(CONTEXT, t) for t in TARGETS]
        usage = one.statistics().by_key["reason", "posterior"]
    (call,) = together.calls
    assert isinstance(call.request, dg.ContinuationsRequest)
    assert call.request.continuations == tuple(TARGETS) and usage.calls == 1
    assert joint == pytest.approx(alone, abs=1e-12)
    assert len(each.calls) == len(TARGETS)


@pytest.mark.parametrize(
    ("continuations", "sent"),
    [(3, [dg.ContinuationsRequest, dg.LogprobRequest]), (1, [dg.LogprobRequest] * 4)],
    ids=["three a call", "one a call"],
)
async def test_more_targets_than_one_call_takes_are_as_few_calls_as_fit(
    continuations: int, sent: list[type]
) -> None:
    model = scripted(dg.Capabilities(continuations=continuations))
    async with dg.Engine(model) as engine:
        values = await engine.logprobs(CONTEXT, TARGETS)
    assert sorted(type(call.request).__name__ for call in model.calls) == sorted(
        kind.__name__ for kind in sent
    )
    assert values == [logprob(dg.LogprobRequest(CONTEXT, t)) for t in TARGETS]


async def test_a_hidden_node_s_candidates_are_scored_in_one_call_per_example_alike() -> None:
    """DLN-2 on a backend that takes several continuations: the hidden node's posterior
    prior (its candidates after its forward inputs) and each candidate prompt's scores on
    an example's posterior candidates are one call each, and the step decides exactly as
    with one call per target (the same weights, the same ELBOs)."""
    from test_estimate import BATCH, NETWORKS, trainer_on

    train, _ = NETWORKS["dln2"][2]()
    outcomes, calls = [], []
    for continuations in (0, 8):
        async with trainer_on("dln2", continuations=continuations) as (trainer, engine, _):
            outcomes.append(await trainer.step(train[:BATCH]))
            calls.append(engine.statistics().by_key)
    each, together = outcomes
    assert together.posteriors["reason"] == each.posteriors["reason"]
    for name in ("reason", "answer"):
        assert [p for p, _ in together.scored[name]] == [p for p, _ in each.scored[name]]
        assert [s for _, s in together.scored[name]] == pytest.approx(
            [s for _, s in each.scored[name]], abs=1e-9
        )
    candidates = len(each.posteriors["reason"].candidates[0])
    assert candidates > 2
    one, many = calls[1], calls[0]
    draws = candidates - 1  # the forward output, then the samples (generated, not scored)
    assert many["reason", "posterior"].calls == BATCH * (draws + candidates)
    assert one["reason", "posterior"].calls == BATCH * (draws + 1)
    assert one["reason", "score"].calls * candidates == many["reason", "score"].calls


async def test_a_target_asked_twice_in_one_call_is_scored_once() -> None:
    model = scripted()
    async with dg.Engine(model) as engine:
        values = await engine.logprobs(CONTEXT, [" left", " right", " left"])
        alone = await engine.logprobs(CONTEXT, [" back", " back"])
    first, second = (call.request for call in model.calls)
    assert first.continuations == (" left", " right")
    assert values[0] == values[2] != values[1]
    assert second == dg.LogprobRequest(CONTEXT, " back") and alone[0] == alone[1]


async def test_no_continuation_of_a_context_is_scored_twice_whichever_request_asks() -> None:
    """Scored in a continuations request, each continuation answers a later request for it
    alone; a later request for known ones and new ones sends only the new ones; one for known
    ones only sends nothing."""
    model = scripted()
    async with dg.Engine(model) as engine:
        first = await engine.logprobs(CONTEXT, TARGETS[:2])
        alone = await engine.logprob(CONTEXT, TARGETS[1])
        more = await engine.logprobs(CONTEXT, TARGETS)
        known = await engine.logprobs(CONTEXT, [TARGETS[3], TARGETS[0]])
        hits = engine.statistics().total.cache_hits
        one_new = await engine.logprobs(CONTEXT, [TARGETS[2], " ahead"])
    sent = [call.request for call in model.calls]
    assert [r.continuations for r in sent[:2]] == [tuple(TARGETS[:2]), tuple(TARGETS[2:])]
    assert sent[2:] == [dg.LogprobRequest(CONTEXT, " ahead")]  # one left: batchable alone
    assert alone == first[1] and more[:2] == first and known == [more[3], more[0]]
    assert hits == 2 and one_new[0] == more[2]
    assert more == [logprob(dg.LogprobRequest(CONTEXT, t)) for t in TARGETS]


async def test_continuations_known_from_a_cache_on_disk_are_not_scored_again(tmp_path) -> None:
    path = tmp_path / "cache.sqlite"
    async with dg.Engine(scripted(), cache=path) as engine:
        before = await engine.logprobs(CONTEXT, TARGETS)
    model = scripted()
    async with dg.Engine(model, cache=path) as engine:
        again = await engine.logprobs(CONTEXT, TARGETS[1:3])
        alone = await engine.logprob(CONTEXT, TARGETS[3])
    assert model.calls == [] and again == before[1:3] and alone == before[3]


HTTP = dg.Capabilities(
    continuations=8, top_logprobs=5, repeats_context=True, first_token_classes=True
)


@pytest.mark.parametrize(
    ("capabilities", "reads"),
    [
        (HTTP, True),
        (attrs.evolve(HTTP, top_logprobs=3), False),
        (attrs.evolve(HTTP, repeats_context=False), False),  # in process: no saving
        (attrs.evolve(HTTP, first_token_classes=False), False),  # the backend's choice
        (attrs.evolve(HTTP, continuations=0), False),
        (attrs.evolve(HTTP, exact_logprobs=False), False),
    ],
    ids=[
        "over http",
        "more verbalizers than alternatives",
        "in process",
        "turned off",
        "one each",
        "chat",
    ],
)
def test_a_class_is_read_from_the_first_token_only_where_that_sends_fewer_tokens(
    capabilities: dg.Capabilities, reads: bool
) -> None:
    """Four verbalizers: read from one first-token request where a class in one call would
    repeat the context four times and the alternatives may hold all four (two calls at most,
    one expected)."""
    assert capabilities.reads_first_token(4) is reads
    assert not capabilities.reads_first_token(1)
    if reads:
        assert (
            capabilities.distribution_calls(4),
            capabilities.expected_distribution_calls(4),
        ) == (2, 1)


def test_a_cost_never_expects_more_calls_than_it_may_send() -> None:
    with pytest.raises(ValueError, match="expected calls 3 outside 0..2"):
        Cost(2, writes=False, expected=3)


# -- what a log-probability is, on every path -------------------------------------------------


def answering(value: float, capabilities: dg.Capabilities) -> ScriptedModel:
    return ScriptedModel(logprob=lambda request: value, capabilities=capabilities)


@pytest.mark.parametrize("capabilities", [dg.Capabilities(), SEVERAL], ids=["each", "together"])
@pytest.mark.parametrize("value", [1e-7, -0.0, -math.inf])
async def test_a_server_s_rounding_above_zero_is_zero_alike_alone_and_together(
    value: float, capabilities: dg.Capabilities
) -> None:
    async with dg.Engine(answering(value, capabilities), retry=FAST) as engine:
        alone = await engine.logprob(CONTEXT, " yes")
        together = await engine.logprobs(CONTEXT, [" yes", " no"])
    assert alone == together[0] == together[1] == min(value, 0.0)


@pytest.mark.parametrize("capabilities", [dg.Capabilities(), SEVERAL], ids=["each", "together"])
@pytest.mark.parametrize("value", [0.5, math.inf, math.nan])
async def test_a_value_that_is_no_log_probability_is_malformed_alike_alone_and_together(
    value: float, capabilities: dg.Capabilities
) -> None:
    """Retried, then refused, whichever request asked it: never a value of a distribution."""
    async with dg.Engine(answering(value, capabilities), retry=FAST) as engine:
        for ask in (
            lambda: engine.logprob(CONTEXT, " yes"),
            lambda: engine.logprobs(CONTEXT, [" yes", " no"]),
            lambda: engine.classify(CONTEXT, CLASSES),
        ):
            with pytest.raises(dg.RetriesExhausted, match="is not a number <= 0"):
                await ask()


def refuses_more_than(most: int):
    """A server fault: a request of more than `most` continuations is refused (a 400)."""

    def fault(request: object, number: int) -> Exception | None:
        if isinstance(request, dg.ContinuationsRequest) and len(request.continuations) > most:
            return dg.RequestRejected(f"at most {most} prompts per request")
        return None

    return fault


async def test_more_continuations_than_the_server_takes_go_in_requests_it_takes() -> None:
    """A backend set to send more continuations per request than its server takes (a user's
    `max_batch` above the server's): the refused request's first continuation is sent alone
    (taken: the size was refused), the rest in requests of half the refused size, and later
    requests so from the start; the values are those of one request each."""
    model = scripted(fault=refuses_more_than(3))
    async with dg.Engine(model, retry=FAST) as engine:
        distribution = await engine.classify(CONTEXT, CLASSES)
        usage = engine.statistics().total
        await engine.classify(CONTEXT + " Really?", CLASSES)
    sizes = [len(getattr(call.request, "continuations", "1")) for call in model.calls]
    assert sizes[:2] == [6, 1] and sorted(sizes[2:4]) == [2, 3] and sizes[4:] == [3, 3]
    assert isinstance(model.calls[1].request, dg.LogprobRequest)  # one alone: as it is
    async with dg.Engine(scripted(dg.Capabilities())) as engine:
        assert distribution == pytest.approx(await engine.classify(CONTEXT, CLASSES), abs=1e-12)
    assert usage.calls == 4 and usage.errors == 1


async def test_continuations_whose_context_is_refused_fail_after_two_calls() -> None:
    """Refused, then refused for one continuation alone: the server refuses the context (too
    long, filtered), which no smaller request mends."""

    def fault(request: object, number: int) -> Exception | None:
        return dg.RequestRejected("the prompt is too long")

    model = scripted(fault=fault)
    async with dg.Engine(model, retry=FAST) as engine:
        with pytest.raises(dg.RequestRejected, match="too long"):
            await engine.logprobs(CONTEXT, TARGETS)
    first, alone = (call.request for call in model.calls)
    assert len(first.continuations) == len(TARGETS) and alone == dg.LogprobRequest(
        CONTEXT, TARGETS[0]
    )
