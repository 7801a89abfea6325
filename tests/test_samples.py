"""Several samples of one prompt in one call (`SamplesRequest`) when the backend says it can:
through the whole engine (cache, single-flight, ledger, journal, tracing, token limits),
each sample the one its seed gives alone, and a hidden node's posterior samples drawn so."""

from __future__ import annotations

import anyio
import pytest
from dlgraph_sim import ScriptedModel, stable_random
from test_tracing import Spans

import dlgraph as dg
from dlgraph._tasks import map_concurrently
from dlgraph.engine.journal import read_journal
from dlgraph.engine.tokens import estimated_tokens
from dlgraph.plugin import Batch

PROMPT = "Think about the word 'river' and say what its last letter is:"
FAST = dg.RetryPolicy(deadline_s=0.5, initial_wait_s=0.01, max_wait_s=0.02)
SEVERAL = dg.Capabilities(samples=8)


def generate(request: dg.GenerateRequest) -> str:
    """A text of its own for each (prompt, seed), as a sampling model's would be."""
    return f" sample {stable_random(request.prompt, request.seed, request.temperature):.6f}"


def scripted(capabilities: dg.Capabilities = SEVERAL, **options: object) -> ScriptedModel:
    return ScriptedModel(generate=generate, capabilities=capabilities, **options)  # type: ignore[arg-type]


def alone(count: int, seed: int = 0) -> list[str]:
    """The samples as one `GenerateRequest` each would have them."""
    return [
        generate(dg.GenerateRequest(PROMPT, temperature=1.0, seed=seed + i)) for i in range(count)
    ]


async def test_samples_of_one_prompt_are_one_call_each_the_one_its_seed_gives_alone() -> None:
    model = scripted()
    async with dg.Engine(model) as engine:
        texts = await engine.samples(
            PROMPT, 5, temperature=1.0, max_tokens=12, node="reason", phase="posterior"
        )
        usage = engine.statistics().by_key["reason", "posterior"]
    (call,) = model.calls
    assert call.request == dg.SamplesRequest(
        PROMPT, count=5, temperature=1.0, max_tokens=12, node="reason", phase="posterior"
    )
    assert texts == alone(5)
    assert usage.calls == 1
    assert usage.tokens_in == model.count_tokens(PROMPT)  # the prompt once, not five times
    assert usage.tokens_out == sum(map(model.count_tokens, texts))


@pytest.mark.parametrize(
    ("per_call", "sent"),
    [(0, [1, 1, 1, 1, 1]), (1, [1, 1, 1, 1, 1]), (2, [2, 2, 1]), (5, [5]), (8, [5])],
    ids=["none", "one", "two", "five", "eight"],
)
async def test_more_samples_than_one_call_draws_are_as_few_calls_as_hold_them(
    per_call: int, sent: list[int]
) -> None:
    """A call of one sample is a `GenerateRequest` (which a coalescer can batch)."""
    model = scripted(dg.Capabilities(samples=per_call))
    async with dg.Engine(model) as engine:
        texts = await engine.samples(PROMPT, 5, temperature=1.0, seed=3)
    requests = sorted((call.request for call in model.calls), key=lambda r: r.seed)
    counts = [getattr(r, "count", 1) for r in requests]
    assert counts == sent
    assert all(
        isinstance(r, dg.GenerateRequest) for r, n in zip(requests, counts, strict=True) if n == 1
    )
    assert [r.seed for r in requests] == [3 + sum(sent[:i]) for i in range(len(sent))]
    assert texts == alone(5, seed=3)


async def test_a_known_sample_is_not_drawn_again_whichever_request_asks(tmp_path) -> None:
    """Drawn together, each sample answers a later request for its seed alone, and a later
    request for known samples sends nothing; one for some known and some new sends the new
    ones (from the first new seed to the last: a known one between them keeps its text); from
    a cache on disk too."""
    path = tmp_path / "cache.sqlite"
    model = scripted()
    async with dg.Engine(model, cache=path) as engine:
        first = await engine.samples(PROMPT, 3, temperature=1.0)
        one = await engine.generate(PROMPT, temperature=1.0, seed=1)
        again = await engine.samples(PROMPT, 3, temperature=1.0)
        hits = engine.statistics().total.cache_hits
        more = await engine.samples(PROMPT, 6, temperature=1.0)
    sent = [call.request for call in model.calls]
    assert [(r.seed, r.count) for r in sent] == [(0, 3), (3, 3)]
    assert one == first[1] and again == first and hits == 2
    assert more == alone(6)
    later = scripted()
    async with dg.Engine(later, cache=path) as engine:
        assert await engine.samples(PROMPT, 6, temperature=1.0) == more
        assert await engine.generate(PROMPT, temperature=1.0, seed=4) == more[4]
    assert later.calls == []


