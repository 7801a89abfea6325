"""One rate limit shared by engines: the keeper's arithmetic in process, engines sharing it
in one process, and three processes against the simulated server."""

from __future__ import annotations

import sys
import time

import anyio
import pytest
import ray
from dlgraph_ray import LimitKeeper, SharedLimit
from dlgraph_sim import ScriptedModel
from dlgraph_sim.server import ServerConfig, ServerProcess

import dlgraph as dg

pytestmark = pytest.mark.slow  # a local Ray cluster

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


class InProcessSource:
    """The keeper, called directly: the engine's side of sharing without Ray."""

    def __init__(self) -> None:
        self.keeper = LimitKeeper("test")
        self.borrowed = 0

    async def configure(self, rpm: float | None, tpm: float | None, burst_s: float) -> None:
        self.keeper.configure(rpm, tpm, burst_s)

    async def borrow(self, requests: int, tokens: int) -> dg.Grant:
        self.borrowed += 1
        return self.keeper.borrow(requests, tokens)

    async def give_back(self, requests: int, tokens: int) -> None:
        self.keeper.give_back(requests, tokens)

    async def pause(self, seconds: float) -> None:
        self.keeper.pause(seconds)


def test_the_keeper_grants_at_most_its_rate_plus_half_a_burst() -> None:
    keeper = LimitKeeper("k")
    keeper.configure(600, None, 1.0)  # 10 a second, a bucket of 5
    granted, started = 0, time.monotonic()
    while time.monotonic() - started < 1.0:
        granted += keeper.borrow(3, 0).requests
        time.sleep(0.005)
    assert 5 + 8 <= granted <= 5 + 10 * (time.monotonic() - started) + 1


def test_the_keeper_grants_nothing_during_a_pause_and_says_how_long() -> None:
    keeper = LimitKeeper("k")
    keeper.configure(6000, None, 1.0)
    keeper.pause(0.5)
    grant = keeper.borrow(1, 0)
    assert (grant.requests, grant.tokens) == (0, 0) and 0.4 < grant.wait_s <= 0.5


def test_allowance_given_back_is_granted_again() -> None:
    keeper = LimitKeeper("k")
    keeper.configure(60, None, 2.0)  # 1 a second, a bucket of 1
    assert keeper.borrow(1, 0).requests == 1
    assert keeper.borrow(1, 0).requests == 0
    keeper.give_back(1, 0)
    assert keeper.borrow(1, 0).requests == 1


def test_tokens_are_granted_whole_or_not_at_all() -> None:
    keeper = LimitKeeper("k")
    keeper.configure(None, 6000, 2.0)  # 100 tokens a second, a bucket of 100
    assert keeper.borrow(0, 80).tokens == 80
    grant = keeper.borrow(0, 80)
    assert grant.tokens == 0 and grant.wait_s > 0


async def test_two_engines_sharing_a_source_send_at_most_its_rate_together() -> None:
    source = InProcessSource()
    models = [ScriptedModel(generate={".": "ok"}, name=f"m{i}") for i in range(2)]
    started = anyio.current_time()
    async with (
        dg.Engine(models[0], rpm=1200, cache=False, shared_limit=source) as first,
        dg.Engine(models[1], rpm=1200, cache=False, shared_limit=source) as second,
        anyio.create_task_group() as group,
    ):
        for engine in (first, second):
            for index in range(40):
                group.start_soon(engine.generate, f"prompt {index}")
    elapsed = anyio.current_time() - started
    # 80 calls at 20 a second, 10 at once from the bucket: at least 3.5 s; alone each
    # engine would have taken 1.5 s.
    assert elapsed >= 3.3
    assert elapsed < 6.0  # and not much slower than the bound
    assert sum(model.count() for model in models) == 80
    assert source.keeper.granted[0] - source.keeper.returned[0] == 80


async def test_below_the_limit_an_engine_borrows_in_blocks_not_per_call() -> None:
    source = InProcessSource()
    model = ScriptedModel(latency_s=0.01)
    async with dg.Engine(model, rpm=60_000, cache=False, shared_limit=source) as engine:
        async with anyio.create_task_group() as group:
            for index in range(300):
                group.start_soon(engine.generate, f"prompt {index}")
    assert model.count() == 300
    assert source.borrowed <= 300 / 20  # blocks of 100 (a tenth of a second at 1000 a second)
    assert source.keeper.granted[0] - source.keeper.returned[0] == 300


