"""Continuous batching against the real Gemma model, checked against a raw batched decode loop
written here with llama.cpp's C API (the reference shares no code with the scheduler)."""

from __future__ import annotations

import ctypes

import anyio
import numpy as np
import pytest
from dlgraph_llamacpp import LlamaCppModel, default_model_path

import dlgraph as dg
from dlgraph._tasks import map_concurrently

pytestmark = pytest.mark.slow  # the real model

PARALLEL = 8
N_CTX = 2048
WORDS = ["apple", "river", "stone", "cloud", "green", "table", "music", "tiger"]


def word_prompt(word: str) -> str:
    return f"The word is {word}. The word is {word}. The word is {word}. The word is"


class RawDecoder:
    """A plain llama.cpp decode loop: the same context settings as the backend, all prompts
    prefilled in one batch in the order given, then every running sequence advanced by one
    token per decode; sampling as the sampling module documents it."""

    def __init__(self, extra_buffers: bool) -> None:
        import llama_cpp as native

        self.native = native
        native.llama_backend_init()
        model_params = native.llama_model_default_params()
        model_params.use_extra_bufts = extra_buffers
        self.model = native.llama_model_load_from_file(
            str(default_model_path()).encode(), model_params
        )
        self.vocab = native.llama_model_get_vocab(self.model)
        self.n_vocab = native.llama_vocab_n_tokens(self.vocab)
        params = native.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_ubatch = N_CTX, 512, 512
        params.n_seq_max, params.n_outputs_max = 2 * PARALLEL, max(2 * PARALLEL, 32)
        params.n_threads = params.n_threads_batch = 2
        params.kv_unified, params.swa_full = True, True
        params.flash_attn_type = native.LLAMA_FLASH_ATTN_TYPE_DISABLED
        self.context = native.llama_init_from_model(self.model, params)
        self.batch = native.llama_batch_init(512, 0, 1)

    def close(self) -> None:
        self.native.llama_batch_free(self.batch)
        self.native.llama_free(self.context)
        self.native.llama_model_free(self.model)

    def tokens(self, text: str, bos: bool) -> list[int]:
        data = text.encode()
        buffer = (self.native.llama_token * (len(data) + 8))()
        count = self.native.llama_tokenize(
            self.vocab, data, len(data), buffer, len(buffer), bos, False
        )
        return list(buffer[:count])

    def reset(self) -> None:
        self.native.llama_memory_clear(self.native.llama_get_memory(self.context), True)

    def decode(self, entries: list[tuple[int, int, int, bool]]) -> None:
        for i, (token, position, sequence, logits) in enumerate(entries):
            self.batch.token[i], self.batch.pos[i] = token, position
            self.batch.n_seq_id[i], self.batch.seq_id[i][0] = 1, sequence
            self.batch.logits[i] = logits
        self.batch.n_tokens = len(entries)
        assert self.native.llama_decode(self.context, self.batch) == 0

    def row(self, index: int) -> np.ndarray:
        pointer = self.native.llama_get_logits_ith(self.context, index)
        return np.ctypeslib.as_array(
            ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)), shape=(self.n_vocab,)
        ).copy()

    @staticmethod
    def draw(row: np.ndarray, temperature: float, generator: np.random.Generator) -> int:
        if temperature == 0:
            return int(np.argmax(row))
        top = row.max()
        allowed = np.flatnonzero(row >= top - 30 * temperature)
        cumulative = np.cumsum(np.exp((row[allowed].astype(np.float64) - top) / temperature))
        pick = np.searchsorted(cumulative, generator.random() * cumulative[-1], side="right")
        return int(allowed[min(int(pick), len(allowed) - 1)])

    def generate(
        self, prompts: list[str], settings: list[tuple[float, int]], steps: int
    ) -> list[str]:
        self.reset()
        sequences = [self.tokens(p, True) for p in prompts]
        generators = [np.random.Generator(np.random.PCG64(seed)) for _, seed in settings]
        entries, last = [], {}
        for s, tokens in enumerate(sequences):
            for position, token in enumerate(tokens):
                if position == len(tokens) - 1:
                    last[s] = len(entries)
                entries.append((token, position, s, position == len(tokens) - 1))
        self.decode(entries)
        texts = [b""] * len(prompts)
        running = list(range(len(prompts)))
        for _ in range(steps):
            drawn = {
                s: self.draw(self.row(last[s]), settings[s][0], generators[s]) for s in running
            }
            entries = []
            for s in list(running):
                token = drawn[s]
                if self.native.llama_vocab_is_eog(self.vocab, token):
                    running.remove(s)
                    continue
                buffer = ctypes.create_string_buffer(64)
                count = self.native.llama_token_to_piece(self.vocab, token, buffer, 64, 0, False)
                texts[s] += buffer.raw[:count]
                last[s] = len(entries)
                entries.append((token, len(sequences[s]), s, True))
                sequences[s].append(token)
            if len(entries) and _ < steps - 1:
                self.decode(entries)
        return [t.decode("utf-8", errors="ignore") for t in texts]

    def logprobs(self, pairs: list[tuple[str, str]]) -> list[float]:
        self.reset()
        entries, wanted = [], []
        for s, (context, target) in enumerate(pairs):
            c, t = self.tokens(context, True), self.tokens(target, False)
            tokens = c + t
            for position in range(len(tokens) - 1):
                scored = position >= len(c) - 1
                if scored:
                    wanted.append((len(entries), s, tokens[position + 1]))
                entries.append((tokens[position], position, s, scored))
        self.decode(entries)
        totals = [0.0] * len(pairs)
        for index, s, token in wanted:
            row = self.row(index).astype(np.float64)
            totals[s] += row[token] - row.max() - np.log(np.exp(row - row.max()).sum())
        return totals


