"""Each engine stage alone, with a plain async function as its inner call."""

from __future__ import annotations

import math
import random

import anyio
import pytest
from dlgraph_sim import ScriptedModel
from fake_clock import FakeClock

import dlgraph as dg
from dlgraph.engine.cache import Cache, MemoryStore, SqliteStore
from dlgraph.engine.coalescer import Coalescer, Split
from dlgraph.engine.ledger import Ledger
from dlgraph.engine.limiter import Limiter, RateLimits
from dlgraph.engine.metered import Metered
from dlgraph.engine.retry import Retry, RetryPolicy
from dlgraph.engine.single_flight import SingleFlight
from dlgraph.engine.stage import BackendCall, Batch, request_key
from dlgraph.engine.usage import Budget
from dlgraph.engine.workers import Workers


def key(request):
    return request_key("test", request)


class Plain(dg.Backend):
    """A backend made of one async function of the work (a request or a Batch), so that the
    stages below the limiter can be tested through the real `BackendCall`."""

    capabilities = dg.Capabilities(max_batch=64)

    def __init__(self, answer) -> None:
        self.answer = answer

    async def generate(self, request):
        return await self.answer(request)

    async def logprob(self, request):
        return await self.answer(request)

    async def generate_batch(self, requests):
        return await self.answer(Batch(tuple(requests)))


def replying(answer) -> BackendCall:
    return BackendCall(Plain(answer))


class Counting:
    """An inner call that counts requests and can block until released."""

    def __init__(self, *, block: bool = False) -> None:
        self.calls = 0
        self.seen: list[object] = []
        self.release = anyio.Event()
        if not block:
            self.release.set()

    async def __call__(self, work):
        self.calls += 1
        self.seen.append(work)
        await self.release.wait()
        if isinstance(work, Batch):
            return [f"answer to {r.prompt}" for r in work.requests]
        return f"answer to {work.prompt}"


# -- single-flight ---------------------------------------------------------------------------


async def test_single_flight_shares_one_call_between_identical_requests() -> None:
    inner = Counting(block=True)
    results = []
    async with anyio.create_task_group() as engine_group:
        flight = SingleFlight(inner, key, Workers(engine_group))
        async with anyio.create_task_group() as callers:
            for _ in range(5):

                async def ask() -> None:
                    results.append(await flight(dg.GenerateRequest("hi", node="n1")))

                callers.start_soon(ask)
            await anyio.wait_all_tasks_blocked()
            inner.release.set()
        engine_group.cancel_scope.cancel()  # idle workers wait for jobs until the engine closes
    assert inner.calls == 1 and results == ["answer to hi"] * 5
    assert flight.in_flight == 0


async def test_single_flight_cancelled_waiter_leaves_others_their_result() -> None:
    inner = Counting(block=True)
    results = []
    async with anyio.create_task_group() as engine_group:
        flight = SingleFlight(inner, key, Workers(engine_group))
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
        engine_group.cancel_scope.cancel()
    assert results == ["answer to hi"] and inner.calls == 1


async def test_single_flight_last_waiter_cancelling_cancels_and_forgets_the_call() -> None:
    cancelled = anyio.Event()

    async def slow(request):
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()

    async with anyio.create_task_group() as engine_group:
        flight = SingleFlight(slow, key, Workers(engine_group))
        with anyio.move_on_after(0.05):
            await flight(dg.GenerateRequest("hi"))
        await cancelled.wait()
        assert flight.in_flight == 0
        engine_group.cancel_scope.cancel()


async def test_workers_are_reused_instead_of_spawned_again() -> None:
    inner = Counting()
    async with anyio.create_task_group() as engine_group:
        workers = Workers(engine_group)
        flight = SingleFlight(inner, key, workers)
        for round in range(3):
            async with anyio.create_task_group() as callers:
                for i in range(4):
                    callers.start_soon(flight, dg.GenerateRequest(f"{round}-{i}"))
            await anyio.wait_all_tasks_blocked()
        assert workers.spawned == 4 and inner.calls == 12
        engine_group.cancel_scope.cancel()


# -- cache -----------------------------------------------------------------------------------


async def test_cache_answers_a_repeated_request_without_calling() -> None:
    inner = Counting()
    ledger = Ledger()
    cache = Cache(inner, key, ledger, MemoryStore())
    first = await cache(dg.GenerateRequest("hi", node="a", phase="forward"))
    second = await cache(dg.GenerateRequest("hi", node="b", phase="score", priority=3))
    third = await cache(dg.GenerateRequest("hi", seed=1))
    assert first == second == third and inner.calls == 2  # a new seed is a new sample
    assert ledger.statistics().total.cache_hits == 1


async def test_disk_cache_survives_a_new_store_on_the_same_file(tmp_path) -> None:
    path = tmp_path / "cache.sqlite"
    store = await SqliteStore.open(path)
    await Cache(Counting(), key, Ledger(), store)(dg.GenerateRequest("a"))
    await store.aclose()
    inner = Counting()
    again = await SqliteStore.open(path)
    assert await Cache(inner, key, Ledger(), again)(dg.GenerateRequest("a")) == "answer to a"
    assert inner.calls == 0
    await again.aclose()