async def test_an_engine_gives_back_what_it_did_not_spend_when_it_closes() -> None:
    source = InProcessSource()
    async with dg.Engine(ScriptedModel(), rpm=60_000, cache=False, shared_limit=source) as engine:
        await engine.generate("one call")
    keeper = source.keeper
    assert keeper.granted[0] > 1 or keeper.granted[0] == 1
    assert keeper.granted[0] - keeper.returned[0] == 1


async def test_a_429_pauses_every_engine_of_the_endpoint() -> None:
    source = InProcessSource()
    refused = ScriptedModel(
        fault=lambda request, n: dg.RateLimited("slow down", retry_after_s=1.0) if n == 0 else None
    )
    other = ScriptedModel(name="other")
    async with (
        dg.Engine(refused, rpm=6000, cache=False, shared_limit=source) as first,
        dg.Engine(other, rpm=6000, cache=False, shared_limit=source) as second,
    ):
        async with anyio.create_task_group() as group:
            group.start_soon(first.generate, "refused once, then answered")
            await anyio.sleep(0.1)
            started = anyio.current_time()
            await second.generate("waits for the pause")
            waited = anyio.current_time() - started
    assert source.keeper.pauses == 1 and refused.count() == 2
    assert 0.7 < waited  # the other engine, which never saw a 429, waited out the 1 s too


class SlowSource(InProcessSource):
    """A source across a slow network: each borrow takes 50 ms."""

    async def borrow(self, requests: int, tokens: int) -> dg.Grant:
        await anyio.sleep(0.05)
        return await super().borrow(requests, tokens)


async def test_a_call_of_higher_priority_arriving_during_a_borrow_is_admitted_too() -> None:
    model = ScriptedModel()
    async with dg.Engine(model, rpm=60_000, cache=False, shared_limit=SlowSource()) as engine:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as group:
                for index in range(5):
                    group.start_soon(lambda i=index: engine.generate(f"low {i}", priority=0))
                await anyio.sleep(0.02)  # the first call is borrowing now
                for index in range(5):
                    group.start_soon(lambda i=index: engine.generate(f"high {i}", priority=3))
    assert model.count() == 10


def test_an_engine_without_a_limit_to_share_is_refused() -> None:
    with pytest.raises(ValueError, match="shared_limit: give the endpoint's rpm or tpm"):
        dg.Engine(ScriptedModel(), shared_limit=InProcessSource())


def test_a_shared_limit_that_is_not_a_grant_source_is_refused() -> None:
    with pytest.raises(TypeError, match="shared_limit: expected a GrantSource"):
        dg.Engine(ScriptedModel(), rpm=60, shared_limit="ray")  # type: ignore[arg-type]


# -- processes --------------------------------------------------------------------------------

RPM = 600.0
CALLS = (45, 30, 15)


@ray.remote(num_cpus=0.5)
def trial(url: str, calls: int, key: str) -> dict[str, int]:
    """A training run's worth of calls in its own process, through a shared limit."""

    async def main() -> dict[str, int]:
        backend = dg.connect("openai", base_url=url, model="sim-1", profile="sim")
        engine = dg.Engine(
            backend, rpm=RPM, cache=False, coalesce_ms=0, shared_limit=SharedLimit(key)
        )
        answered = 0
        async with engine, anyio.create_task_group() as group:

            async def one(index: int) -> None:
                nonlocal answered
                await engine.generate(f"{key} call {index}", max_tokens=4)
                answered += 1

            for index in range(calls):
                group.start_soon(one, index)
        total = engine.statistics().total
        return {"answered": answered, "rate_limited": total.rate_limited, "errors": total.errors}

    return anyio.run(main)


@pytest.mark.timeout(180)
def test_three_processes_sharing_the_limit_stay_within_the_servers_limit_and_lose_nothing(
    local_ray: None,
) -> None:
    with ServerProcess(ServerConfig(rpm=RPM, latency_median_s=0.05)) as server:
        started = time.monotonic()
        results = ray.get([trial.remote(server.url, calls, "endpoint-a") for calls in CALLS])
        elapsed = time.monotonic() - started
        attempts = server.attempts()
    assert [r["answered"] for r in results] == list(CALLS)
    assert attempts["by_outcome"] == {"ok": sum(CALLS)}  # not one 429
    assert sum(r["rate_limited"] + r["errors"] for r in results) == 0
    times = sorted(attempts["times"]["ok"])
    span = times[-1] - times[0]
    bound = (sum(CALLS) - RPM / 60) / (RPM / 60)  # after the server's burst, at its rate
    assert span >= bound * 0.95
    assert elapsed < 60
