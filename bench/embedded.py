"""The embedded model (Gemma 3 270M) batched and serial, side by side in one run.

    python bench/embedded.py [--echo-baseline] [--only-extra-buffers]

1. Generated tokens/s at 1, 4, 8 and 16 concurrent calls through the engine: the batched
   backend, the serial path (`batching=False`), and a raw llama.cpp batched decode loop (the
   limit of this machine for this model), with the largest log-probability difference between
   batched and serial.
2. One DLN-1 scoring step's log-probabilities (8 candidate prompts × 20 inputs × 2 verbalizers).
3. One training step of the main job's settings, DLN-1 and DLN-2, serial vs batched.
4. Peak RSS at 4 and 16 parallel sequences (each in its own process).
5. The 16 generations while a second process keeps one core busy.
6. llama.cpp's extra buffer types (AMX, repacked weights) on and off: prompt evaluation,
   generation and the DLN-1 scoring step, where this CPU allows them on (`--only-extra-buffers`
   runs this part alone).
7. (--echo-baseline) `create_completion(echo=True, logprobs=1)` for a 134-token prompt.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import subprocess
import sys
import time

import anyio
import numpy as np
from dlgraph_llamacpp import LlamaCppModel, default_model_path
from dlgraph_llamacpp.guard import machine_verdict
from dlgraph_llamacpp.native import open_llama

import dlgraph as dg
from dlgraph._tasks import map_concurrently
from dlgraph.data import generated_task

TOKENS = 32
TOPICS = ["apples", "rivers", "stones", "clouds", "gardens", "tables", "music", "tigers"]


def prompts(count: int) -> list[str]:
    return [
        f"Write a short note about {TOPICS[i % len(TOPICS)]} number {i}. Note {i}:"
        for i in range(count)
    ]


async def engine_tokens_per_s(model: LlamaCppModel, count: int) -> float:
    async with dg.Engine(model, cache=False) as engine:
        await engine.generate("Warm up:", max_tokens=2)
        started = time.perf_counter()
        texts = await map_concurrently(
            lambda p: engine.generate(p, max_tokens=TOKENS), prompts(count)
        )
        elapsed = time.perf_counter() - started
        generated = sum(len(model.tokenize(t, add_bos=False)) for t in texts)
    return generated / elapsed


def raw_tokens_per_s(count: int) -> float:
    """Prefill every prompt in one batch, then one decode per token for all; greedy."""
    import logging

    import llama_cpp as native

    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    native.llama_backend_init()
    model_params = native.llama_model_default_params()
    model_params.use_extra_bufts = machine_verdict().enabled
    model = native.llama_model_load_from_file(str(default_model_path()).encode(), model_params)
    vocab = native.llama_model_get_vocab(model)
    n_vocab = native.llama_vocab_n_tokens(vocab)
    params = native.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_ubatch, params.n_seq_max = 8192, 512, 512, 32
    params.n_threads = params.n_threads_batch = len(os.sched_getaffinity(0))
    params.kv_unified, params.swa_full = True, True
    params.flash_attn_type = native.LLAMA_FLASH_ATTN_TYPE_DISABLED
    context = native.llama_init_from_model(model, params)
    batch = native.llama_batch_init(512, 0, 1)

    def put(entries: list[tuple[int, int, int, bool]]) -> None:
        for i, (token, position, sequence, logits) in enumerate(entries):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, position, 1
            batch.seq_id[i][0], batch.logits[i] = sequence, logits
        batch.n_tokens = len(entries)
        assert native.llama_decode(context, batch) == 0

    def tokens(text: str) -> list[int]:
        data = text.encode()
        buffer = (native.llama_token * (len(data) + 8))()
        return list(
            buffer[
                : native.llama_tokenize(vocab, data, len(data), buffer, len(buffer), True, False)
            ]
        )

    sequences = [tokens(p) for p in prompts(count)]
    started = time.perf_counter()
    entries = [
        (t, p, s, p == len(seq) - 1) for s, seq in enumerate(sequences) for p, t in enumerate(seq)
    ]
    put(entries)
    last = {s: i for i, (_, _, s, wanted) in enumerate(entries) if wanted}
    for _ in range(TOKENS):
        step = []
        for s in range(count):
            pointer = native.llama_get_logits_ith(context, last[s])
            row = np.ctypeslib.as_array(
                ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)), shape=(n_vocab,)
            )
            token = int(np.argmax(row))
            last[s] = len(step)
            step.append((token, len(sequences[s]), s, True))
            sequences[s].append(token)
        put(step)
    elapsed = time.perf_counter() - started
    native.llama_batch_free(batch)
    native.llama_free(context)
    native.llama_model_free(model)
    return count * TOKENS / elapsed


async def logprob_difference() -> float:
    contexts = [f"Question {i}: is {i * 7} divisible by three? Answer:" for i in range(16)]

    async def scores(model: LlamaCppModel) -> list[float]:
        async with model:
            return await map_concurrently(
                lambda c: model.logprob(dg.LogprobRequest(c, " yes")), contexts
            )

    batched = await scores(LlamaCppModel())
    serial = await scores(LlamaCppModel(batching=False))
    return float(np.max(np.abs(np.array(batched) - np.array(serial))))


async def scoring_step_s(model: LlamaCppModel) -> float:
    """8 candidate prompts × 20 navigation inputs × 2 verbalizers, as one ELBO step asks."""
    task = generated_task("navigation", train=20, dev=1, test=1)
    candidates = [
        f"Candidate {i}: decide whether the steps lead back to the start." for i in range(8)
    ]
    contexts = [f"{c}\n\nInput: {e.input}\nAnswer:" for c in candidates for e in task.train]
    async with dg.Engine(model, cache=False) as engine:
        started = time.perf_counter()
        await map_concurrently(lambda c: engine.classify(c, ["yes|Yes", "no|No"]), contexts)
        return time.perf_counter() - started


async def training_step_s(model: LlamaCppModel, kind: str) -> float:
    """One step of the main job's settings (examples/navigate.toml), without evaluation."""
    task = generated_task("navigation", train=100, dev=4, test=1)
    net = dg.Network()
    if kind == "dln2":
        net.add_node(
            "reason", prompt="Think about the question step by step.", max_tokens=48, stop=["\n\n"]
        )
        net.add_edge(dg.INPUT, "reason")
    net.add_node("answer", prompt=task.instruction, classes=task.classes)
    if kind == "dln2":
        net.add_edge("reason", "answer")
    net.add_edge(dg.INPUT, "answer")
    async with dg.Engine(model) as engine:  # the engine's defaults, as in the main job
        trainer = dg.VariationalTrainer(
            net, engine, num_prompt_samples=4, num_hidden_samples=3, proposal_max_tokens=60
        )
        started = time.perf_counter()
        await trainer.step(task.train[:10])
        return time.perf_counter() - started


