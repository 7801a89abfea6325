"""How an engine under a token limit groups calls into multi-prompt requests: a batch holds at
most a quarter of a second's burst of tokens, so that one batch never empties the bucket."""

from __future__ import annotations

import anyio

import dlgraph as dg


class Batching(dg.Backend):
    """Answers batches of up to 64 prompts, and records their sizes."""

    capabilities = dg.Capabilities(max_batch=64)

    def __init__(self) -> None:
        self.sizes: list[int] = []

    async def generate(self, request: dg.GenerateRequest) -> str:
        self.sizes.append(1)
        return "ok"

    async def logprob(self, request: dg.LogprobRequest) -> float:
        return -1.0

    async def generate_batch(self, requests: list[dg.GenerateRequest]) -> list[str]:
        self.sizes.append(len(requests))
        return ["ok"] * len(requests)


async def test_a_batch_under_a_token_limit_holds_a_quarter_of_the_burst_in_tokens() -> None:
    backend = Batching()
    # 60,000 tokens a minute with a one-second burst: 1,000 tokens, batches of 250 at most
    async with dg.Engine(backend, tpm=60_000, coalesce_ms=500) as engine:
        async with anyio.create_task_group() as group:
            for i in range(9):  # each 10 tokens of prompt and 90 to write: 100
                group.start_soon(lambda i=i: engine.generate(f"{i}" * 40, max_tokens=90))
    assert backend.sizes == [3, 3, 3]
