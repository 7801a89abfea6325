"""An engine's share of a rate limit shared across processes (`GrantPool`), against a source
that records what it is asked and a clock the test moves: how much it borrows, when it gives
allowance back, what a 429 voids. (The Ray plugin's keeper, and engines in several processes,
are tested in backends/ray.)"""

from __future__ import annotations

import anyio
import pytest
from dlgraph_sim import ScriptedModel
from fake_clock import FakeClock
from test_engine_stages import replying, run_with_clock

import dlgraph as dg
from dlgraph._entry_points import SHARED_LIMITS
from dlgraph.engine import shared
from dlgraph.engine.limiter import Limiter, RateLimits
from dlgraph.engine.shared import GrantPool, open_shared_limit


class RecordingSource:
    """Grants what it is asked (or the scripted `grant`), and records every call."""

    def __init__(self, grant: dg.Grant | None = None) -> None:
        self.grant = grant
        self.configured: list[tuple[float | None, float | None, float]] = []
        self.borrowed: list[tuple[int, int]] = []
        self.given_back: list[tuple[int, int]] = []
        self.paused: list[float] = []

    async def configure(self, rpm: float | None, tpm: float | None, burst_s: float) -> None:
        self.configured.append((rpm, tpm, burst_s))

    async def borrow(self, requests: int, tokens: int) -> dg.Grant:
        self.borrowed.append((requests, tokens))
        return self.grant if self.grant is not None else dg.Grant(requests, tokens)

    async def give_back(self, requests: int, tokens: int) -> None:
        self.given_back.append((requests, tokens))

    async def pause(self, seconds: float) -> None:
        self.paused.append(seconds)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def pool_of(
    source: RecordingSource, rpm: float | None, tpm: float | None, burst_s: float = 1.0
) -> tuple[GrantPool, Clock]:
    clock = Clock()
    return GrantPool(source, rpm, tpm, burst_s, clock=clock), clock


async def test_grant_pool_declares_the_endpoints_limits_when_it_opens() -> None:
    source = RecordingSource()
    pool, _ = pool_of(source, rpm=600, tpm=6000, burst_s=2.0)
    await pool.open()
    assert source.configured == [(600, 6000, 2.0)]


async def test_grant_pool_borrows_a_tenth_of_a_second_of_requests_for_the_calls_waiting() -> None:
    source = RecordingSource()
    pool, _ = pool_of(source, rpm=6000, tpm=None)  # 100 a second: blocks of 10
    assert await pool.acquire(0, waiting=25) == 0.0
    assert source.borrowed == [(10, 0)]
    assert pool.requests == 9


async def test_grant_pool_borrows_no_more_requests_than_calls_are_waiting() -> None:
    source = RecordingSource()
    pool, _ = pool_of(source, rpm=6000, tpm=None)
    assert await pool.acquire(0, waiting=3) == 0.0
    assert source.borrowed == [(3, 0)]


async def test_grant_pool_borrows_one_request_at_a_time_when_the_rate_is_slow() -> None:
    source = RecordingSource()
    pool, _ = pool_of(source, rpm=60, tpm=None)  # one a second: a tenth of it is no request
    assert await pool.acquire(0, waiting=5) == 0.0
    assert source.borrowed == [(1, 0)]


async def test_grant_pool_borrows_a_tenth_of_a_second_of_tokens_for_the_calls_waiting() -> None:
    source = RecordingSource()
    pool, _ = pool_of(source, rpm=None, tpm=60_000)  # 1,000 tokens a second: blocks of 100
    assert await pool.acquire(30, waiting=10) == 0.0
    assert source.borrowed == [(0, 100)]
    assert pool.tokens == 70


async def test_grant_pool_borrows_tokens_only_for_the_calls_waiting() -> None:
    source = RecordingSource()
    pool, _ = pool_of(source, rpm=None, tpm=60_000)
    assert await pool.acquire(30, waiting=2) == 0.0
    assert source.borrowed == [(0, 60)]
    assert pool.tokens == 30