def child(parallel: int) -> None:
    """Run 16 generations in this process with `parallel` sequences; print peak RSS in MB."""

    async def run() -> None:
        model = LlamaCppModel(parallel=parallel)
        await engine_tokens_per_s(model, 16)

    anyio.run(run)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def peak_rss_mb(parallel: int) -> float:
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(parallel)],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


async def timed_with(model: LlamaCppModel) -> float:
    started = time.perf_counter()
    await engine_tokens_per_s(model, 16)
    return time.perf_counter() - started


async def contended_s() -> tuple[float, float, float]:
    """16 generations alone, then beside a process that keeps one core busy: with the thread
    count adapting, and with it fixed at every core."""
    model = LlamaCppModel()

    async def timed() -> float:
        return await timed_with(model)

    alone = await timed()
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(1.5)
        busy = await timed()
        fixed = await timed_with(LlamaCppModel(n_threads=len(os.sched_getaffinity(0))))
    finally:
        hog.kill()
        hog.wait()
    return alone, busy, fixed


async def prompt_tokens_per_s(model: LlamaCppModel) -> float:
    """Distinct 150-token contexts scored one after another: prompt evaluation alone."""
    filler = " ".join(TOPICS * 12)
    contexts = [f"Note {i}: {filler}\nQuestion {i}: is this about music? Answer:" for i in range(8)]
    async with model:
        await model.logprob(dg.LogprobRequest("Warm up:", " yes"))
        started = time.perf_counter()
        for context in contexts:
            await model.logprob(dg.LogprobRequest(context, " yes"))
        elapsed = time.perf_counter() - started
        evaluated = sum(len(model.tokenize(c, add_bos=True)) for c in contexts)
    return evaluated / elapsed