# -- retry -----------------------------------------------------------------------------------


async def test_retry_repeats_transient_errors_and_counts_them() -> None:
    failures = [dg.TransientError("503"), dg.TransientError("dropped")]
    sleeps: list[float] = []

    async def flaky(request):
        if failures:
            raise failures.pop(0)
        return "ok"

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    ledger = Ledger()
    retry = Retry(
        flaky, ledger, RetryPolicy(deadline_s=60, initial_wait_s=1, max_wait_s=10), sleep=sleep
    )
    assert await retry(dg.GenerateRequest("x", node="n")) == "ok"
    assert ledger.statistics().total.retries == 2
    assert 0 <= sleeps[0] <= 1 and 0 <= sleeps[1] <= 2  # full jitter under an exponential ceiling


async def test_retry_does_not_wait_on_its_own_after_a_429() -> None:
    failures = [dg.RateLimited("429", retry_after_s=30)]
    sleeps: list[float] = []

    async def limited(request):
        if failures:
            raise failures.pop(0)
        return "ok"

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    assert await Retry(limited, Ledger(), sleep=sleep)(dg.GenerateRequest("x")) == "ok"
    assert sleeps == [0.0]  # the limiter's shared pause does the waiting


async def test_retry_gives_up_at_once_on_rejected_request() -> None:
    calls = 0

    async def rejecting(request):
        nonlocal calls
        calls += 1
        raise dg.RequestRejected("context length exceeded")

    with pytest.raises(dg.RequestRejected, match="context length"):
        await Retry(rejecting, Ledger())(dg.GenerateRequest("x"))
    assert calls == 1


async def test_retry_stops_after_malformed_answers_in_a_row_and_only_in_a_row() -> None:
    """Malformed, malformed, a dropped connection, then malformed three times: the drop
    starts the count again, so the call fails on the sixth attempt, not the third."""
    failures = [dg.MalformedAnswer("no text")] * 2 + [dg.TransientError("dropped")]
    failures += [dg.MalformedAnswer("no text")] * 5
    calls = 0

    async def garbling(request):
        nonlocal calls
        calls += 1
        raise failures[calls - 1]

    async def sleep(seconds: float) -> None:
        pass

    retry = Retry(garbling, Ledger(), RetryPolicy(malformed_attempts=3), sleep=sleep)
    with pytest.raises(dg.RetriesExhausted, match="malformed 3 times in a row") as caught:
        await retry(dg.GenerateRequest("x"))
    assert calls == 6 and isinstance(caught.value.__cause__, dg.MalformedAnswer)


async def test_retry_raises_retries_exhausted_at_the_deadline() -> None:
    async def down(request):
        raise dg.TransientError("502 bad gateway")

    retry = Retry(
        down, Ledger(), RetryPolicy(deadline_s=0.05, initial_wait_s=0.001, max_wait_s=0.01)
    )
    with pytest.raises(dg.RetriesExhausted, match="502 bad gateway") as caught:
        await retry(dg.GenerateRequest("x"))
    assert isinstance(caught.value.__cause__, dg.TransientError)


class TopOfRange(random.Random):
    """Jitter that draws the top of every range it is asked for, and remembers the ranges."""

    def __init__(self) -> None:
        super().__init__(0)
        self.ranges: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.ranges.append((a, b))
        return b


async def test_retry_gives_up_at_the_deadline_counted_from_the_first_failure() -> None:
    clock = FakeClock()
    attempts: list[float] = []

    async def down(request):
        if not attempts:
            await clock.sleep(5.0)  # the first attempt fails after 5 s: the deadline starts then
        attempts.append(clock.time())
        raise dg.TransientError("502 bad gateway")

    jitter = TopOfRange()
    retry = Retry(
        down,
        Ledger(),
        RetryPolicy(deadline_s=30, initial_wait_s=1, max_wait_s=10),
        sleep=clock.sleep,
        clock=clock.time,
        jitter=jitter,
    )
    gave_up_at: list[float] = []

    async def body() -> None:
        with pytest.raises(dg.RetriesExhausted, match="deadline of 30 s"):
            await retry(dg.GenerateRequest("x"))
        gave_up_at.append(clock.time())

    await run_with_clock(clock, body)
    assert attempts == [5, 6, 8, 12, 20, 30]  # waits of 1, 2, 4, 8, then 10 at most
    assert gave_up_at == [35]  # the last wait is cut at the deadline; no attempt after it
    assert jitter.ranges == [(0, 1), (0, 2), (0, 4), (0, 8), (0, 10), (0, 10)]  # full jitter