async def test_grant_pool_borrows_at_least_one_calls_tokens_when_a_block_is_smaller() -> None:
    source = RecordingSource()
    pool, _ = pool_of(source, rpm=None, tpm=6_000)  # blocks of 10 tokens
    assert await pool.acquire(40, waiting=3) == 0.0
    assert source.borrowed == [(0, 40)]
    assert pool.tokens == 0


async def test_grant_pool_spends_what_it_holds_without_asking_the_source_again() -> None:
    source = RecordingSource()
    pool, clock = pool_of(source, rpm=6000, tpm=60_000)
    assert await pool.acquire(10, waiting=10) == 0.0
    clock.now = 100.2
    assert pool.try_take(10)
    assert pool.try_take(80)  # exactly what is left
    assert (pool.requests, pool.tokens) == (7, 0)
    assert not pool.try_take(1)
    assert source.borrowed == [(10, 100)]


async def test_grant_pool_with_only_a_request_limit_spends_requests_whatever_the_tokens() -> None:
    source = RecordingSource()
    pool, _ = pool_of(source, rpm=6000, tpm=None)
    assert await pool.acquire(500, waiting=10) == 0.0
    assert pool.try_take(500)
    assert (pool.requests, pool.tokens) == (8, 0)


async def test_grant_pool_with_only_a_token_limit_spends_tokens_whatever_the_requests() -> None:
    source = RecordingSource()
    pool, _ = pool_of(source, rpm=None, tpm=60_000)
    assert await pool.acquire(10, waiting=10) == 0.0
    assert pool.try_take(10)
    assert (pool.requests, pool.tokens) == (0, 80)


async def test_grant_pool_asks_for_no_requests_it_already_holds() -> None:
    source = RecordingSource()
    pool, _ = pool_of(source, rpm=6000, tpm=60_000)
    assert await pool.acquire(10, waiting=4) == 0.0  # 4 requests, 40 tokens; 3 and 30 left
    assert await pool.acquire(50, waiting=2) == 0.0  # short of tokens only
    assert source.borrowed == [(4, 40), (0, 70)]
    assert source.given_back == []
    assert (pool.requests, pool.tokens) == (2, 50)


async def test_grant_pool_gives_back_what_it_has_not_spent_after_half_the_burst() -> None:
    source = RecordingSource()
    pool, clock = pool_of(source, rpm=6000, tpm=None, burst_s=1.0)
    assert await pool.acquire(0, waiting=10) == 0.0
    clock.now = 100.5  # held exactly half the burst: still ours
    assert pool.try_take(0)
    assert await pool.acquire(0, waiting=10) == 0.0
    assert source.given_back == [] and source.borrowed == [(10, 0)]
    clock.now = 100.51
    assert not pool.try_take(0)
    assert await pool.acquire(0, waiting=10) == 0.0
    assert source.given_back == [(7, 0)]
    assert source.borrowed == [(10, 0), (10, 0)]


async def test_grant_pool_keeps_allowance_no_longer_than_half_the_burst_from_its_first_loan() -> (
    None
):
    source = RecordingSource()
    pool, clock = pool_of(source, rpm=6000, tpm=60_000, burst_s=1.0)
    assert await pool.acquire(10, waiting=2) == 0.0  # (1, 10) left, held since 100
    clock.now = 100.3
    assert await pool.acquire(50, waiting=3) == 0.0  # topped up: still held since 100
    assert source.borrowed == [(2, 20), (2, 90)]
    clock.now = 100.45
    assert pool.try_take(10)
    clock.now = 100.55
    assert not pool.try_take(10)