@pytest.fixture(scope="module")
def raw(extra_buffers: bool) -> RawDecoder:
    decoder = RawDecoder(extra_buffers)
    yield decoder
    decoder.close()


def batched(**options) -> LlamaCppModel:
    return LlamaCppModel(n_ctx=N_CTX, parallel=PARALLEL, n_threads=2, **options)


async def test_batched_generation_equals_a_raw_batched_decode_of_the_same_sequences(
    raw, extra_buffers
) -> None:
    prompts = [word_prompt(w) for w in WORDS[:6]]
    settings = [(0.0, 0), (0.0, 0), (0.0, 0), (0.9, 1), (0.9, 2), (1.2, 3)]
    expected = raw.generate(prompts, settings, steps=12)
    async with batched(extra_buffers=extra_buffers) as model:
        requests = [
            dg.GenerateRequest(p, max_tokens=12, temperature=t, seed=s)
            for p, (t, s) in zip(prompts, settings, strict=True)
        ]
        texts = await map_concurrently(model.generate, requests)
    assert texts == expected


async def test_batched_logprobs_equal_a_raw_batched_decode_of_the_same_sequences(
    raw, extra_buffers
) -> None:
    pairs = [
        ("The capital of France is", " Paris, a city of light"),
        ("Two plus two makes", " four, as everybody knows"),
        ("My favourite colour is", " a deep shade of blue"),
    ]
    expected = raw.logprobs(pairs)
    async with batched(extra_buffers=extra_buffers) as model:
        values = await map_concurrently(lambda pair: model.logprob(dg.LogprobRequest(*pair)), pairs)
    assert values == pytest.approx(expected, abs=1e-4)


async def test_each_continuation_follows_its_own_prompt_never_a_neighbours() -> None:
    async with batched() as model:
        texts = await map_concurrently(
            lambda w: model.generate(dg.GenerateRequest(word_prompt(w), max_tokens=6)), WORDS
        )
    for word, text in zip(WORDS, texts, strict=True):
        assert word in text and not any(other in text for other in WORDS if other != word)


async def test_stop_strings_and_max_tokens_hold_for_each_sequence_alone() -> None:
    async with batched() as model:
        requests = [
            dg.GenerateRequest(word_prompt("apple"), max_tokens=20, stop=["."]),
            dg.GenerateRequest(word_prompt("river"), max_tokens=3),
            dg.GenerateRequest(word_prompt("stone"), max_tokens=20, stop=["is"]),
            dg.GenerateRequest(word_prompt("cloud"), max_tokens=20),
        ]
        texts = await map_concurrently(model.generate, requests)
        lengths = [len(model.tokenize(t, add_bos=False)) for t in texts]
    assert texts[0] == " apple" and "." not in texts[0]
    assert lengths[1] <= 3
    assert texts[2].startswith(" stone") and "is" not in texts[2]
    assert lengths[3] > 3 and texts[3].count("cloud") >= 2


