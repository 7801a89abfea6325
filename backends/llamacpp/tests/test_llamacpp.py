"""The embedded backend against the real Gemma 3 270M model."""

from __future__ import annotations

import logging

import anyio
import attrs
import numpy as np
import pytest
from dlgraph_llamacpp import LlamaCppModel, default_model_path

import dlgraph as dg

pytestmark = pytest.mark.slow  # the real model

CONTEXT = "The capital of France is"


def reference_logprob(
    context: str, target: str, *, extra_buffers: bool, evaluated_target: str | None = None
) -> float:
    """log p(target | context) over the whole vocabulary, from llama.cpp's logits_all mode.

    The rows are read off one evaluation of the context followed by `evaluated_target` (by
    default the target itself). llama.cpp's CPU kernels round differently for prompt batches
    of different lengths (with extra buffer types off, by up to 0.13 nats here), so a value
    that the backend read from a decode of some tokens is compared with a reference read from
    an evaluation of the same tokens."""
    from dlgraph_llamacpp.native import open_llama

    llm = open_llama(default_model_path(), extra_buffers=extra_buffers, n_ctx=512, logits_all=True)
    try:
        context_tokens = llm.tokenize(context.encode(), add_bos=True)
        target_tokens = llm.tokenize(target.encode(), add_bos=False)
        evaluated = llm.tokenize((evaluated_target or target).encode(), add_bos=False)
        assert evaluated[: len(target_tokens) - 1] == target_tokens[:-1], "rows read in context"
        llm.eval(context_tokens + evaluated)
        total = 0.0
        for offset, token in enumerate(target_tokens):
            row = llm.scores[len(context_tokens) - 1 + offset].astype(np.float64)
            total += row[token] - (row.max() + np.log(np.exp(row - row.max()).sum()))
        return float(total)
    finally:
        llm.close()


async def test_connect_loads_the_default_gemma_model_through_its_entry_point() -> None:
    backend = dg.connect("llamacpp", n_ctx=256)
    assert isinstance(backend, LlamaCppModel)
    async with dg.Engine(backend) as engine:
        paris = await engine.logprob(CONTEXT, " Paris")
        london = await engine.logprob(CONTEXT, " London")
    assert paris > london


@pytest.mark.parametrize("batching", [True, False], ids=["batched", "serial"])
async def test_logprob_equals_the_full_logits_reference_on_a_fresh_context(
    batching, extra_buffers
) -> None:
    async with LlamaCppModel(n_ctx=256, batching=batching, extra_buffers=extra_buffers) as model:
        ours = await model.logprob(dg.LogprobRequest(CONTEXT, " Paris, a city"))
    reference = reference_logprob(CONTEXT, " Paris, a city", extra_buffers=extra_buffers)
    assert ours == pytest.approx(reference, abs=1e-3)


async def test_serial_targets_after_one_context_need_no_new_decode(extra_buffers) -> None:
    async with LlamaCppModel(n_ctx=256, batching=False, extra_buffers=extra_buffers) as model:
        assert len(model.tokenize(" London", add_bos=False)) == 1
        fresh = await model.logprob(dg.LogprobRequest(CONTEXT, " Paris, a city"))
        london = await model.logprob(dg.LogprobRequest(CONTEXT, " London"))
        again = await model.logprob(dg.LogprobRequest(CONTEXT, " Paris, a city"))
        assert model.evaluator.decodes == 1
    assert again == pytest.approx(fresh, abs=1e-5)  # remembered rows are float32
    # " London" is read from the row the first decode (of " Paris, a city") left behind
    reference = reference_logprob(
        CONTEXT, " London", extra_buffers=extra_buffers, evaluated_target=" Paris, a city"
    )
    assert london == pytest.approx(reference, abs=1e-3)