async def test_retry_tries_no_more_after_an_attempt_that_outlasts_the_deadline() -> None:
    clock = FakeClock()
    attempts: list[float] = []

    async def slow_then_down(request):
        attempts.append(clock.time())
        if len(attempts) == 2:
            await clock.sleep(100.0)  # the first retry hangs past the deadline, then fails
        raise dg.TransientError("504 gateway timeout")

    ledger = Ledger()
    retry = Retry(
        slow_then_down,
        ledger,
        RetryPolicy(deadline_s=30, initial_wait_s=1, max_wait_s=1),
        sleep=clock.sleep,
        clock=clock.time,
        jitter=TopOfRange(),
    )

    async def body() -> None:
        with pytest.raises(dg.RetriesExhausted, match="504"):
            await retry(dg.GenerateRequest("x"))

    await run_with_clock(clock, body)
    assert attempts == [0, 1] and ledger.statistics().total.retries == 1


async def test_retry_gives_up_when_an_attempt_fails_exactly_at_the_deadline() -> None:
    """No wait is taken (nor its jitter drawn, nor a retry counted) once no time is left."""
    clock = FakeClock()
    attempts: list[float] = []

    async def down(request):
        attempts.append(clock.time())
        if len(attempts) == 3:
            await clock.sleep(10.0)  # the second retry fails exactly at the deadline
        raise dg.TransientError("503")

    ledger = Ledger()
    jitter = TopOfRange()
    retry = Retry(
        down,
        ledger,
        RetryPolicy(deadline_s=30, initial_wait_s=10, max_wait_s=10),
        sleep=clock.sleep,
        clock=clock.time,
        jitter=jitter,
    )
    gave_up_at: list[float] = []

    async def body() -> None:
        with pytest.raises(dg.RetriesExhausted, match="503"):
            await retry(dg.GenerateRequest("x"))
        gave_up_at.append(clock.time())

    await run_with_clock(clock, body)
    assert attempts == [0, 10, 20] and gave_up_at == [30]
    assert ledger.statistics().total.retries == 2 and jitter.ranges == [(0, 10), (0, 10)]


async def test_retry_ends_in_retries_exhausted_after_thousands_of_instant_failures() -> None:
    """A server failing at once, short waits, a long deadline: more than 1024 retries, where
    the doubling of the backoff's ceiling once overflowed a float."""
    clock = FakeClock()

    async def down(request):
        raise dg.TransientError("503")

    ledger = Ledger()
    retry = Retry(
        down,
        ledger,
        RetryPolicy(deadline_s=2, initial_wait_s=0.001, max_wait_s=0.001),
        sleep=clock.sleep,
        clock=clock.time,
        jitter=TopOfRange(),
    )
    gave_up_at: list[float] = []

    async def body() -> None:
        with pytest.raises(dg.RetriesExhausted, match="503"):
            await retry(dg.GenerateRequest("x"))
        gave_up_at.append(clock.time())

    await run_with_clock(clock, body)
    assert gave_up_at == [pytest.approx(2.0)]
    assert ledger.statistics().total.retries == pytest.approx(2000, abs=2)


@pytest.mark.parametrize("retry", [1025, 10**6])
def test_a_backoff_after_more_than_a_thousand_retries_is_the_longest_wait_not_an_overflow(
    retry: int,
) -> None:
    policy = RetryPolicy(initial_wait_s=1e-300, max_wait_s=7.0)
    backoff = Retry(Counting(), Ledger(), policy, jitter=TopOfRange())
    assert backoff.backoff_s(dg.TransientError("503"), retry) == 7.0


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"deadline_s": 0}, "deadline_s"),
        ({"initial_wait_s": -0.5}, "initial_wait_s"),
        ({"max_wait_s": -1}, "max_wait_s"),
        ({"malformed_attempts": 0}, "malformed_attempts"),
        ({"malformed_attempts": 2.5}, "malformed_attempts"),
    ],
)
def test_a_retry_policy_refuses_a_deadline_of_nothing_and_negative_waits(setting, message):
    with pytest.raises((TypeError, ValueError), match=message):
        RetryPolicy(**setting)


# -- ledger ----------------------------------------------------------------------------------


async def test_metered_refuses_calls_past_the_budget() -> None:
    inner = Counting()
    ledger = Ledger(Budget(max_calls=2))
    metered = Metered(replying(inner), ledger, dg.Backend())
    await metered(dg.GenerateRequest("a"))
    await metered(dg.GenerateRequest("b"))
    with pytest.raises(dg.BudgetExhausted, match="call budget of 2 spent"):
        await metered(dg.GenerateRequest("c"))
    assert inner.calls == 2


async def test_metered_refuses_calls_once_the_token_budget_is_spent() -> None:
    async def reporting(work):
        return dg.Answer("x", usage=dg.CallUsage(prompt_tokens=60, completion_tokens=40))

    ledger = Ledger(Budget(max_tokens=200))
    metered = Metered(replying(reporting), ledger, dg.Backend())
    await metered(dg.GenerateRequest("a"))
    await metered(dg.GenerateRequest("b"))  # 100 tokens spent before it: it may go
    with pytest.raises(dg.BudgetExhausted, match=r"token budget of 200 spent \(200 tokens\)"):
        await metered(dg.GenerateRequest("c"))
    assert ledger.statistics().total.calls == 2