async def test_a_seeded_sample_does_not_depend_on_its_companions() -> None:
    request = dg.GenerateRequest(word_prompt("music"), max_tokens=10, temperature=1.0, seed=7)
    async with batched(deterministic=True) as model:
        alone = await model.generate(request)
        others = [
            dg.GenerateRequest(word_prompt(w), max_tokens=10, temperature=1.0, seed=7)
            for w in WORDS[:5]
        ]
        together = await map_concurrently(model.generate, [*others, request])
    assert together[-1] == alone


async def test_deterministic_mode_gives_the_same_numbers_whatever_the_order_of_calls() -> None:
    pairs = [(f"Question {i}: is {i} even? Answer:", " yes") for i in range(6)]
    async with batched(deterministic=True) as model:
        forward = await map_concurrently(lambda p: model.logprob(dg.LogprobRequest(*p)), pairs)
    async with batched(deterministic=True) as model:
        backward = await map_concurrently(
            lambda p: model.logprob(dg.LogprobRequest(*p)), pairs[::-1]
        )
    assert forward == backward[::-1]


async def test_an_overlong_request_fails_alone_while_its_companions_finish() -> None:
    async with LlamaCppModel(n_ctx=128, parallel=4, n_threads=2) as model:
        outcomes: list[object] = [None] * 4

        async def ask(index: int) -> None:
            prompt = "word " * 200 if index == 2 else word_prompt(WORDS[index])
            try:
                outcomes[index] = await model.generate(dg.GenerateRequest(prompt, max_tokens=4))
            except dg.RequestRejected as error:
                outcomes[index] = error

        async with anyio.create_task_group() as group:
            for index in range(4):
                group.start_soon(ask, index)
    assert isinstance(outcomes[2], dg.RequestRejected)
    assert "exceed the context window of 128 tokens" in str(outcomes[2])
    assert all(WORDS[i] in str(outcomes[i]) for i in (0, 1, 3))


async def test_a_cancelled_caller_frees_its_sequence_and_leaves_the_others_alone() -> None:
    async with batched() as model:
        results: dict[str, str] = {}
        doomed = anyio.CancelScope()

        async def ask(word: str, scope: anyio.CancelScope | None = None) -> None:
            request = dg.GenerateRequest(word_prompt(word), max_tokens=24)
            if scope is None:
                results[word] = await model.generate(request)
            else:
                with scope:
                    results[word] = await model.generate(request)

        async with anyio.create_task_group() as group:
            group.start_soon(ask, "apple", doomed)
            for word in WORDS[1:4]:
                group.start_soon(ask, word)
            while model.scheduler.statistics().decodes < 3:
                await anyio.sleep(0.01)
            doomed.cancel()
            while model.scheduler.statistics().running > 3:
                await anyio.sleep(0.001)
            assert model.scheduler.statistics().running <= 3  # the slot was freed at once
    assert "apple" not in results
    assert all(word in results[word] for word in WORDS[1:4])


async def test_a_second_verbalizer_after_one_context_is_read_from_the_kept_row() -> None:
    context = "Is the sky blue? Answer:"
    async with batched() as model:
        together = await map_concurrently(
            lambda t: model.logprob(dg.LogprobRequest(context, t)), [" yes", " no"]
        )
        statistics = model.scheduler.statistics()
    assert statistics.kept_row_hits == 1 and statistics.decodes == 1
    async with LlamaCppModel(n_ctx=256, batching=False) as serial:
        alone = [await serial.logprob(dg.LogprobRequest(context, t)) for t in [" yes", " no"]]
    assert together == pytest.approx(alone, abs=1e-4)


async def test_calls_sharing_a_prompt_prefix_share_its_cells_instead_of_evaluating_it() -> None:
    instruction = "Decide whether the statement is true. Think about it carefully and answer."
    contexts = [
        f"{instruction}\n\nStatement: {n} is a prime number.\nAnswer:" for n in (2, 4, 7, 9)
    ]
    async with batched() as model:
        first = await model.logprob(dg.LogprobRequest(contexts[0], " true"))
        rest = await map_concurrently(
            lambda c: model.logprob(dg.LogprobRequest(c, " true")), contexts[1:]
        )
        shared = model.scheduler.statistics().shared_tokens
        prefix = len(model.tokenize(instruction, add_bos=True))
    assert shared >= 3 * prefix
    async with batched(deterministic=True) as model:
        alone = [await model.logprob(dg.LogprobRequest(c, " true")) for c in contexts]
    assert [first, *rest] == pytest.approx(alone, abs=0.3)  # shared cells, same answers


