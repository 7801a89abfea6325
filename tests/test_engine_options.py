"""What an engine's options do to the calls it sends: how long a call waits for companions to
share a multi-prompt request, which backends are never made to wait, how many tokens a batch
may hold under a token limit, which prices and class specs it refuses, and what it releases
when its block ends (the answer cache's file, the ledger's journal)."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import pytest

import dlgraph as dg


class JumpClock:
    """A clock whose every sleep returns at once, moving time on by what was asked: calls
    gathered in one tick share a window, and the sleeps asked for are kept."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def time(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += max(seconds, 0.0)
        await anyio.sleep(0)


class Batching(dg.Backend):
    """Takes up to `max_batch` prompts a request; records when each request was sent, and
    how many prompts it carried."""

    def __init__(self, max_batch: int) -> None:
        self.clock = JumpClock()
        self.capabilities = dg.Capabilities(max_batch=max_batch)
        self.sent: list[tuple[float, int]] = []

    async def generate(self, request: dg.GenerateRequest) -> str:
        self.sent.append((self.clock.time(), 1))
        return "ok"

    async def logprob(self, request: dg.LogprobRequest) -> float:
        return -1.0

    async def generate_batch(self, requests: list[dg.GenerateRequest]) -> list[str]:
        self.sent.append((self.clock.time(), len(requests)))
        return ["ok"] * len(requests)


def calls(
    backend: Batching, prompts: list[str], max_tokens: int = 16, **options: object
) -> list[tuple[float, int]]:
    """Send every prompt at once through an engine with `options`; the requests sent."""

    async def body() -> None:
        engine = dg.Engine(backend, clock=backend.clock.time, sleep=backend.clock.sleep, **options)
        async with engine, anyio.create_task_group() as group:
            for prompt in prompts:
                group.start_soon(lambda p=prompt: engine.generate(p, max_tokens=max_tokens))

    anyio.run(body)
    return backend.sent


def test_under_a_request_limit_a_call_waits_ten_milliseconds_for_companions() -> None:
    backend = Batching(max_batch=8)
    assert calls(backend, ["a", "b", "c"], rpm=600) == [(0.010, 3)]
    assert backend.clock.slept == [0.010]


@pytest.mark.parametrize("window_ms", [1, 2.5])
def test_a_window_of_a_millisecond_or_more_gathers_calls_into_one_request(window_ms) -> None:
    backend = Batching(max_batch=8)
    sent = calls(backend, ["a", "b", "c"], coalesce_ms=window_ms)
    assert sent == [(window_ms / 1000, 3)]


def test_a_backend_that_takes_two_prompts_a_request_gets_pairs() -> None:
    backend = Batching(max_batch=2)
    assert [size for _, size in calls(backend, ["a", "b", "c", "d"], rpm=600)] == [2, 2]


def test_a_backend_that_takes_one_prompt_a_request_never_waits_for_companions() -> None:
    backend = Batching(max_batch=1)
    assert calls(backend, ["a", "b"], rpm=600) == [(0.0, 1), (0.0, 1)]
    assert backend.clock.slept == []


def test_a_batch_under_a_token_limit_closes_at_a_quarter_of_the_burst_whatever_the_burst() -> None:
    """60,000 tokens a minute with a two-second burst: 2,000 tokens, so a batch closes once it
    holds 500; each call is 9 tokens of prompt and 90 to write (99), so six to a batch."""
    backend = Batching(max_batch=64)
    limits = dg.RateLimits(tpm=60_000, burst_s=2.0)
    prompts = [f"{i}".rjust(36, "p") for i in range(12)]
    sent = calls(backend, prompts, max_tokens=90, limits=limits, coalesce_ms=5)
    assert [size for _, size in sent] == [6, 6]


def test_a_table_of_prices_holding_anything_but_prices_is_refused() -> None:
    backend = Batching(max_batch=1)
    with pytest.raises(TypeError, match="price: expected a dg.Price or a table of them"):
        dg.Engine(backend, price={"a": dg.Price(1.0), "b": 2.0})


@pytest.mark.parametrize("classes", [["yes|Yes", "|"], ["|", "||"]])
def test_a_class_spec_without_a_verbalizer_is_refused_before_any_call(classes) -> None:
    backend = Batching(max_batch=1)

    async def body() -> None:
        async with dg.Engine(backend) as engine:
            with pytest.raises(ValueError, match="classes: expected class specs such as"):
                await engine.classify("Is it? ", classes)

    anyio.run(body)
    assert backend.sent == []


def open_descriptors(path: Path) -> int:
    """How many of this process's file descriptors point at `path`."""
    target = str(path.resolve())
    count = 0
    for entry in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{entry}") == target
        except OSError:  # closed while we looked
            pass
    return count


def test_an_engine_closes_its_journal_when_its_block_ends_and_its_ledger_writes_there_no_more(
    tmp_path,
) -> None:
    journal = tmp_path / "ledger.jsonl"
    backend = Batching(max_batch=1)

    async def body() -> None:
        engine = dg.Engine(backend, journal=journal)
        async with engine:
            await engine.generate("a")
            assert open_descriptors(journal) == 1
        assert open_descriptors(journal) == 0
        written = journal.read_bytes()
        engine.ledger.charge([(dg.GenerateRequest("b"), {"calls": 1})])  # counts, in memory
        assert journal.read_bytes() == written
        assert engine.ledger.statistics().total.calls == 2

    anyio.run(body)


@pytest.mark.parametrize("cancelled", [False, True])
def test_an_engine_closes_its_answer_cache_when_its_block_ends_even_when_cancelled(
    tmp_path, cancelled
) -> None:
    cache = tmp_path / "answers.sqlite"
    backend = Batching(max_batch=1)

    async def body() -> None:
        with anyio.CancelScope() as scope:
            async with dg.Engine(backend, cache=cache) as engine:
                await engine.generate("a")
                assert open_descriptors(cache) >= 1
                if cancelled:
                    scope.cancel()
                    await anyio.sleep(0)  # the cancellation arrives here
        assert open_descriptors(cache) == 0

    anyio.run(body)