async def test_ledger_counts_by_node_and_phase_and_prices_tokens() -> None:
    ledger = Ledger(price=dg.Price(input_per_million=1e6, output_per_million=2e6))
    metered = Metered(replying(Counting()), ledger, dg.Backend())
    await metered(dg.GenerateRequest("aaaa aaaa", node="a", phase="forward"))
    await metered(
        Batch(
            (
                dg.GenerateRequest("b", node="b", phase="propose"),
                dg.GenerateRequest("c", node="b", phase="propose"),
            )
        )
    )
    stats = ledger.statistics()
    assert stats.by_key[("a", "forward")].calls == 1
    assert stats.by_phase()["propose"].calls == 2 and stats.by_phase()["propose"].http_requests == 1
    total = stats.total
    assert total.cost == pytest.approx(total.tokens_in * 1 + total.tokens_out * 2)


async def test_metered_counts_estimated_prompt_tokens_when_the_backend_reports_none() -> None:
    ledger = Ledger()
    metered = Metered(replying(Counting()), ledger, dg.Backend())
    await metered(dg.GenerateRequest("x" * 400, max_tokens=50))  # 100 tokens by estimate
    assert ledger.statistics().total.tokens_in == 100


async def test_metered_uses_token_counts_the_backend_reports() -> None:
    async def reporting(work):
        return dg.Answer("x", usage=dg.CallUsage(prompt_tokens=100, completion_tokens=7))

    ledger = Ledger()
    await Metered(replying(reporting), ledger, dg.Backend())(dg.GenerateRequest("short"))
    assert (ledger.statistics().total.tokens_in, ledger.statistics().total.tokens_out) == (100, 7)


# -- limiter (on a simulated clock) ----------------------------------------------------------


async def run_with_clock(clock: FakeClock, body) -> None:
    async with anyio.create_task_group() as group:
        group.start_soon(clock.drive)
        await body()
        group.cancel_scope.cancel()


async def test_limiter_spaces_calls_to_the_request_rate() -> None:
    clock = FakeClock()
    starts: list[float] = []

    async def inner(work):
        starts.append(clock.time())
        return "ok"

    limiter = Limiter(
        replying(inner), dg.Backend(), RateLimits(rpm=60), clock=clock.time, sleep=clock.sleep
    )

    async def body() -> None:
        async with anyio.create_task_group() as group:
            for i in range(5):
                group.start_soon(limiter, dg.GenerateRequest(f"p{i}", max_tokens=1))

    await run_with_clock(clock, body)
    assert starts == pytest.approx([0, 1, 2, 3, 4])


async def test_limiter_adopts_the_limit_a_refusal_states_with_its_error() -> None:
    """The server states its limits with a 429 too: the error carries them, so the next calls
    keep to the server's rate, not to ours."""
    clock = FakeClock()
    starts: list[float] = []

    async def inner(work):
        starts.append(clock.time())
        if len(starts) == 1:
            stated = dg.CallUsage(limit_requests=60, remaining_requests=0)
            raise dg.RateLimited("429", retry_after_s=0.0, usage=stated)
        return "ok"

    limiter = Limiter(
        replying(inner),
        dg.Backend(),
        RateLimits(rpm=6000, pause_jitter=0),
        clock=clock.time,
        sleep=clock.sleep,
    )

    async def body() -> None:
        with pytest.raises(dg.RateLimited):
            await limiter(dg.GenerateRequest("first", max_tokens=1))
        for i in range(2):
            await limiter(dg.GenerateRequest(f"p{i}", max_tokens=1))

    await run_with_clock(clock, body)
    assert starts == pytest.approx([0, 1, 2])  # one a second, as the server said


async def test_engine_charges_the_usage_a_backend_answer_carries() -> None:
    class Counted(dg.Backend):
        async def generate(self, request):
            return dg.Answer("hi", usage=dg.CallUsage(prompt_tokens=11, completion_tokens=3))

        async def logprob(self, request):
            return -1.0  # a plain value: its tokens are estimated

    async with dg.Engine(Counted()) as engine:
        assert await engine.generate("a prompt that is long enough", max_tokens=4) == "hi"
        assert await engine.logprob("x" * 40, "y" * 40) == -1.0
    total = engine.statistics().total
    assert (total.tokens_in, total.tokens_out) == (11 + 20, 3)


async def test_limiter_charges_prompt_plus_max_tokens_to_the_token_bucket() -> None:
    clock = FakeClock()
    starts: list[float] = []

    async def inner(work):
        starts.append(clock.time())
        return "ok"

    limiter = Limiter(
        replying(inner), dg.Backend(), RateLimits(tpm=6000), clock=clock.time, sleep=clock.sleep
    )  # 100 tokens/s

    async def body() -> None:
        for _ in range(3):
            await limiter(dg.GenerateRequest("x" * 400, max_tokens=100))  # 100 + 100 tokens

    await run_with_clock(clock, body)
    assert starts == pytest.approx([0, 2, 4])