async def test_known_samples_between_new_ones_keep_their_text() -> None:
    model = scripted()
    async with dg.Engine(model) as engine:
        known = await engine.generate(PROMPT, temperature=1.0, seed=2)
        texts = await engine.samples(PROMPT, 5, temperature=1.0)
    assert [(c.request.seed, getattr(c.request, "count", 1)) for c in model.calls] == [
        (2, 1),
        (0, 5),
    ]
    assert texts[2] == known and texts == alone(5)


async def test_identical_samples_in_flight_share_one_call() -> None:
    model = scripted(latency_s=0.05)
    async with dg.Engine(model, cache=False) as engine:
        async with anyio.create_task_group() as group:
            for node in ("a", "b", "c"):
                group.start_soon(lambda node=node: engine.samples(PROMPT, 4, node=node))
    assert len(model.calls) == 1


async def test_samples_in_one_call_are_one_call_in_the_journal_and_one_span(tmp_path) -> None:
    journal = tmp_path / "calls.jsonl"
    spans = Spans()
    async with dg.Engine(
        scripted(), journal=journal, tracing=spans.tracing(record_content=True)
    ) as engine:
        texts = await engine.samples(PROMPT, 3, temperature=0.7, node="reason", phase="posterior")
    assert read_journal(journal).by_key["reason", "posterior"].calls == 1
    (call,) = spans.calls()
    assert call.attributes["dlgraph.request.kind"] == "samples"
    assert call.attributes["gen_ai.request.choice.count"] == 3
    assert call.attributes["gen_ai.request.temperature"] == 0.7
    assert "dlgraph.logprobs" not in call.attributes
    assert all(text in call.attributes["gen_ai.output.messages"] for text in texts)


def test_a_limit_on_tokens_charges_the_prompt_once_and_each_sample_s_answer() -> None:
    model = scripted()
    request = dg.SamplesRequest(PROMPT, count=4, max_tokens=20)
    assert estimated_tokens(model, request) == (model.count_tokens(PROMPT), 80)


def test_a_samples_request_keys_on_its_sampling_fields_and_count_only() -> None:
    request = dg.SamplesRequest(PROMPT, count=3, seed=4, node="a", phase="posterior")
    assert request.key() == dg.SamplesRequest(PROMPT, count=3, seed=4, priority=2).key()
    assert request.key() != dg.SamplesRequest(PROMPT, count=2, seed=4).key()
    assert [r.seed for r in request.each()] == [4, 5, 6]
    assert {(r.node, r.phase) for r in request.each()} == {("a", "posterior")}


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (lambda r: ("one",), "1 samples for 3 asked"),
        (lambda r: ("one", "two", 3), "not a text"),
        (lambda r: ("one", None, "three"), "not a text"),
        (lambda r: "abc", "expected a list of samples, got 'abc'"),
        (lambda r: None, "expected a list of samples, got None"),
    ],
    ids=["too few", "a number", "none", "one text", "nothing"],
)
async def test_a_malformed_samples_answer_is_retried_and_never_cached(answer, message) -> None:
    class Broken(dg.Backend):
        capabilities = SEVERAL
        calls = 0

        async def samples(self, request: dg.SamplesRequest) -> tuple[object, ...]:
            self.calls += 1
            return answer(request)

    model = Broken()
    async with dg.Engine(model, retry=FAST) as engine:
        for _ in range(2):
            with pytest.raises(dg.RetriesExhausted, match=message):
                await engine.samples(PROMPT, 3)
    assert model.calls > 2  # retried, and the second request was asked again


async def test_a_generation_that_is_no_text_is_malformed_alone_and_in_a_batch() -> None:
    class Broken(dg.Backend):
        capabilities = dg.Capabilities(max_batch=4)

        async def generate(self, request: dg.GenerateRequest) -> object:
            return 3

        async def generate_batch(self, requests) -> list[object]:
            return [None] * len(requests)

    async with dg.Engine(Broken(), retry=FAST, coalesce_ms=0) as engine:
        with pytest.raises(dg.RetriesExhausted, match="not a text"):
            await engine.generate(PROMPT)
    batch = Batch((dg.GenerateRequest(PROMPT), dg.GenerateRequest(PROMPT, seed=1)))
    with pytest.raises(dg.MalformedAnswer, match="not a text"):
        await batch.ask(Broken())


