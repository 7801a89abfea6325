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


class Refusing(dg.Backend):
    """Answers batches of up to 64 prompts, refusing any request that carries a prompt with
    "bad" in it, or failing it (`failing`) with an error that is not a refusal."""

    capabilities = dg.Capabilities(max_batch=64, exact_logprobs=False, top_logprobs=2)

    def __init__(self, failing: Exception | None = None) -> None:
        self.sizes: list[int] = []
        self.failing = failing

    def _check(self, prompts: list[str]) -> None:
        self.sizes.append(len(prompts))
        if self.failing is not None:
            raise self.failing
        if any("bad" in prompt for prompt in prompts):
            raise dg.RequestRejected("context too long")

    async def generate(self, request: dg.GenerateRequest) -> str:
        self._check([request.prompt])
        return f"answer to {request.prompt}"

    async def generate_batch(self, requests: list[dg.GenerateRequest]) -> list[str]:
        self._check([request.prompt for request in requests])
        return [f"answer to {request.prompt}" for request in requests]

    async def logprob(self, request: dg.LogprobRequest) -> float:
        return -1.0

    async def top_logprobs(self, request: dg.TopLogprobsRequest) -> dict[str, float]:
        self.sizes.append(1)
        return {" yes": -0.5, " no": -1.5} if "hot" in request.context else {" no": -0.1}


async def generate_together(engine: dg.Engine, prompts: list[str]) -> list[object]:
    """Each prompt's answer, or the error it raised, sent at once (so coalesced)."""
    outcomes: list[object] = [None] * len(prompts)

    async def one(index: int) -> None:
        try:
            outcomes[index] = await engine.generate(prompts[index])
        except Exception as error:
            outcomes[index] = error

    async with anyio.create_task_group() as group:
        for index in range(len(prompts)):
            group.start_soon(one, index)
    return outcomes


async def test_a_refused_batch_of_two_is_split_and_the_good_prompt_still_answered() -> None:
    backend = Refusing()
    async with dg.Engine(backend, coalesce_ms=50) as engine:
        good, bad = await generate_together(engine, ["good", "bad"])
    assert good == "answer to good"
    assert isinstance(bad, dg.RequestRejected)
    assert sorted(backend.sizes) == [1, 1, 2]  # the pair, then each prompt alone


async def test_a_refused_batch_of_four_is_halved_until_the_refused_prompt_is_alone() -> None:
    backend = Refusing()
    async with dg.Engine(backend, coalesce_ms=50) as engine:
        outcomes = await generate_together(engine, ["p0", "p1", "p2", "bad"])
    assert outcomes[:3] == ["answer to p0", "answer to p1", "answer to p2"]
    assert isinstance(outcomes[3], dg.RequestRejected)
    assert sorted(backend.sizes) == [1, 1, 2, 2, 4]


async def test_a_batch_that_fails_hands_the_error_to_every_caller_in_it() -> None:
    backend = Refusing(failing=ValueError("the backend broke"))
    async with dg.Engine(backend, coalesce_ms=50) as engine:
        outcomes = await generate_together(engine, ["p0", "p1", "p2"])
    assert [str(outcome) for outcome in outcomes] == ["the backend broke"] * 3
    assert all(isinstance(outcome, ValueError) for outcome in outcomes)
    assert backend.sizes == [3]


async def test_a_half_that_fails_otherwise_fails_alone_and_the_other_half_is_answered() -> None:
    class RefusesPairsFailsBad(Refusing):
        def _check(self, prompts: list[str]) -> None:
            self.sizes.append(len(prompts))
            if len(prompts) > 1:
                raise dg.RequestRejected("too many prompts")
            if "bad" in prompts[0]:
                raise dg.BackendUnavailable("endpoint gone")

    backend = RefusesPairsFailsBad()
    async with dg.Engine(backend, coalesce_ms=50) as engine:
        good, bad = await generate_together(engine, ["good", "bad"])
    assert good == "answer to good"
    assert isinstance(bad, dg.BackendUnavailable)


async def test_first_token_alternatives_are_asked_one_context_at_a_time_even_when_coalescing() -> (
    None
):
    backend = Refusing()
    async with dg.Engine(backend, coalesce_ms=50) as engine:
        async with anyio.create_task_group() as group:
            results: dict[str, list[float]] = {}

            async def classify(context: str) -> None:
                results[context] = await engine.classify(context, ["yes", "no"])

            group.start_soon(classify, "Is it hot?")
            group.start_soon(classify, "Is it cold?")
    assert results["Is it hot?"][0] > 0.5 > results["Is it cold?"][0]
    assert backend.sizes == [1, 1]