async def test_limiter_pauses_everyone_for_the_retry_after_the_server_asked() -> None:
    clock = FakeClock()
    starts: list[float] = []

    async def inner(work):
        starts.append(clock.time())
        if len(starts) == 1:
            raise dg.RateLimited("429", retry_after_s=5.0)
        return "ok"

    limiter = Limiter(
        replying(inner),
        dg.Backend(),
        RateLimits(rpm=600, pause_jitter=0.1),
        clock=clock.time,
        sleep=clock.sleep,
    )

    async def body() -> None:
        with pytest.raises(dg.RateLimited):
            await limiter(dg.GenerateRequest("first"))
        async with anyio.create_task_group() as group:
            for i in range(3):
                group.start_soon(limiter, dg.GenerateRequest(f"after{i}"))

    await run_with_clock(clock, body)
    assert all(5.0 <= start <= 5.5 + 1.0 for start in starts[1:])
    assert limiter.statistics().rate_limited == 1


async def test_limiter_admits_the_highest_priority_first_when_rate_bound() -> None:
    clock = FakeClock()
    order: list[int] = []

    async def inner(work):
        order.append(work.priority)
        return "ok"

    limiter = Limiter(
        replying(inner), dg.Backend(), RateLimits(rpm=60), clock=clock.time, sleep=clock.sleep
    )

    async def body() -> None:
        async with anyio.create_task_group() as group:
            for index, priority in enumerate([0, 0, 1, 2, 0, 2]):  # all queue before time moves
                group.start_soon(limiter, dg.GenerateRequest(f"p{index}", priority=priority))

    await run_with_clock(clock, body)
    assert order[0] == 0  # the first one went at once, alone
    assert order[1:] == [2, 2, 1, 0, 0]


def recording_limiter(clock: FakeClock) -> tuple[Limiter, list[str]]:
    """A limiter of 60 requests a minute on `clock`, and the prompts it let through, in order."""
    served: list[str] = []

    async def inner(work):
        served.append(work.prompt)
        return "ok"

    limiter = Limiter(
        replying(inner), dg.Backend(), RateLimits(rpm=60), clock=clock.time, sleep=clock.sleep
    )
    return limiter, served


async def test_limiter_cancelled_waiter_leaves_the_queue() -> None:
    clock = FakeClock()
    limiter, served = recording_limiter(clock)

    async def body() -> None:
        await limiter(dg.GenerateRequest("first"))
        doomed = anyio.CancelScope()

        async def cancelled() -> None:
            with doomed:
                await limiter(dg.GenerateRequest("cancelled"))

        async with anyio.create_task_group() as group:
            group.start_soon(cancelled)
            group.start_soon(limiter, dg.GenerateRequest("second"))
            await anyio.sleep(0)  # one checkpoint: both have queued; the clock has not moved
            assert limiter.statistics().waiting == 2
            doomed.cancel()
        assert limiter.statistics().waiting == 0

    await run_with_clock(clock, body)
    assert served == ["first", "second"]


async def test_limiter_shrinks_concurrency_after_a_429_and_grows_under_load() -> None:
    failures = [dg.RateLimited("429", retry_after_s=0)]
    release = anyio.Event()

    async def server(work):
        if failures:
            raise failures.pop()
        await release.wait()
        return "ok"

    limiter = Limiter(replying(server), dg.Backend(), RateLimits(max_concurrency=40))
    before = limiter.statistics().concurrency_limit
    with pytest.raises(dg.RateLimited):
        await limiter(dg.GenerateRequest("x"))
    shrunk = limiter.statistics().concurrency_limit
    async with anyio.create_task_group() as group:
        for i in range(90):
            group.start_soon(limiter, dg.GenerateRequest(f"p{i}"))
        await anyio.wait_all_tasks_blocked()  # 28 in flight, 62 crowded out, waiting
        assert limiter.statistics().in_flight == shrunk
        release.set()
    grown = limiter.statistics().concurrency_limit
    assert (before, shrunk) == (40, 28)  # multiplicative decrease: x 0.7
    assert grown == shrunk + 2  # additive increase: about one per window of crowded calls


async def test_limiter_lets_a_burst_of_calls_go_at_once_then_keeps_to_the_rate() -> None:
    starts = await starts_of_calls_reporting(RateLimits(rpm=60, burst_s=3), 5)
    assert starts == pytest.approx([0, 0, 0, 1, 2])