async def test_grant_pool_short_of_tokens_at_half_the_burst_tops_up_what_it_holds() -> None:
    source = RecordingSource()
    pool, clock = pool_of(source, rpm=6000, tpm=60_000, burst_s=1.0)
    assert await pool.acquire(10, waiting=4) == 0.0  # (3, 30) left
    clock.now = 100.5  # still ours, but short of tokens
    assert await pool.acquire(50, waiting=1) == 0.0
    assert source.given_back == []
    assert source.borrowed == [(4, 40), (0, 20)]


async def test_grant_pool_short_of_requests_only_borrows_no_tokens() -> None:
    source = RecordingSource()
    pool, clock = pool_of(source, rpm=6000, tpm=60_000, burst_s=1.0)
    assert await pool.acquire(10, waiting=10) == 0.0  # (9, 90) left
    for _ in range(9):
        assert pool.try_take(0)
    clock.now = 100.3
    assert await pool.acquire(10, waiting=1) == 0.0
    assert source.borrowed[-1] == (1, 0)
    clock.now = 100.55  # held since the first loan: tokens were held all along
    assert await pool.acquire(10, waiting=1) == 0.0
    assert source.given_back == [(0, 80)]


async def test_grant_pool_returns_tokens_given_back_after_its_allowance_expired() -> None:
    """A call charged from an expired allowance reports its usage late: the tokens it did not
    use go back to the source, not into a purse that never expires."""
    source = RecordingSource()
    pool, clock = pool_of(source, rpm=None, tpm=60_000, burst_s=1.0)
    assert await pool.acquire(100, waiting=1) == 0.0
    clock.now = 101.0
    source.grant = dg.Grant(0, 0, wait_s=0.2)
    assert await pool.acquire(100, waiting=1) == 0.2
    pool.true_up(40)  # the first call used 60 of its 100
    assert not pool.try_take(30)
    source.grant = None
    assert await pool.acquire(30, waiting=1) == 0.0
    assert source.given_back == [(0, 40)]


async def test_grant_pool_refused_says_how_long_the_source_asks_to_wait() -> None:
    source = RecordingSource(grant=dg.Grant(0, 0, wait_s=0.25))
    pool, _ = pool_of(source, rpm=6000, tpm=None)
    assert await pool.acquire(0, waiting=1) == 0.25


async def test_grant_pool_refused_without_a_wait_still_waits_a_moment_before_asking_again() -> None:
    source = RecordingSource(grant=dg.Grant(0, 0, wait_s=0.0))
    pool, _ = pool_of(source, rpm=6000, tpm=None)
    assert await pool.acquire(0, waiting=1) == 0.001


async def test_grant_pool_counts_tokens_a_call_did_not_use_as_held_again() -> None:
    source = RecordingSource()
    pool, _ = pool_of(source, rpm=None, tpm=60_000)
    assert await pool.acquire(100, waiting=1) == 0.0
    pool.true_up(40)  # charged 100, used 60
    assert pool.tokens == 40
    pool.true_up(-70)  # used 70 more than charged: a debt
    assert pool.tokens == -30


async def test_grant_pool_voids_what_it_holds_and_pauses_everyone_on_a_429() -> None:
    source = RecordingSource()
    pool, _ = pool_of(source, rpm=6000, tpm=60_000)
    assert await pool.acquire(10, waiting=10) == 0.0
    await pool.rate_limited(2.5)
    assert (pool.requests, pool.tokens) == (0, 0)
    assert source.paused == [2.5]
    await pool.aclose()
    assert source.given_back == []  # nothing was the server's to give back


async def test_grant_pool_keeps_a_token_debt_through_a_429() -> None:
    source = RecordingSource()
    pool, _ = pool_of(source, rpm=None, tpm=60_000)
    assert await pool.acquire(100, waiting=1) == 0.0
    pool.true_up(-30)
    await pool.rate_limited(1.0)
    assert pool.tokens == -30
    await pool.aclose()
    assert source.given_back == [(0, -30)]  # the debt is settled with the source


