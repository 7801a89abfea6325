"""The embedded backend's log-probability speed against llama.cpp's own evaluation.

    python bench/embedded.py [--echo-baseline]

For a 134-token prompt: dlgraph's `logprob` (logits read at target positions only) next to
`Llama.eval` of the same tokens (llama.cpp's own speed, no logits read), both from a cold KV
cache; then scoring 2 class verbalizers on 20 contexts and 8 candidate prompts on one
input, with and without prefix reuse. `--echo-baseline` also times
`create_completion(echo=True, logprobs=1)` with `logits_all=True` (about a minute).
"""

from __future__ import annotations

import argparse
import statistics
import time

import anyio
from dlgraph_llamacpp import LlamaCppModel, default_model_path

import dlgraph as dg

SENTENCE = "Always face forward. Take 3 steps left. Take 2 steps right. Take 1 step left."


def prompt_of(tokens: int, model: LlamaCppModel) -> str:
    text = "Decide whether you return to the starting point.\n\nInput:"
    while len(model.tokenize(text, add_bos=True)) < tokens - 8:
        text += " " + SENTENCE
    return text + "\nAnswer:"


def median_s(function, repeats: int = 7) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--echo-baseline", action="store_true")
    args = parser.parse_args()
    async with LlamaCppModel(n_ctx=2048) as model:
        llm = model.evaluator.llm
        context = prompt_of(134, model)
        context_tokens = model.tokenize(context, add_bos=True)
        target_tokens = model.tokenize(" Yes", add_bos=False)
        total = len(context_tokens) + len(target_tokens)

        def ours() -> None:
            llm.reset()
            model.evaluator.forget()
            model.evaluator.target_logprob(context_tokens, target_tokens)

        def llama_eval() -> None:
            llm.reset()
            llm.eval(context_tokens + target_tokens)

        ours_s, eval_s = median_s(ours), median_s(llama_eval)
        print(
            f"{total}-token logprob, cold cache: dlgraph {ours_s * 1000:.0f} ms, llama.cpp eval {eval_s * 1000:.0f} ms "
            f"-> {eval_s / ours_s:.2f} of llama.cpp's speed"
        )

        contexts = [prompt_of(60 + i, model) + f" case {i}" for i in range(20)]

        async def classify_all(reuse: bool) -> float:
            started = time.perf_counter()
            for text in contexts:
                for word in (" yes", " no"):
                    if not reuse:
                        llm.reset()
                        model.evaluator.forget()
                    await model.logprob(dg.LogprobRequest(text, word))
            return time.perf_counter() - started

        without, with_reuse = await classify_all(False), await classify_all(True)
        print(
            f"2 verbalizers x 20 contexts: {without:.2f} s evaluating each from scratch, {with_reuse:.2f} s with reuse "
            f"({without / with_reuse:.1f}x)"
        )

        prompts = [
            f"Instruction {i}: decide whether the steps lead back to the start." for i in range(8)
        ]
        started = time.perf_counter()
        for prompt in prompts:
            await model.logprob(
                dg.LogprobRequest(f"{prompt}\n\nInput: {SENTENCE * 4}\nAnswer:", " yes")
            )
        print(
            f"8 candidate prompts on one input (no shared prefix beyond the first tokens): {time.perf_counter() - started:.2f} s"
        )

    if args.echo_baseline:
        import llama_cpp

        slow = llama_cpp.Llama(
            model_path=str(default_model_path()), n_ctx=2048, logits_all=True, verbose=False
        )
        started = time.perf_counter()
        slow.create_completion(context + " Yes", max_tokens=1, echo=True, logprobs=1)
        echo_s = time.perf_counter() - started
        print(
            f"create_completion(echo=True, logprobs=1): {echo_s:.1f} s ({echo_s / ours_s:.0f}x slower than dlgraph)"
        )


if __name__ == "__main__":
    anyio.run(main)