async def test_serial_a_changed_suffix_evaluates_only_the_new_tokens(extra_buffers) -> None:
    async with LlamaCppModel(n_ctx=256, batching=False, extra_buffers=extra_buffers) as model:
        first = await model.logprob(dg.LogprobRequest(CONTEXT + " a city called", " Paris"))
        evaluated = model.evaluator.evaluated_tokens
        other = await model.logprob(dg.LogprobRequest(CONTEXT + " a town called", " Paris"))
        new_tokens = model.evaluator.evaluated_tokens - evaluated
    assert new_tokens < evaluated / 2
    reference = reference_logprob(CONTEXT + " a town called", " Paris", extra_buffers=extra_buffers)
    assert other == pytest.approx(reference, abs=0.1)
    assert first != other


async def test_missing_model_file_is_a_clear_error(tmp_path) -> None:
    missing = tmp_path / "nope.gguf"
    with pytest.raises(dg.BackendUnavailable, match=f"model file '{missing}' not found"):
        async with dg.Engine(dg.connect("llamacpp", model_path=str(missing))):
            pass


@pytest.mark.parametrize("batching", [True, False], ids=["batched", "serial"])
async def test_unloadable_model_file_is_a_clear_error(tmp_path, batching) -> None:
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"not a gguf file" * 100)
    with pytest.raises(dg.BackendUnavailable, match="cannot load model file"):
        async with LlamaCppModel(model_path=str(garbage), batching=batching):
            pass


@pytest.mark.parametrize("batching", [True, False], ids=["batched", "serial"])
async def test_greedy_generation_is_deterministic_and_bounded(batching) -> None:
    async with dg.Engine(LlamaCppModel(n_ctx=256, batching=batching), cache=False) as engine:
        first = await engine.generate("Count: one, two, three,", max_tokens=6)
        second = await engine.generate("Count: one, two, three,", max_tokens=6)
        stopped = await engine.generate("Count: one, two, three,", max_tokens=20, stop=[","])
        assert len(engine.backend.tokenize(first, add_bos=False)) <= 6
    assert first == second and first.strip()
    assert "," not in stopped


@pytest.mark.parametrize("batching", [True, False], ids=["batched", "serial"])
async def test_model_calls_run_in_a_worker_thread_without_blocking_the_loop(batching) -> None:
    ticks = 0
    done = anyio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await anyio.sleep(0)

    long_context = "Question: " + "the quick brown fox jumps over the lazy dog " * 40 + "\nAnswer:"
    async with LlamaCppModel(n_ctx=512, batching=batching) as model:
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(ticker)
            await model.logprob(dg.LogprobRequest(long_context, " yes"))
            done.set()
    assert ticks >= 10


async def test_serial_engine_serialises_concurrent_calls_to_the_model() -> None:
    targets = [" Paris", " London", " Rome", " Berlin"]
    async with LlamaCppModel(n_ctx=256, batching=False) as model:
        alone = [await model.logprob(dg.LogprobRequest(CONTEXT, t)) for t in targets]
    assert LlamaCppModel(batching=False).capabilities.max_concurrency == 1
    async with dg.Engine(LlamaCppModel(n_ctx=256, batching=False)) as engine:
        results: dict[str, float] = {}
        async with anyio.create_task_group() as task_group:
            for target in targets:

                async def score(target: str = target) -> None:
                    results[target] = await engine.logprob(CONTEXT, target)

                task_group.start_soon(score)
    assert [results[t] for t in targets] == pytest.approx(alone, abs=0.1)


@pytest.mark.parametrize("batching", [True, False], ids=["batched", "serial"])
async def test_prompt_longer_than_the_context_window_is_rejected(batching) -> None:
    async with LlamaCppModel(n_ctx=64, batching=batching) as model:
        with pytest.raises(dg.RequestRejected, match="exceed the context window of 64 tokens"):
            await model.logprob(dg.LogprobRequest("word " * 200, " end"))


