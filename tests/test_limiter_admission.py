"""The limiter's admission and adaptive concurrency at their edges: the smallest limits, a
pause when no rate is set, the jitter of a pause, who waits, and the order of the queue after
a waiter leaves it. (The main cases are in test_engine_stages.py.)"""

from __future__ import annotations

import anyio
import pytest
from dlgraph_sim import ScriptedModel
from fake_clock import FakeClock
from test_engine_stages import recording_limiter, replying, run_with_clock

import dlgraph as dg
from dlgraph.engine.limiter import Limiter, RateLimits


def test_a_rate_of_one_request_a_minute_is_allowed() -> None:
    assert RateLimits(rpm=1).rpm == 1


def test_an_engine_without_limits_keeps_at_most_256_calls_in_flight() -> None:
    engine = dg.Engine(ScriptedModel())
    assert engine.concurrency_ceiling == 256


async def test_a_slow_request_rate_still_allows_two_calls_in_flight() -> None:
    limiter = Limiter(replying(None), dg.Backend(), RateLimits(rpm=6))
    assert limiter.statistics().concurrency_limit == 2


async def test_the_concurrency_limit_never_drops_below_one_call() -> None:
    async def refused(work):
        raise dg.RateLimited("429", retry_after_s=0)

    limiter = Limiter(replying(refused), dg.Backend(), RateLimits(max_concurrency=2))
    with pytest.raises(dg.RateLimited):
        await limiter(dg.GenerateRequest("x"))
    assert limiter.statistics().concurrency_limit == 1  # 2 x 0.7, never below one


async def test_the_concurrency_limit_grows_only_when_a_call_had_to_wait_for_it() -> None:
    refusals = [dg.RateLimited("429", retry_after_s=0)]
    both_in = anyio.Event()
    inside = 0

    async def server(work):
        nonlocal inside
        if refusals:
            raise refusals.pop()
        inside += 1
        if inside == 2:
            both_in.set()
        await both_in.wait()
        return "ok"

    limiter = Limiter(replying(server), dg.Backend(), RateLimits(max_concurrency=4))
    with pytest.raises(dg.RateLimited):
        await limiter(dg.GenerateRequest("x"))
    assert limiter.statistics().concurrency_limit == 2  # 4 x 0.7 = 2.8
    async with anyio.create_task_group() as group:
        for i in range(2):  # the second finds one place left: it does not wait
            group.start_soon(limiter, dg.GenerateRequest(f"p{i}"))
    assert limiter.statistics().concurrency_limit == 2


async def test_calls_waiting_for_a_place_in_flight_are_counted_as_waiting() -> None:
    release = anyio.Event()

    async def server(work):
        await release.wait()
        return "ok"

    limiter = Limiter(replying(server), dg.Backend(), RateLimits(max_concurrency=1))
    async with anyio.create_task_group() as group:
        for i in range(3):
            group.start_soon(limiter, dg.GenerateRequest(f"p{i}"))
        await anyio.wait_all_tasks_blocked()
        statistics = limiter.statistics()
        assert (statistics.in_flight, statistics.waiting) == (1, 2)
        release.set()


class LowJitter:
    """A jitter source that always draws 0.05."""

    def random(self) -> float:
        return 0.05


async def starts_after_a_429(limits: RateLimits, jitter: object | None = None) -> list[float]:
    clock = FakeClock()
    starts: list[float] = []

    async def inner(work):
        starts.append(clock.time())
        if len(starts) == 1:
            raise dg.RateLimited("429", retry_after_s=5.0)
        return "ok"

    extra = {} if jitter is None else {"jitter": jitter}
    limiter = Limiter(
        replying(inner), dg.Backend(), limits, clock=clock.time, sleep=clock.sleep, **extra
    )

    async def body() -> None:
        with pytest.raises(dg.RateLimited):
            await limiter(dg.GenerateRequest("first"))
        await limiter(dg.GenerateRequest("after"))

    await run_with_clock(clock, body)
    return starts


async def test_a_429_pauses_the_next_call_even_without_a_rate_limit() -> None:
    starts = await starts_after_a_429(RateLimits(max_concurrency=4, pause_jitter=0))
    assert starts == pytest.approx([0, 5.0])


async def test_the_pause_after_a_429_lengthens_by_the_jitter_drawn_times_its_share() -> None:
    starts = await starts_after_a_429(RateLimits(pause_jitter=0.1), LowJitter())
    assert starts == pytest.approx([0, 5.0 * (1 + 0.1 * 0.05)])


async def test_the_queue_keeps_its_order_after_the_most_urgent_waiter_leaves() -> None:
    clock = FakeClock()
    limiter, served = recording_limiter(clock)

    async def body() -> None:
        await limiter(dg.GenerateRequest("first"))
        doomed = anyio.CancelScope()

        async def urgent() -> None:
            with doomed:
                await limiter(dg.GenerateRequest("urgent", priority=1))

        async with anyio.create_task_group() as group:
            group.start_soon(limiter, dg.GenerateRequest("early"))
            group.start_soon(limiter, dg.GenerateRequest("late"))
            group.start_soon(urgent)
            await anyio.sleep(0)  # all three have queued; the clock has not moved
            assert limiter.statistics().waiting == 3
            doomed.cancel()

    await run_with_clock(clock, body)
    assert served == ["first", "early", "late"]


async def test_a_call_arriving_when_the_rate_allows_still_queues_behind_a_more_urgent_one() -> None:
    now = 0.0
    urgent_waits, urgent_may_go = anyio.Event(), anyio.Event()
    served: list[str] = []

    async def sleep(seconds: float) -> None:
        nonlocal now
        if not urgent_may_go.is_set():  # the urgent call waits for the rate
            urgent_waits.set()
            await urgent_may_go.wait()
        else:
            now += seconds
            await anyio.sleep(0)

    async def inner(work: dg.GenerateRequest) -> str:
        served.append(work.prompt)
        return "ok"

    limiter = Limiter(
        replying(inner), dg.Backend(), RateLimits(rpm=60), clock=lambda: now, sleep=sleep
    )  # one request a second
    await limiter(dg.GenerateRequest("first"))
    async with anyio.create_task_group() as group:
        now = 0.5
        group.start_soon(limiter, dg.GenerateRequest("urgent", priority=1))
        await urgent_waits.wait()
        now = 1.0  # the rate allows one more call: the urgent one's, which has not woken yet
        group.start_soon(limiter, dg.GenerateRequest("late"))
        while limiter.statistics().waiting < 2 and "late" not in served:
            await anyio.sleep(0)
        urgent_may_go.set()
    assert served == ["first", "urgent", "late"]


async def test_a_scoring_call_is_charged_only_its_prompt_tokens_against_the_token_rate() -> None:
    clock = FakeClock()
    starts: list[float] = []

    async def inner(work: object) -> float:
        starts.append(clock.time())
        return -1.0

    limiter = Limiter(
        replying(inner), dg.Backend(), RateLimits(tpm=600), clock=clock.time, sleep=clock.sleep
    )
    request = dg.LogprobRequest("x" * 34, " yes")  # 38 characters: 9 tokens, of 10 a second

    async def body() -> None:
        await limiter(request)
        await limiter(request)

    await run_with_clock(clock, body)
    assert starts == pytest.approx([0.0, 0.8])  # 8 more tokens at 10 a second
