"""The child process of `guard.py`: ``python -m dlgraph_llamacpp.probe MODEL --extra-buffers on``.

Loads the model with extra buffer types on or off and runs it as the backend will, through
both paths: a target scored after a prompt (a prompt batch), two sequences generated together
(one-token decodes). Exits 0 when it survives; a CPU that cannot run the kernels kills it by a
signal, which the parent reads.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import anyio

import dlgraph as dg
from dlgraph_llamacpp.model import LlamaCppModel

PROMPT = (
    "Question: the quick brown fox jumps over the lazy dog while the river flows to the sea. "
    "Which animal jumps?\nAnswer:"
)


async def exercise(model_path: str, extra_buffers: bool, threads: int) -> None:
    for batching in (True, False):
        backend = LlamaCppModel(
            model_path=model_path,
            extra_buffers=extra_buffers,
            batching=batching,
            n_threads=threads,
            n_ctx=512,
            parallel=2,
        )
        async with backend as model:
            await model.logprob(dg.LogprobRequest(PROMPT, " The fox"))
            async with anyio.create_task_group() as task_group:
                for seed in (0, 1):
                    request = dg.GenerateRequest(PROMPT, max_tokens=4, temperature=0.7, seed=seed)
                    task_group.start_soon(model.generate, request)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dlgraph_llamacpp.probe")
    parser.add_argument("model")
    parser.add_argument("--extra-buffers", choices=("on", "off"), required=True)
    parser.add_argument("--threads", type=int, required=True)
    args = parser.parse_args(argv)
    anyio.run(exercise, args.model, args.extra_buffers == "on", args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