async def test_limiter_under_a_request_rate_follows_littles_law_as_latency_grows() -> None:
    """Calls in flight = arrival rate x latency, twice over: 10 calls/s at a latency that
    moves from 1 s towards 3.7 s by a tenth per call (1.27 s, then 1.513 s)."""
    clock = FakeClock()

    async def slow(work):
        await clock.sleep(3.7)
        return "ok"

    limiter = Limiter(
        replying(slow), dg.Backend(), RateLimits(rpm=600), clock=clock.time, sleep=clock.sleep
    )
    limits = [limiter.statistics().concurrency_limit]

    async def body() -> None:
        for i in range(2):
            await limiter(dg.GenerateRequest(f"p{i}"))
            limits.append(limiter.statistics().concurrency_limit)

    await run_with_clock(clock, body)
    assert limits == [20, 26, 31]


async def test_limiter_empties_its_buckets_on_a_429_so_calls_resume_at_the_rate() -> None:
    """The server's count is spent even if ours is not: after the pause, calls are spaced at
    the rate, not sent as one burst from a bucket that still looks full."""
    clock = FakeClock()
    starts: list[float] = []

    async def inner(work):
        starts.append(clock.time())
        if len(starts) == 1:
            raise dg.RateLimited("429", retry_after_s=0.5)
        return "ok"

    limiter = Limiter(
        replying(inner),
        dg.Backend(),
        RateLimits(rpm=60, burst_s=5, pause_jitter=0),
        clock=clock.time,
        sleep=clock.sleep,
    )

    async def body() -> None:
        with pytest.raises(dg.RateLimited):
            await limiter(dg.GenerateRequest("first"))
        async with anyio.create_task_group() as group:
            for i in range(3):
                group.start_soon(limiter, dg.GenerateRequest(f"after{i}"))

    await run_with_clock(clock, body)
    assert starts == pytest.approx([0, 1, 2, 3])  # not [0, 0.5, 0.5, 0.5]


async def test_limiter_trues_up_the_token_bucket_with_the_usage_the_server_reports() -> None:
    clock = FakeClock()
    starts: list[float] = []

    async def inner(work):
        starts.append(clock.time())
        usage = dg.CallUsage(prompt_tokens=100, completion_tokens=10)  # 90 of 100 unused
        return dg.Answer("ok", usage=usage)

    limiter = Limiter(
        replying(inner), dg.Backend(), RateLimits(tpm=6000), clock=clock.time, sleep=clock.sleep
    )  # 100 tokens/s, a bucket of 100

    async def body() -> None:
        for _ in range(2):
            await limiter(dg.GenerateRequest("x" * 400, max_tokens=100))  # 200 charged

    await run_with_clock(clock, body)
    assert starts == pytest.approx([0, 1.1])  # the debt is 10 tokens, not 100 (nor 190)


async def starts_of_calls_reporting(limits: RateLimits, calls: int, **facts: int) -> list[float]:
    """When each of `calls` sequential calls reached the server, which reports `facts` (its
    x-ratelimit-* headers) with every answer."""
    clock = FakeClock()
    starts: list[float] = []

    async def inner(work):
        starts.append(clock.time())
        return dg.Answer("ok", usage=dg.CallUsage(**facts))

    limiter = Limiter(replying(inner), dg.Backend(), limits, clock=clock.time, sleep=clock.sleep)

    async def body() -> None:
        for i in range(calls):
            await limiter(dg.GenerateRequest(f"p{i}", max_tokens=1))

    await run_with_clock(clock, body)
    return starts


async def test_limiter_adopts_a_lower_request_limit_the_server_states() -> None:
    starts = await starts_of_calls_reporting(RateLimits(rpm=600), 3, limit_requests=60)
    assert starts == pytest.approx([0, 0, 1])  # a bucket of one second at one call a second


async def test_limiter_keeps_its_own_limit_when_the_server_states_a_higher_one() -> None:
    starts = await starts_of_calls_reporting(RateLimits(rpm=60), 3, limit_requests=6000)
    assert starts == pytest.approx([0, 1, 2])


async def test_limiter_never_holds_more_requests_than_the_server_says_remain() -> None:
    limits = RateLimits(rpm=60, burst_s=5)  # five calls at once, by our count
    starts = await starts_of_calls_reporting(limits, 3, remaining_requests=0)
    assert starts == pytest.approx([0, 1, 2])


async def test_limiter_never_holds_more_tokens_than_the_server_says_remain() -> None:
    limits = RateLimits(tpm=60_000, burst_s=5)  # 1000 tokens a second, 5000 at once
    starts = await starts_of_calls_reporting(limits, 2, remaining_tokens=0)
    assert starts == pytest.approx([0, 0.002])  # the next call's 2 tokens, at 1000 a second


async def test_limiter_adopts_a_lower_token_limit_the_server_states() -> None:
    limits = RateLimits(tpm=60_000)
    starts = await starts_of_calls_reporting(limits, 3, limit_tokens=120, remaining_tokens=0)
    assert starts == pytest.approx([0, 1, 2])  # 2 tokens a call at 2 tokens a second


# -- coalescer and split ---------------------------------------------------------------------