async def test_grant_pool_gives_back_what_it_holds_when_it_closes_and_only_then() -> None:
    source = RecordingSource()
    pool, _ = pool_of(source, rpm=6000, tpm=60_000)
    await pool.aclose()
    assert source.given_back == []
    assert await pool.acquire(10, waiting=10) == 0.0
    await pool.aclose()
    assert source.given_back == [(9, 90)]
    assert (pool.requests, pool.tokens) == (0, 0)
    assert not pool.try_take(0)  # what it held is gone
    source.grant = dg.Grant(0, 0, wait_s=0.5)
    assert await pool.acquire(0, waiting=1) == 0.5


async def test_an_unopened_shared_limit_refuses_every_use() -> None:
    names = SHARED_LIMITS.entries()
    if not names:
        pytest.skip("no shared limit plugin installed")
    source = open_shared_limit(min(names), "endpoint", open=False)
    for use in (
        lambda: source.configure(60, None, 1.0),
        lambda: source.borrow(1, 0),
        lambda: source.give_back(1, 0),
        lambda: source.pause(1.0),
    ):
        with pytest.raises(RuntimeError, match="only checked, not opened"):
            await use()


def test_a_shared_limit_plugin_that_builds_no_grant_source_is_refused_by_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Entry:
        def load(self) -> object:
            return lambda key: object()

    class Group:
        def entry(self, name: str) -> Entry:
            return Entry()

    monkeypatch.setattr(shared, "SHARED_LIMITS", Group())
    with pytest.raises(TypeError, match="shared limit 'odd' built object, not a GrantSource"):
        open_shared_limit("odd", "endpoint")


def test_an_unknown_shared_limit_is_refused_naming_the_installed_ones() -> None:
    with pytest.raises(dg.UnknownBackend, match=r"unknown shared limit 'nope' \(known: "):
        open_shared_limit("nope", "endpoint", open=False)


# -- a limiter drawing on a pool -------------------------------------------------------------


