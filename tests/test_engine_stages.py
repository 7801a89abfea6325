"""Each engine stage alone, with a plain async function as its inner call."""

from __future__ import annotations

import anyio
import pytest

import dlgraph as dg
from dlgraph.engine.cache import Cache
from dlgraph.engine.ledger import Budget, Ledger, Metered
from dlgraph.engine.retry import Retry, RetryPolicy
from dlgraph.engine.single_flight import SingleFlight
from dlgraph.engine.stage import request_key


def key(request):
    return request_key("test", request)


class Counting:
    """An inner call that counts requests and can block until released."""

    def __init__(self, *, block: bool = False) -> None:
        self.calls = 0
        self.release = anyio.Event()
        if not block:
            self.release.set()

    async def __call__(self, request):
        self.calls += 1
        await self.release.wait()
        return f"answer to {request.prompt}"


async def test_single_flight_shares_one_call_between_identical_requests() -> None:
    inner = Counting(block=True)
    results = []
    async with anyio.create_task_group() as engine_group:
        flight = SingleFlight(inner, key, engine_group)
        async with anyio.create_task_group() as callers:
            for _ in range(5):
                async def ask() -> None:
                    results.append(await flight(dg.GenerateRequest("hi", node="n1")))
                callers.start_soon(ask)
            await anyio.wait_all_tasks_blocked()
            inner.release.set()
    assert inner.calls == 1 and results == ["answer to hi"] * 5
    assert flight.in_flight == 0


async def test_single_flight_cancelled_waiter_leaves_others_their_result() -> None:
    inner = Counting(block=True)
    results = []
    async with anyio.create_task_group() as engine_group:
        flight = SingleFlight(inner, key, engine_group)
        doomed = anyio.CancelScope()
        async with anyio.create_task_group() as callers:
            async def impatient() -> None:
                with doomed:
                    await flight(dg.GenerateRequest("hi"))
            async def patient() -> None:
                results.append(await flight(dg.GenerateRequest("hi")))
            callers.start_soon(impatient)
            callers.start_soon(patient)
            await anyio.wait_all_tasks_blocked()
            doomed.cancel()
            await anyio.wait_all_tasks_blocked()
            inner.release.set()
    assert results == ["answer to hi"] and inner.calls == 1


async def test_single_flight_last_waiter_cancelling_forgets_the_call() -> None:
    inner = Counting(block=True)
    before = len(anyio.get_running_tasks())
    async with anyio.create_task_group() as engine_group:
        flight = SingleFlight(inner, key, engine_group)
        with anyio.move_on_after(0.05):
            await flight(dg.GenerateRequest("hi"))
        await anyio.wait_all_tasks_blocked()
        assert flight.in_flight == 0
        assert len(anyio.get_running_tasks()) == before  # the shared call is gone too


async def test_cache_answers_a_repeated_request_without_calling() -> None:
    inner = Counting()
    ledger = Ledger()
    cache = Cache(inner, key, ledger)
    first = await cache(dg.GenerateRequest("hi", node="a", phase="forward"))
    second = await cache(dg.GenerateRequest("hi", node="b", phase="score"))
    third = await cache(dg.GenerateRequest("hi", seed=1))
    assert first == second == third and inner.calls == 2  # a new seed is a new sample
    assert ledger.statistics().total.cache_hits == 1


async def test_retry_repeats_transient_errors_and_counts_them() -> None:
    failures = [dg.TransientError("503"), dg.RateLimited("429", retry_after_s=0.01)]
    sleeps: list[float] = []

    async def flaky(request):
        if failures:
            raise failures.pop(0)
        return "ok"

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    ledger = Ledger()
    retry = Retry(flaky, ledger, RetryPolicy(deadline_s=60), sleep=sleep)
    assert await retry(dg.GenerateRequest("x", node="n")) == "ok"
    assert ledger.statistics().total.retries == 2
    assert 0.01 <= sleeps[1] <= 0.012  # honours retry_after_s, with a little jitter


async def test_retry_gives_up_at_once_on_rejected_request() -> None:
    calls = 0

    async def rejecting(request):
        nonlocal calls
        calls += 1
        raise dg.RequestRejected("context length exceeded")

    with pytest.raises(dg.RequestRejected, match="context length"):
        await Retry(rejecting, Ledger())(dg.GenerateRequest("x"))
    assert calls == 1


async def test_retry_raises_retries_exhausted_after_the_deadline() -> None:

    async def down(request):
        raise dg.TransientError("502")

    retry = Retry(down, Ledger(), RetryPolicy(deadline_s=0.05, initial_wait_s=0.001, max_wait_s=0.01), sleep=anyio.sleep)
    with pytest.raises(dg.RetriesExhausted) as caught:
        await retry(dg.GenerateRequest("x"))
    assert isinstance(caught.value.__cause__, dg.TransientError)


async def test_metered_refuses_calls_past_the_budget() -> None:
    inner = Counting()
    ledger = Ledger(Budget(max_calls=2))
    metered = Metered(inner, ledger, dg.Backend())
    await metered(dg.GenerateRequest("a"))
    await metered(dg.GenerateRequest("b"))
    with pytest.raises(dg.BudgetExhausted, match="call budget of 2 spent"):
        await metered(dg.GenerateRequest("c"))
    assert inner.calls == 2


async def test_ledger_counts_by_node_and_phase() -> None:
    ledger = Ledger()
    metered = Metered(Counting(), ledger, dg.Backend())
    await metered(dg.GenerateRequest("aaaa aaaa", node="a", phase="forward"))
    await metered(dg.GenerateRequest("b", node="b", phase="propose"))
    stats = ledger.statistics()
    assert stats.by_key[("a", "forward")].calls == 1
    assert stats.by_phase()["propose"].calls == 1
    assert stats.total.calls == 2 and stats.total.tokens_in > 0


async def test_engine_is_usable_only_inside_its_context() -> None:
    engine = dg.Engine(dg.Backend())
    with pytest.raises(RuntimeError, match="async with"):
        await engine.generate("x")