async def extra_buffers_table(rounds: int = 3) -> None:
    """Each figure the median of `rounds`, the settings alternating within each round so that
    what else the machine does weighs on both alike."""
    verdict = machine_verdict()
    print(
        f"\nextra buffer types on this CPU: {'on' if verdict.enabled else 'off'} ({verdict.reason})"
    )
    settings = [False, True] if verdict.enabled else [False]
    figures: dict[bool, list[list[float]]] = {setting: [] for setting in settings}
    for _ in range(rounds):
        for setting in settings:
            figures[setting].append(
                [
                    await prompt_tokens_per_s(
                        LlamaCppModel(extra_buffers=setting, deterministic=True)
                    ),
                    await engine_tokens_per_s(LlamaCppModel(extra_buffers=setting), 1),
                    await engine_tokens_per_s(LlamaCppModel(extra_buffers=setting), 16),
                    await scoring_step_s(LlamaCppModel(extra_buffers=setting)),
                ]
            )
    print(
        "| extra buffers | prompt eval tok/s | 1 generation tok/s | 16 generations tok/s | DLN-1 scoring step s |"
    )
    print("|---|---|---|---|---|")
    for setting, rows in figures.items():
        prompt, one, many, step = np.median(np.array(rows), axis=0)
        print(
            f"| {'on' if setting else 'off'} | {prompt:.0f} | {one:.0f} | {many:.0f} | {step:.1f} |"
        )


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--echo-baseline", action="store_true")
    parser.add_argument("--only-extra-buffers", action="store_true")
    args = parser.parse_args()
    if args.only_extra_buffers:
        await extra_buffers_table()
        return
    print(
        f"Gemma 3 270M, {len(os.sched_getaffinity(0))} cores, {TOKENS} generated tokens per call\n"
    )
    print(
        "| concurrent calls | raw batched decode tok/s | dlgraph batched tok/s | dlgraph serial tok/s | batched / raw | batched / serial |"
    )
    print("|---|---|---|---|---|---|")
    for count in (1, 4, 8, 16):
        raw = raw_tokens_per_s(count)
        batched = await engine_tokens_per_s(LlamaCppModel(), count)
        serial = await engine_tokens_per_s(LlamaCppModel(batching=False), count)
        print(
            f"| {count} | {raw:.0f} | {batched:.0f} | {serial:.0f} | {batched / raw:.2f} | {batched / serial:.2f} |",
            flush=True,
        )
    print(
        f"\nlargest |batched - serial| log-probability over 16 contexts: {await logprob_difference():.4f} nats"
    )
    serial_s = await scoring_step_s(LlamaCppModel(batching=False))
    batched_s = await scoring_step_s(LlamaCppModel())
    print(
        f"DLN-1 scoring step (8 prompts x 20 inputs x 2 verbalizers): serial {serial_s:.1f} s, batched {batched_s:.1f} s ({serial_s / batched_s:.2f}x)"
    )
    for kind in ("dln1", "dln2"):
        serial_s = await training_step_s(LlamaCppModel(batching=False), kind)
        batched_s = await training_step_s(LlamaCppModel(), kind)
        print(
            f"{kind.upper()} training step (main job settings): serial {serial_s:.1f} s, batched {batched_s:.1f} s ({serial_s / batched_s:.2f}x)",
            flush=True,
        )
    print(
        f"peak RSS, 16 generations: parallel=4 {peak_rss_mb(4):.0f} MB, parallel=16 {peak_rss_mb(16):.0f} MB"
    )
    alone, busy, fixed = await contended_s()
    print(
        f"16 generations: alone {alone:.1f} s; with one core taken by another process {busy:.1f} s "
        f"({busy / alone:.2f}x), or {fixed:.1f} s with threads fixed at every core ({fixed / alone:.2f}x)"
    )
    await extra_buffers_table()
    if args.echo_baseline:
        slow = open_llama(
            default_model_path(),
            extra_buffers=machine_verdict().enabled,
            n_ctx=2048,
            logits_all=True,
        )
        text = (
            "Decide whether you return to the starting point.\n\nInput:"
            + " Take 3 steps left." * 30
            + "\nAnswer: Yes"
        )
        started = time.perf_counter()
        slow.create_completion(text, max_tokens=1, echo=True, logprobs=1)
        print(
            f"create_completion(echo=True, logprobs=1), ~134 tokens: {time.perf_counter() - started:.1f} s"
        )
    print(json.dumps({"done": True}))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(int(sys.argv[2]))
    else:
        anyio.run(main)