async def test_the_engine_sends_concurrent_calls_to_the_batched_model_together() -> None:
    model = batched()
    assert model.capabilities.max_concurrency is None  # the engine may send many at once
    async with dg.Engine(model, cache=False) as engine:
        texts = await map_concurrently(
            lambda w: engine.generate(word_prompt(w), max_tokens=8), WORDS
        )
        decodes = model.scheduler.statistics().decodes
    assert all(word in text for word, text in zip(WORDS, texts, strict=True))
    assert decodes < 2 * 8  # one prefill and about one decode per token for all eight


def test_threads_follow_the_allowed_cores_and_give_up_one_another_process_keeps_busy() -> None:
    import os
    import subprocess
    import sys
    import time

    from dlgraph_llamacpp.threads import CoreWatch, allowed_cores

    assert allowed_cores() == sorted(os.sched_getaffinity(0))
    watch = CoreWatch(interval_s=0.5)
    assert watch.update() == len(allowed_cores())
    if len(allowed_cores()) < 2:
        pytest.skip("one core: nothing to give up")
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.2)
        watch.update()
        time.sleep(0.7)
        assert watch.update() < len(allowed_cores())
    finally:
        hog.kill()
        hog.wait()


async def test_continuations_of_one_context_equal_separate_logprob_calls_on_the_real_model() -> (
    None
):
    """A class distribution in one call (`ContinuationsRequest`): the context evaluated once,
    each continuation's value what a `logprob` call of its own returns, batched or serial."""
    context = "Is this tweet positive, negative or neutral?\nTweet: my flight was cancelled again.\nAnswer:"
    texts = (" positive", " Positive", " negative", " Negative", " neutral", " not sure at all")
    request = dg.ContinuationsRequest(context, texts)
    async with batched() as model:
        assert model.capabilities.continuations >= len(texts)
        joint = await model.continuations(request)
        evaluated = model.scheduler.statistics().evaluated_tokens
        length = len(model.tokenize(context, add_bos=True))
    async with batched() as model:
        separate = [await model.logprob(dg.LogprobRequest(context, t)) for t in texts]
    async with LlamaCppModel(n_ctx=256, batching=False) as serial:
        serial_joint = await serial.continuations(request)
        alone = [await serial.logprob(dg.LogprobRequest(context, t)) for t in texts]
    assert evaluated < 2 * length  # the context once, then only the longer continuation
    assert joint == pytest.approx(separate, abs=1e-4)
    assert serial_joint == pytest.approx(alone, abs=1e-5)
    # one-token continuations read the same row either way; a longer one is decoded in
    # batches of another shape by the two paths (a difference of the paths, not of the call)
    assert joint[:5] == pytest.approx(alone[:5], abs=1e-3)
    assert len(set(joint)) == len(texts)  # each its own value, none a neighbour's


async def test_samples_of_one_prompt_evaluate_it_once_each_the_sample_of_its_seed() -> None:
    """Posterior samples in one call (`SamplesRequest`): the prompt evaluated once and its
    cells shared by every sample; each sample the one its seed draws alone (decoding alone:
    the deterministic mode), batched or serial."""
    request = dg.SamplesRequest(word_prompt("garden"), count=4, max_tokens=8, temperature=1.0)
    async with batched() as model:
        assert model.capabilities.samples >= request.count
        drawn = await model.samples(request)
        evaluated = model.scheduler.statistics().evaluated_tokens
        length = len(model.tokenize(request.prompt, add_bos=True))
    async with batched(deterministic=True) as model:
        together = await model.samples(request)
        alone = [await model.generate(each) for each in request.each()]
    async with LlamaCppModel(n_ctx=256, batching=False) as serial:
        serial_together = await serial.samples(request)
        serial_alone = [await serial.generate(each) for each in request.each()]
    assert evaluated < length + request.count * request.max_tokens + length // 2
    assert list(together) == alone and list(serial_together) == serial_alone
    assert len(drawn) == 4 and len(set(together)) > 1  # each seed its own sample