async def test_a_hidden_node_s_posterior_samples_are_one_call_per_example_alike() -> None:
    """DLN-2 on a backend that draws several samples of one prompt in one call: the hidden
    node's posterior samples of an example are one call, and the step is the one of a call
    per sample (the same candidates, weights and ELBOs)."""
    from test_estimate import BATCH, NETWORKS, trainer_on

    train, _ = NETWORKS["dln2"][2]()
    outcomes, calls = [], []
    for samples in (0, 8):
        async with trainer_on("dln2", samples=samples, num_hidden_samples=3) as (
            trainer,
            engine,
            _,
        ):
            outcomes.append(await trainer.step(train[:BATCH]))
            calls.append(engine.statistics().by_key)
    each, together = outcomes
    assert together.posteriors["reason"] == each.posteriors["reason"]
    for name in ("reason", "answer"):
        assert together.scored[name] == each.scored[name]
    assert calls[0]["reason", "posterior"].calls - calls[1]["reason", "posterior"].calls == (
        BATCH * 2  # three samples an example: one call instead of three
    )


async def test_more_samples_than_the_server_draws_at_once_go_in_requests_it_takes() -> None:
    def fault(request: object, number: int) -> Exception | None:
        if isinstance(request, dg.SamplesRequest) and request.count > 2:
            return dg.RequestRejected("n must be at most 2")
        return None

    model = scripted(fault=fault)
    async with dg.Engine(model, retry=FAST) as engine:
        texts = await engine.samples(PROMPT, 5, temperature=1.0)
        later = await engine.samples(PROMPT + " Again:", 4, temperature=1.0)
    asked = [(call.request.seed, getattr(call.request, "count", 1)) for call in model.calls]
    assert asked[:2] == [(0, 5), (0, 1)]  # then at most 3, refused, then at most 2
    assert sorted(asked[2:6]) == [(1, 2), (1, 3), (3, 1), (4, 1)]
    assert isinstance(model.calls[1].request, dg.GenerateRequest)  # one alone: as it is
    assert sorted(asked[6:]) == [(0, 2), (2, 2)]  # learnt: no refusal again
    assert texts == alone(5) and len(later) == 4


async def test_the_span_of_a_partly_known_or_split_request_counts_what_it_sent() -> None:
    """A request answered partly from the cache, or sent in pieces after a refusal, is one
    span whose attempts and tokens are those of the parts it sent (not one shared call's)."""

    def fault(request: object, number: int) -> Exception | None:
        if isinstance(request, dg.SamplesRequest) and request.count > 2:
            return dg.RequestRejected("n must be at most 2")
        return None

    spans = Spans()
    async with dg.Engine(scripted(fault=fault), retry=FAST, tracing=spans.tracing()) as engine:
        await engine.generate(PROMPT, temperature=1.0, seed=0)
        await engine.samples(PROMPT, 4, temperature=1.0)  # seed 0 known: 1 to 3 sent, refused
    partial = [s for s in spans.calls() if s.attributes["dlgraph.request.kind"] == "samples"]
    (call,) = partial
    assert call.attributes["dlgraph.attempts"] == 3  # three refused, one alone, then two
    assert "dlgraph.shared" not in call.attributes
    assert call.attributes["gen_ai.usage.output_tokens"] > 0


async def test_concurrent_draws_on_a_server_that_takes_five_cost_fewer_calls_than_one_each() -> (
    None
):
    """Four draws of sixteen in flight at once, each refused first: the size learnt stays
    at what the server takes or a little below, never one, and the draws cost fewer calls
    than a call per sample would."""

    def fault(request: object, number: int) -> Exception | None:
        if isinstance(request, dg.SamplesRequest) and request.count > 5:
            return dg.RequestRejected("n must be at most 5")
        return None

    model = scripted(dg.Capabilities(samples=16), fault=fault)
    async with dg.Engine(model, retry=FAST) as engine:
        drawn = await map_concurrently(
            lambda k: engine.samples(f"{PROMPT} ({k})", 16, temperature=1.0), range(4)
        )
        later = await engine.samples(PROMPT + " Later:", 16, temperature=1.0)
    assert all(len(texts) == 16 for texts in drawn) and len(later) == 16
    assert len(model.calls) < 4 * 16
    sizes = [getattr(call.request, "count", 1) for call in model.calls[-4:]]
    assert max(sizes) >= 3 and all(size <= 5 for size in sizes)


async def test_a_server_that_refuses_several_samples_in_any_form_gets_one_each() -> None:
    """A server that refuses every request of several samples (`n` unknown to it): the first
    sample alone is a plain generation, taken, and the others follow one a request."""

    def fault(request: object, number: int) -> Exception | None:
        if isinstance(request, dg.SamplesRequest):
            return dg.RequestRejected("unknown parameter n")
        return None

    model = scripted(fault=fault)
    async with dg.Engine(model, retry=FAST) as engine:
        texts = await engine.samples(PROMPT, 4, temperature=1.0)
    assert texts == alone(4)
    assert sum(isinstance(c.request, dg.SamplesRequest) for c in model.calls) <= 3