async def test_coalescer_sends_compatible_requests_as_one_batch() -> None:
    inner = Counting()
    clock = FakeClock()
    results: dict[str, str] = {}

    async def body() -> None:
        async with anyio.create_task_group() as engine_group:
            coalescer = Coalescer(
                inner, engine_group, max_batch=8, window_s=0.01, sleep=clock.sleep
            )
            async with anyio.create_task_group() as callers:
                for i in range(5):

                    async def ask(i: int = i) -> None:
                        results[f"p{i}"] = await coalescer(
                            dg.GenerateRequest(f"p{i}", max_tokens=5)
                        )

                    callers.start_soon(ask)
                callers.start_soon(lambda: coalescer(dg.GenerateRequest("other", max_tokens=6)))

    await run_with_clock(clock, body)
    batches = [work for work in inner.seen if isinstance(work, Batch)]
    assert len(batches) == 1 and len(batches[0].requests) == 5
    assert results == {f"p{i}": f"answer to p{i}" for i in range(5)}
    assert inner.calls == 2  # the request with other sampling fields went alone


async def test_coalescer_sends_a_full_batch_without_waiting_for_the_window() -> None:
    inner = Counting()
    async with anyio.create_task_group() as engine_group:
        coalescer = Coalescer(inner, engine_group, max_batch=3, window_s=3600)
        async with anyio.create_task_group() as callers:
            for i in range(3):
                callers.start_soon(coalescer, dg.GenerateRequest(f"p{i}"))
        engine_group.cancel_scope.cancel()
    assert [len(work.requests) for work in inner.seen] == [3]


async def test_coalescer_waiter_cancelled_before_sending_leaves_its_batch() -> None:
    inner = Counting()
    async with anyio.create_task_group() as engine_group:
        coalescer = Coalescer(inner, engine_group, max_batch=2, window_s=3600)
        doomed = anyio.CancelScope()
        async with anyio.create_task_group() as callers:

            async def cancelled() -> None:
                with doomed:
                    await coalescer(dg.GenerateRequest("gone"))

            callers.start_soon(cancelled)
            await anyio.wait_all_tasks_blocked()
            doomed.cancel()
            await anyio.wait_all_tasks_blocked()
            callers.start_soon(coalescer, dg.GenerateRequest("kept1"))
            callers.start_soon(coalescer, dg.GenerateRequest("kept2"))
        engine_group.cancel_scope.cancel()
    [batch] = inner.seen
    assert [r.prompt for r in batch.requests] == ["kept1", "kept2"]


async def test_split_isolates_the_refused_prompt_of_a_batch() -> None:
    sent: list[int] = []

    async def server(work):
        prompts = [r.prompt for r in work.requests] if isinstance(work, Batch) else [work.prompt]
        sent.append(len(prompts))
        if "poison" in prompts:
            raise dg.RequestRejected("prompt 'poison' violates the policy")
        return [f"ok {p}" for p in prompts] if isinstance(work, Batch) else f"ok {prompts[0]}"

    prompts = ["a", "b", "poison", "d", "e"]
    outcome = await Split(server)(Batch(tuple(dg.GenerateRequest(p) for p in prompts)))
    assert outcome[:2] == ["ok a", "ok b"] and outcome[3:] == ["ok d", "ok e"]
    assert isinstance(outcome[2], dg.RequestRejected) and "violates the policy" in str(outcome[2])
    assert sent[0] == 5 and len(sent) < 2 * len(prompts)


class SilentSource:
    """A grant source that is never asked (the engine is only built, not entered)."""

    async def configure(self, rpm, tpm, burst_s) -> None: ...

    async def borrow(self, requests, tokens): ...

    async def give_back(self, requests, tokens) -> None: ...

    async def pause(self, seconds) -> None: ...


def test_engine_takes_its_limits_as_keywords_or_as_one_record_or_both_if_they_agree() -> None:
    limits = RateLimits(rpm=1.5, tpm=100, max_concurrency=1)
    assert dg.Engine(dg.Backend(), limits=limits).limits == limits
    assert dg.Engine(dg.Backend(), rpm=1.5, tpm=100, max_concurrency=1).limits == limits
    same = dg.Engine(dg.Backend(), rpm=1.5, tpm=100, max_concurrency=1, limits=limits)
    assert (same.rpm, same.tpm, same.max_concurrency) == (1.5, 100, 1)
    with pytest.raises(ValueError, match="as keywords or in limits, not both"):
        dg.Engine(dg.Backend(), rpm=60, limits=limits)


def test_engine_shares_a_limit_of_requests_or_of_tokens_alone() -> None:
    dg.Engine(dg.Backend(), rpm=60, shared_limit=SilentSource())
    dg.Engine(dg.Backend(), tpm=6000, shared_limit=SilentSource())
    with pytest.raises(ValueError, match="give the endpoint's rpm or tpm to share"):
        dg.Engine(dg.Backend(), max_concurrency=4, shared_limit=SilentSource())