class BlockingSource(RecordingSource):
    """Holds its first `borrow` (or every `pause`) until the test releases it."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = anyio.Event()
        self.release = anyio.Event()
        self.block_borrow = False
        self.block_pause = False

    async def borrow(self, requests: int, tokens: int) -> dg.Grant:
        if self.block_borrow and not self.borrowed:
            self.entered.set()
            await self.release.wait()
        return await super().borrow(requests, tokens)

    async def pause(self, seconds: float) -> None:
        if self.block_pause:
            self.entered.set()
            await self.release.wait()
        await super().pause(seconds)


def limiter_on(source: RecordingSource, inner, limits: RateLimits) -> Limiter:
    pool = GrantPool(source, limits.rpm, limits.tpm, limits.burst_s, clock=Clock())
    return Limiter(replying(inner), dg.Backend(), limits, clock=Clock(), pool=pool)


async def test_a_429_through_a_shared_limit_pauses_every_engine_even_if_the_caller_gives_up() -> (
    None
):
    source = BlockingSource()
    source.block_pause = True

    async def refused(work):
        raise dg.RateLimited("429", retry_after_s=3.0)

    limiter = limiter_on(source, refused, RateLimits(rpm=6000, pause_jitter=0))
    caller = anyio.CancelScope()

    async def call() -> None:
        with caller, pytest.raises(dg.RateLimited):
            await limiter(dg.GenerateRequest("p", max_tokens=1))

    async with anyio.create_task_group() as group:
        group.start_soon(call)
        await source.entered.wait()
        caller.cancel()  # the caller stops waiting while the pause is being shared
        await anyio.wait_all_tasks_blocked()
        source.release.set()
    assert source.paused == [3.0]
    assert limiter.pool is not None and (limiter.pool.requests, limiter.pool.tokens) == (0, 0)


async def test_a_shared_limit_gets_back_the_tokens_a_call_did_not_use() -> None:
    async def reporting(work):
        return dg.Answer("ok", usage=dg.CallUsage(prompt_tokens=100, completion_tokens=10))

    source = RecordingSource()
    limiter = limiter_on(source, reporting, RateLimits(tpm=600_000))  # blocks of 1,000
    await limiter(dg.GenerateRequest("x" * 400, max_tokens=100))  # 200 charged, 110 used
    assert source.borrowed == [(0, 200)]
    assert limiter.pool is not None and limiter.pool.tokens == 90


async def test_a_call_that_borrowed_while_a_more_urgent_one_arrived_leaves_the_queue() -> None:
    source = BlockingSource()
    source.block_borrow = True
    served: list[str] = []

    async def serving(work):
        served.append(work.prompt)
        return "ok"

    limiter = limiter_on(source, serving, RateLimits(rpm=6000))
    async with anyio.create_task_group() as group:
        group.start_soon(limiter, dg.GenerateRequest("early", priority=0))
        await source.entered.wait()  # borrowing, at the head of the queue
        group.start_soon(limiter, dg.GenerateRequest("urgent", priority=5))
        await anyio.wait_all_tasks_blocked()  # queued ahead of it
        source.release.set()
    assert sorted(served) == ["early", "urgent"]
    assert limiter.statistics().waiting == 0
    await limiter(dg.GenerateRequest("later"))  # nothing stale blocks the queue
    assert served[-1] == "later"


async def test_a_limiter_on_a_shared_limit_still_keeps_to_its_own_request_rate() -> None:
    clock = FakeClock()
    starts: list[float] = []

    async def serving(work):
        starts.append(clock.time())
        return "ok"

    limits = RateLimits(rpm=60)
    pool = GrantPool(RecordingSource(), 60, None, limits.burst_s, clock=clock.time)
    limiter = Limiter(
        replying(serving), dg.Backend(), limits, clock=clock.time, sleep=clock.sleep, pool=pool
    )

    async def body() -> None:
        for i in range(3):
            await limiter(dg.GenerateRequest(f"p{i}", max_tokens=1))

    await run_with_clock(clock, body)
    assert starts == pytest.approx([0, 1, 2])  # the source lends freely; the bucket says when


# -- an engine with a shared limit -----------------------------------------------------------


async def test_an_engine_on_a_shared_limit_declares_it_borrows_from_it_and_gives_back() -> None:
    source = RecordingSource(grant=dg.Grant(5, 0))  # more than the one call asks for
    model = ScriptedModel(generate=lambda request: "ok")
    async with dg.Engine(model, rpm=6000, shared_limit=source) as engine:
        assert source.configured == [(6000, None, 1.0)]
        assert await engine.generate("hi") == "ok"
        assert source.borrowed == [(1, 0)] and source.given_back == []
    assert source.given_back == [(4, 0)]  # what it held and did not spend


async def test_an_engine_cancelled_while_closing_still_gives_back_its_allowance() -> None:
    source = BlockingSource()
    source.grant = dg.Grant(5, 0)
    model = ScriptedModel(generate=lambda request: "ok")
    scope = anyio.CancelScope()

    async def give_back(requests: int, tokens: int) -> None:
        source.entered.set()
        await source.release.wait()
        source.given_back.append((requests, tokens))

    source.give_back = give_back  # type: ignore[method-assign]

    async def use() -> None:
        with scope:
            async with dg.Engine(model, rpm=6000, shared_limit=source) as engine:
                await engine.generate("hi")

    async with anyio.create_task_group() as group:
        group.start_soon(use)
        await source.entered.wait()  # closing: giving back
        scope.cancel()
        await anyio.wait_all_tasks_blocked()
        source.release.set()
    assert source.given_back == [(4, 0)]


def test_an_engine_gives_back_the_requests_it_did_not_spend_when_its_block_ends() -> None:
    source = RecordingSource(grant=dg.Grant(5, 0))

    async def body() -> None:
        async with dg.Engine(ScriptedModel(), rpm=600, shared_limit=source) as engine:
            await engine.generate("a")
            assert source.given_back == []

    anyio.run(body)
    assert source.given_back == [(4, 0)]