async def test_serial_a_target_longer_than_the_remembered_rows_is_scored_exactly(
    extra_buffers,
) -> None:
    from dlgraph_llamacpp.evaluator import MAX_ROWS

    long_target = " and then" * (MAX_ROWS // 2 + 10)
    async with LlamaCppModel(n_ctx=512, batching=False, extra_buffers=extra_buffers) as model:
        assert len(model.tokenize(long_target, add_bos=False)) > MAX_ROWS
        value = await model.logprob(dg.LogprobRequest(CONTEXT, long_target))
        again = await model.logprob(dg.LogprobRequest(CONTEXT, long_target))
    reference = reference_logprob(CONTEXT, long_target, extra_buffers=extra_buffers)
    assert value == pytest.approx(reference, abs=1e-2)
    assert again == pytest.approx(value, abs=0.05)  # partly re-decoded: another batch shape


def test_the_context_window_is_stated_from_n_ctx_without_loading_the_model() -> None:
    assert dg.connect("llamacpp", n_ctx=300).capabilities.context_window == 300
    assert LlamaCppModel(parallel=4).capabilities.context_window == 2048
    assert LlamaCppModel(parallel=16, batching=False).capabilities.context_window == 4096


REVIEWS = [
    ("The staff were friendly, the room was spotless and quiet, breakfast was generous and "
     "fresh every morning, and the view over the harbour at sunset was worth the trip alone.",
     "positive"),
    ("The room smelled of smoke, the shower ran cold for three days, nobody at the desk would "
     "answer the phone, and the noise from the street kept us awake until four each night.",
     "negative"),
    ("We loved the quiet garden, the helpful concierge who booked every tour for us, the soft "
     "beds and the short walk to the old town; we are already planning to come back in spring.",
     "positive"),
    ("Our booking was lost, the replacement room faced a car park, the air conditioning rattled "
     "all night, and the bill added charges we never agreed to; we will not stay here again.",
     "negative"),
]  # fmt: skip


@pytest.mark.timeout(600)
async def test_a_candidate_whose_demonstrations_would_overflow_the_context_is_left_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The model's context (n_ctx) holds a review with one demonstration, not with three: the
    trainer leaves the three-demonstration candidates out and the step completes; sent, such
    a candidate would be refused. Would fail if the backend stated no context window."""
    examples = [dg.Example(text, label) for text, label in REVIEWS]
    net = dg.Network()
    net.add_node(
        "answer", prompt="Is the review positive or negative?", classes=["positive", "negative"]
    )
    net.add_edge(dg.INPUT, "answer")
    three = dg.Parameter(
        net.node("answer").prompt,
        tuple(dg.Demonstration(f"Input: {e.input}", e.target) for e in examples[1:]),
    )
    options = dg.TrainerOptions(
        num_prompt_samples=1,
        max_demonstrations=3,
        num_demonstration_samples=2,
        memory_size=0,
        proposal_max_tokens=24,
    )
    small = dg.Engine(dg.connect("llamacpp", n_ctx=160), cache=False)
    big = dg.Engine(dg.connect("llamacpp", parallel=4), cache=False)
    caplog.set_level(logging.INFO, logger="dlgraph.train.trainer")
    async with small, big:
        assert small.backend.capabilities.context_window == 160
        overflowing = net.render("answer", {dg.INPUT: examples[0].input}, three)
        with pytest.raises(dg.RequestRejected, match="exceed the context window of 160 tokens"):
            await small.logprob(overflowing, " positive")
        trainer = dg.VariationalTrainer(net, small, options, backward=big)
        result = await trainer.fit(examples, examples[:2], steps=1, batch_size=4)
        assert result.stopped == "steps" and len(result.history) == 1
        assert "a candidate with 3 demonstrations exceeds the context window" in caplog.text
        assert len(result.network.node("answer").demonstrations) < 3
        caplog.clear()
        one = attrs.evolve(options, max_demonstrations=1)  # one fits: nothing is left out
        await dg.VariationalTrainer(net, small, one, backward=big).fit(examples, examples[:2], 1, 4)
        assert "exceeds the context window" not in caplog.text