async def test_engine_without_a_coalescing_window_sends_each_request_alone() -> None:
    inner = Counting()
    async with dg.Engine(Plain(inner), rpm=60_000, coalesce_ms=0) as engine:
        async with anyio.create_task_group() as callers:
            for i in range(4):
                callers.start_soon(engine.generate, f"p{i}")
    assert inner.calls == 4 and not any(isinstance(work, Batch) for work in inner.seen)


async def test_engine_is_usable_only_inside_its_context() -> None:
    engine = dg.Engine(dg.Backend())
    with pytest.raises(RuntimeError, match="async with"):
        await engine.generate("x")


async def test_coalescer_closes_a_batch_at_its_token_budget() -> None:
    inner = Counting()
    async with anyio.create_task_group() as engine_group:
        coalescer = Coalescer(
            inner,
            engine_group,
            max_batch=64,
            window_s=3600,
            max_tokens=300,
            count_tokens=lambda work: 100,
        )
        async with anyio.create_task_group() as callers:
            for i in range(6):
                callers.start_soon(coalescer, dg.GenerateRequest(f"p{i}"))
        engine_group.cancel_scope.cancel()
    assert [len(work.requests) for work in inner.seen] == [3, 3]


async def test_a_coalesced_batch_charges_retries_and_errors_to_each_requests_own_node() -> None:
    failures = [dg.TransientError("503 once")]

    async def flaky(work):
        if failures:
            raise failures.pop()
        return [f"answer to {r.prompt}" for r in work.requests]

    asked = [("a", "forward"), ("b", "posterior"), ("c", "propose")]
    engine = dg.Engine(Plain(flaky), coalesce_ms=20, retry=dg.RetryPolicy(initial_wait_s=0))
    async with engine:
        async with anyio.create_task_group() as callers:
            for node, phase in asked:
                callers.start_soon(
                    lambda node=node, phase=phase: engine.generate(
                        f"from {node}", node=node, phase=phase
                    )
                )
    by_key = engine.statistics().by_key
    assert set(by_key) == set(asked)
    for key in asked:
        usage = by_key[key]
        assert (usage.calls, usage.retries, usage.errors) == (2, 1, 1), key
    assert engine.statistics().total.http_requests == 2


async def test_the_halves_of_a_refused_batch_keep_its_place_in_the_limiters_queue() -> None:
    clock = FakeClock()
    sent: list[tuple[str, ...]] = []

    async def server(work):
        prompts = (
            tuple(r.prompt for r in work.requests) if isinstance(work, Batch) else (work.prompt,)
        )
        sent.append(prompts)
        if "poison" in prompts:
            raise dg.RequestRejected("poison")
        return [f"ok {p}" for p in prompts] if isinstance(work, Batch) else f"ok {prompts[0]}"

    limiter = Limiter(
        replying(server), dg.Backend(), RateLimits(rpm=60), clock=clock.time, sleep=clock.sleep
    )
    chain = Split(Retry(limiter, Ledger(), sleep=clock.sleep))
    outcome: list[object] = []

    async def body() -> None:
        async with anyio.create_task_group() as group:

            async def the_batch() -> None:
                requests = tuple(dg.GenerateRequest(p) for p in ["poison", "a", "b", "c"])
                outcome.extend(await chain(Batch(requests, since=clock.time())))

            group.start_soon(the_batch)
            await clock.sleep(0.5)  # the batch went out and was refused; later calls queue up
            for name in ("later 1", "later 2", "later 3"):
                group.start_soon(chain, dg.GenerateRequest(name))

    await run_with_clock(clock, body)
    assert sent[0] == ("poison", "a", "b", "c")
    later = [i for i, prompts in enumerate(sent) if prompts[0].startswith("later")]
    halves = [i for i, prompts in enumerate(sent[1:], 1) if not prompts[0].startswith("later")]
    assert max(halves) < min(later)  # every part of the batch went before the later calls
    assert outcome[1:] == ["ok a", "ok b", "ok c"] and isinstance(outcome[0], dg.RequestRejected)


# -- classification --------------------------------------------------------------------------


def verbalizer_model(probability: dict[str, float]) -> ScriptedModel:
    """Exact log-probabilities: each verbalizer (after a space) has its given probability."""
    return ScriptedModel(logprob=lambda request: math.log(probability[request.target]))


async def test_classify_gives_a_class_the_summed_probability_of_its_verbalizers() -> None:
    model = verbalizer_model({" yes": 0.35, " Yes": 0.05, " no": 0.3, " No": 0.3})
    async with dg.Engine(model) as engine:
        distribution = await engine.classify("Is it?", ["yes|Yes", "no|No"])
    assert distribution == pytest.approx([0.4, 0.6])  # the likelier verbalizer alone: 0.35 : 0.3


async def test_classify_returns_a_distribution_when_the_verbalizers_cover_little_mass() -> None:
    model = verbalizer_model({" yes": 0.01, " Yes": 0.01, " no": 0.03, " No": 0.03})
    async with dg.Engine(model) as engine:
        distribution = await engine.classify("Is it?", ["yes|Yes", "no|No"])
    assert distribution == pytest.approx([0.25, 0.75])
