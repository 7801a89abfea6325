"""dlgraph-openai against the simulated OpenAI-compatible server, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import contextlib
import email.utils
import logging
import socket
import time
from collections.abc import Callable

import anyio
import attrs
import pytest
from aiohttp import web
from dlgraph_openai import PROFILES, OpenAIBackend
from dlgraph_openai.errors import retry_after_s
from dlgraph_openai.profiles import Profile
from dlgraph_sim import stable_random
from dlgraph_sim.server import ServerConfig, SimModel, SimServer

import dlgraph as dg
from dlgraph._tasks import map_concurrently

KEY = "sk-test-5ecret-key"


def backend(server: SimServer, **options) -> OpenAIBackend:
    return dg.connect(
        "openai",
        **({"base_url": server.url, "model": "sim-1", "api_key": KEY, "profile": "sim"} | options),
    )


def fast_retry() -> dg.RetryPolicy:
    return dg.RetryPolicy(deadline_s=60, initial_wait_s=0.01, max_wait_s=0.05)


async def gather(engine: dg.Engine, prompts: list[str], **options) -> list[str]:
    return await map_concurrently(lambda prompt: engine.generate(prompt, **options), prompts)


async def test_connect_finds_the_openai_plugin_and_generates() -> None:
    async with SimServer(ServerConfig(api_key=KEY)) as server:
        async with dg.Engine(backend(server)) as engine:
            text = await engine.generate("Say hi.", max_tokens=8)
    assert text.strip() and server.count("ok") == 1


async def test_logprob_through_echo_matches_the_servers_token_logprobs() -> None:
    async with SimServer(ServerConfig(api_key=KEY)) as server:
        async with dg.Engine(backend(server)) as engine:
            value = await engine.logprob("The sky is", " blue, mostly")
    model = server.model
    expected = sum(
        model.token_logprob(p, t)
        for p, t in [
            ("The sky is", " blue"),
            ("The sky is blue", ","),
            ("The sky is blue,", " mostly"),
        ]
    )
    assert value == pytest.approx(expected)


@pytest.mark.parametrize("api", ["completions", "chat"])
async def test_the_simulated_server_answers_and_bills_no_more_than_max_tokens(api: str) -> None:
    """A scripted model may write on; a server stops at max_tokens and charges what it sent,
    also after an echoed prompt (where the tokens billed decide a TPM run's wall time)."""
    model = SimModel(complete=lambda prompt, max_tokens, temperature, seed: " one two three four")
    async with SimServer(ServerConfig(api_key=KEY), model) as server:
        async with dg.Engine(backend(server, api=api), cache=False) as engine:
            text = await engine.generate("Count:", max_tokens=2)
            generated = engine.statistics().total.tokens_out
            if api == "completions":
                await engine.logprob("Count:", " one")
    assert text == " one two" and generated == 2
    if api == "completions":  # echo_max_tokens = 1: one token written after the prompt
        assert engine.statistics().total.tokens_out == 3


async def test_logprob_through_vllm_prompt_logprobs_matches_echo() -> None:
    vllm_only = attrs.evolve(PROFILES["sim"], echo_logprobs=False, prompt_logprobs=True)
    async with SimServer(ServerConfig(api_key=KEY)) as server:
        async with (
            dg.Engine(backend(server)) as echo,
            dg.Engine(backend(server, profile=vllm_only)) as vllm,
        ):
            assert await vllm.logprob("The sky is", " blue, mostly") == pytest.approx(
                await echo.logprob("The sky is", " blue, mostly")
            )
    assert sum(1 for a in server.attempts if a.outcome == "ok") == 2


async def test_logprob_without_support_is_a_clear_error() -> None:
    async with SimServer(ServerConfig(api_key=KEY)) as server:
        async with dg.Engine(backend(server, profile="ollama")) as engine:
            with pytest.raises(dg.RequestRejected, match="gives no prompt log-probabilities"):
                await engine.logprob("a", " b", node="answer")


async def test_chat_model_classifies_by_first_token_top_logprobs() -> None:
    async with SimServer(ServerConfig(api_key=KEY)) as server:
        chat = backend(server, api="chat")
        assert chat.capabilities.classification == "top_logprobs"
        async with dg.Engine(chat) as engine:
            probabilities = await engine.classify("Is the sky blue? Answer:", ["yes|Yes", "no|No"])
    alternatives = server.model.alternatives("Is the sky blue? Answer:", 10)
    yes = sum(
        2.718281828**lp for token, lp in alternatives.items() if token.strip().lower() == "yes"
    )
    no = sum(2.718281828**lp for token, lp in alternatives.items() if token.strip().lower() == "no")
    assert probabilities[0] == pytest.approx(yes / (yes + no), abs=1e-6)
    assert server.count() == 1


@pytest.mark.slow  # waits out real retries against a real server
async def test_every_fault_kind_is_survived_and_counted() -> None:
    config = ServerConfig(
        api_key=KEY, error_rate=0.15, drop_rate=0.08, hang_rate=0.05, malformed_rate=0.08, seed=3
    )
    async with SimServer(config) as server:
        # a hang lasts an hour; the client's timeout must outlast any answer the server does
        # give, however busy the machine (with 0.5 s, a slow answer was once taken for a hang)
        # 8% malformed answers are far from a real server's; a call answered so three times
        # in a row would fail by design (RetryPolicy.malformed_attempts, default 3)
        retry = attrs.evolve(fast_retry(), malformed_attempts=10)
        async with dg.Engine(backend(server, timeout_s=3.0), retry=retry) as engine:
            texts = await gather(engine, [f"prompt {i}" for i in range(80)], max_tokens=4)
        total = engine.statistics().total
    assert len(texts) == 80 and all(texts)
    outcomes = {a.outcome for a in server.attempts}
    assert {"error", "drop", "hang", "malformed"} <= outcomes
    failed_attempts = server.count() - server.count("ok")
    assert total.retries == failed_attempts == total.errors
    assert total.calls == server.count()


async def test_poison_prompt_fails_fast_while_its_batch_companions_succeed() -> None:
    async with SimServer(ServerConfig(api_key=KEY)) as server:
        async with dg.Engine(backend(server), coalesce_ms=20) as engine:
            prompts = ["fine 1", "fine 2", "POISON here", "fine 3", "fine 4", "fine 5"]
            outcomes: dict[str, object] = {}
            async with anyio.create_task_group() as group:
                for prompt in prompts:

                    async def one(prompt: str = prompt) -> None:
                        try:
                            outcomes[prompt] = await engine.generate(prompt, node="n")
                        except dg.RequestRejected as error:
                            outcomes[prompt] = error

                    group.start_soon(one)
    error = outcomes.pop("POISON here")
    assert (
        isinstance(error, dg.RequestRejected)
        and "forbidden marker 'POISON'" in str(error)
        and "node 'n'" in str(error)
    )
    assert all(isinstance(text, str) for text in outcomes.values())
    assert server.attempts[0].prompts == tuple(prompts) or len(server.attempts[0].prompts) == 6
    assert server.count("rejected") <= 4  # split in halves, never retried


@pytest.mark.slow  # waits out the pauses the server asks for, in real time
@pytest.mark.parametrize("mode", ["ms", "seconds", "date"])
async def test_a_429_storm_is_followed_by_the_pause_the_server_asked_for(mode: str) -> None:
    config = ServerConfig(
        api_key=KEY, rpm=120, burst_s=1.0, retry_after=mode
    )  # 2 per second, burst of 2
    async with SimServer(config) as server:
        # our limiter knows nothing of the limit: only the server's 429s can slow us down
        async with dg.Engine(backend(server), retry=fast_retry()) as engine:
            texts = await gather(engine, [f"p{i}" for i in range(6)], max_tokens=2)
    assert len(texts) == 6
    # without a shared pause every waiting call would hammer the server again and again
    assert server.count("rate_limited") <= 6
    assert server.count("ok") == 6


async def test_single_flight_sends_identical_concurrent_requests_once() -> None:
    async with SimServer(ServerConfig(api_key=KEY, latency_median_s=0.05)) as server:
        async with dg.Engine(backend(server), cache=False) as engine:
            texts = await gather(engine, ["same prompt"] * 10, max_tokens=4)
    assert len(set(texts)) == 1 and server.count() == 1


async def test_disk_cache_makes_a_second_run_send_nothing(tmp_path) -> None:
    prompts = [f"prompt {i}" for i in range(12)]
    async with SimServer(ServerConfig(api_key=KEY)) as server:
        async with dg.Engine(backend(server), cache=tmp_path / "cache.sqlite") as engine:
            first = await gather(engine, prompts)
            await engine.logprob("context", " target")
        sent = server.count()
        async with dg.Engine(backend(server), cache=tmp_path / "cache.sqlite") as engine:
            second = await gather(engine, prompts)
            await engine.logprob("context", " target")
        assert engine.statistics().total.cache_hits == 13
    assert first == second and server.count() == sent == 13


async def test_budget_stops_with_a_clear_error() -> None:
    async with SimServer(ServerConfig(api_key=KEY)) as server:
        async with dg.Engine(backend(server), budget=dg.Budget(max_calls=5)) as engine:
            for i in range(5):
                await engine.generate(f"p{i}")
            with pytest.raises(dg.BudgetExhausted, match="call budget of 5 spent"):
                await engine.generate("one too many")
            with pytest.raises(dg.BudgetExhausted):
                await gather(engine, [f"q{i}" for i in range(10)])
    assert server.count() == 5


async def test_unreachable_server_is_a_clear_error() -> None:
    with anyio.fail_after(30):
        async with dg.Engine(
            dg.connect("openai", base_url="http://127.0.0.1:9/v1", model="m", api_key=KEY)
        ) as engine:
            with pytest.raises(
                dg.BackendUnavailable, match=r"http://127.0.0.1:9/v1/completions: cannot connect"
            ):
                await engine.generate("hi")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def until(condition: Callable[[], bool]) -> None:
    with anyio.fail_after(10):
        while not condition():
            await anyio.sleep(0.01)


async def test_a_server_once_reached_that_goes_away_is_retried_until_it_is_back() -> None:
    """A restart (or a crash and a supervisor) must not end a run that was being served:
    would fail if every refused connection were final, as it is for a wrong address."""
    config, port = ServerConfig(api_key=KEY), free_port()
    answers: list[str] = []
    async with dg.Engine(backend(SimServer(config, port=port)), retry=fast_retry()) as engine:

        async def ask() -> None:
            answers.append(await engine.generate("while it is away", max_tokens=4))

        async with SimServer(config, port=port):
            await engine.generate("before", max_tokens=4)
        async with contextlib.AsyncExitStack() as stack, anyio.create_task_group() as group:
            group.start_soon(ask)
            await until(lambda: engine.statistics().total.retries >= 2)
            restarted = await stack.enter_async_context(SimServer(config, port=port))
    assert answers == [restarted.model.complete("while it is away", 4, 0.0, 0)]
    assert restarted.count("ok") == 1


async def test_a_server_once_reached_that_stays_away_fails_at_the_deadline_naming_it() -> None:
    config, port = ServerConfig(api_key=KEY), free_port()
    policy = dg.RetryPolicy(deadline_s=0.5, initial_wait_s=0.01)
    async with dg.Engine(backend(SimServer(config, port=port)), retry=policy) as engine:
        async with SimServer(config, port=port):
            await engine.generate("before", max_tokens=4)
        with pytest.raises(dg.RetriesExhausted) as caught:
            await engine.generate("after it went away", max_tokens=4, node="answer")
    message = str(caught.value)
    assert f"127.0.0.1:{port}/v1/completions: cannot connect" in message
    assert (
        "it was reachable before, so it may be restarting" in message and "node 'answer'" in message
    )


async def test_api_key_is_absent_from_logs_errors_and_reprs(caplog) -> None:
    caplog.set_level(logging.DEBUG)
    config = ServerConfig(api_key="another-key", error_rate=0.3, seed=1)
    errors: list[str] = []
    async with SimServer(config) as server:
        wrong = backend(server)
        async with dg.Engine(wrong, retry=fast_retry()) as engine:
            with pytest.raises(dg.RequestRejected) as caught:
                await engine.generate("hi")
            errors.append(str(caught.value))
        assert "HTTP 401" in errors[0]
    text = "\n".join(
        [
            repr(wrong),
            str(attrs.asdict(wrong.profile)),
            *errors,
            *(r.getMessage() for r in caplog.records),
            caplog.text,
        ]
    )
    assert KEY not in text


async def test_key_comes_from_the_profiles_environment_variable(monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    async with SimServer(ServerConfig(api_key=KEY)) as server:
        async with dg.Engine(dg.connect("openai", base_url=server.url, model="sim-1")) as engine:
            assert await engine.generate("hi", max_tokens=2)


def test_retry_after_is_read_in_all_three_forms() -> None:
    assert retry_after_s({"retry-after-ms": "1500"}) == 1.5
    assert retry_after_s({"retry-after": "3"}) == 3.0
    date = email.utils.formatdate(time.time() + 20, usegmt=True)
    assert 18 <= retry_after_s({"retry-after": date}) <= 21
    assert retry_after_s({}) is None


def test_unknown_profile_lists_known_ones() -> None:
    with pytest.raises(
        dg.UnknownBackend,
        match="unknown profile 'nope' \\(known: azure, llama-cpp-python, llamacpp, ollama, openai, sim, vllm\\)",
    ):
        OpenAIBackend("m", base_url="http://x", profile="nope")


def test_azure_profile_needs_a_base_url_and_uses_its_header() -> None:
    with pytest.raises(dg.BackendUnavailable, match="profile 'azure' needs a base_url"):
        OpenAIBackend("m", profile="azure", api_key=KEY)
    azure = OpenAIBackend(
        "m",
        base_url="https://r.openai.azure.com/openai/deployments/d",
        profile="azure",
        api_key=KEY,
    )
    assert azure._headers() == {"api-key": KEY}


async def test_logprob_requests_are_coalesced_into_one_echo_request() -> None:
    async with SimServer(ServerConfig(api_key=KEY)) as server:
        async with dg.Engine(backend(server), coalesce_ms=20) as alone_engine:
            alone = [await alone_engine.logprob("Context number", f" {i}") for i in range(3)]
        sent = server.count()
        async with dg.Engine(backend(server), coalesce_ms=20, cache=False) as engine:
            together = await map_concurrently(
                lambda i: engine.logprob("Context number", f" {i}"), range(3)
            )
    assert together == pytest.approx(alone)
    assert server.count() - sent == 1 and len(server.attempts[-1].prompts) == 3


QUESTION = "Is the sky blue? Answer:"
YES_NO = ["yes|Yes", "no|No"]


def answers(unlikely: str | None = None) -> SimModel:
    """A model sure to answer with a yes/no verbalizer (each far likelier than any other
    word), but for `unlikely`, which no first-token alternative shows."""

    def token_logprob(prefix: str, token: str) -> float:
        if token == unlikely:
            return -9.0
        if token.strip().lower() in ("yes", "no"):
            return -1.0 - stable_random(prefix, token)
        return -5.0 - stable_random(prefix, token)

    return SimModel(token_logprob=token_logprob)


async def distribution(server: SimServer, **options) -> tuple[list[float], list[tuple[str, ...]]]:
    """A yes/no distribution, and the prompts of each request it sent."""
    before = len(server.attempts)
    async with dg.Engine(backend(server, **options)) as engine:
        found = await engine.classify(QUESTION, YES_NO)
    return found, [attempt.prompts for attempt in server.attempts[before:]]


async def test_a_positive_log_probability_is_malformed_alone_and_in_a_coalesced_request() -> None:
    model = SimModel(token_logprob=lambda prefix, token: 0.5)
    async with SimServer(ServerConfig(api_key=KEY), model) as server:
        policy = dg.RetryPolicy(deadline_s=0.3, initial_wait_s=0.01, max_wait_s=0.02)
        async with dg.Engine(backend(server), coalesce_ms=20, retry=policy) as engine:
            with pytest.raises(dg.RetriesExhausted, match="is not a number <= 0"):
                await map_concurrently(
                    lambda i: engine.logprob("Context number", f" {i}"), range(3)
                )
    assert any(len(attempt.prompts) == 3 for attempt in server.attempts)


async def test_a_class_distribution_is_read_from_the_first_token_s_alternatives() -> None:
    """A profile with echo and several prompts per request (vLLM's, the simulated server's)
    would repeat the context in one prompt per verbalizer: it asks the first token's
    alternatives instead, one context, and its values are the exact per-verbalizer ones."""
    async with SimServer(ServerConfig(api_key=KEY), answers()) as server:
        capabilities = backend(server).capabilities
        assert capabilities.continuations == 64 and capabilities.reads_first_token(4)
        joint, sent = await distribution(server)
        separate, each = await distribution(server, max_continuations=0)
    assert sent == [(QUESTION,)] and server.attempts[0].path.endswith("/completions")
    assert len(each) == 4  # a request per verbalizer, the context in each
    assert joint == pytest.approx(separate, abs=1e-9)


@pytest.mark.parametrize("end", [" ", "\n"])
async def test_after_a_context_that_ends_in_whitespace_every_verbalizer_is_a_continuation(
    end: str,
) -> None:
    """A tokenizer may join the whitespace to a verbalizer's first token, which is then not
    the token that follows the context: the first token's alternatives would not be exact."""
    async with SimServer(ServerConfig(api_key=KEY), answers()) as server:
        async with dg.Engine(backend(server)) as engine:
            joint = await engine.classify(QUESTION + end, YES_NO)
        async with dg.Engine(backend(server, max_continuations=0)) as engine:
            separate = await engine.classify(QUESTION + end, YES_NO)
    assert len(server.attempts[0].prompts) == 4  # one request, every verbalizer echoed
    assert joint == pytest.approx(separate, abs=1e-9)


async def test_a_verbalizer_the_alternatives_lack_is_scored_as_a_continuation() -> None:
    async with SimServer(ServerConfig(api_key=KEY), answers(unlikely=" No")) as server:
        joint, sent = await distribution(server)
        separate, _ = await distribution(server, max_continuations=0)
    assert sent == [(QUESTION,), (QUESTION + " No",)]
    assert joint == pytest.approx(separate, abs=1e-9)
    assert joint[1] < 0.5  # " no" alone: still a real probability, not the floor


async def test_without_first_token_classes_every_verbalizer_is_one_request_of_several() -> None:
    """For a server limited by requests rather than tokens: one request whatever the
    alternatives hold, the context in each of its prompts."""
    async with SimServer(ServerConfig(api_key=KEY), answers(unlikely=" No")) as server:
        assert not backend(server, first_token_classes=False).capabilities.reads_first_token(4)
        joint, sent = await distribution(server, first_token_classes=False)
        separate, _ = await distribution(server, max_continuations=0)
    assert sent == [tuple(QUESTION + t for t in (" yes", " Yes", " no", " No"))]
    assert joint == pytest.approx(separate, abs=1e-9)


async def test_max_continuations_0_scores_each_verbalizer_in_a_request_of_its_own() -> None:
    """The scoring of runs before one-call classes, for comparing with them: only the class
    distribution changes (`max_batch`, and so coalescing, stay the profile's)."""
    async with SimServer(ServerConfig(api_key=KEY), answers()) as server:
        chosen = backend(server, max_continuations=0).capabilities
        assert (chosen.continuations, chosen.max_batch) == (0, 64)
        assert not chosen.reads_first_token(4) and chosen.distribution_calls(4) == 4
        separate, each = await distribution(server, max_continuations=0)
        joint, one = await distribution(server)
    assert sorted(each) == sorted((QUESTION + t,) for t in (" yes", " Yes", " no", " No"))
    assert len(one) == 1 and joint == pytest.approx(separate, abs=1e-9)


def test_max_continuations_lowers_what_the_profile_allows_never_raises_it() -> None:
    def continuations(profile: str, value: int) -> int:
        chosen = OpenAIBackend(
            "m", base_url="http://127.0.0.1:1/v1", profile=profile, max_continuations=value
        )
        return chosen.capabilities.continuations

    assert continuations("vllm", 8) == 8 and continuations("vllm", 200) == 64
    assert continuations("llamacpp", 8) == 0


@pytest.mark.parametrize("value", [-1, 257, True, "8"])
def test_a_max_continuations_that_is_no_count_is_refused(value: object) -> None:
    with pytest.raises((TypeError, ValueError), match="max_continuations"):
        OpenAIBackend("m", profile="vllm", max_continuations=value)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["false", 0, 1])
def test_a_first_token_classes_that_is_no_boolean_is_refused(value: object) -> None:
    with pytest.raises(TypeError, match="first_token_classes: expected bool"):
        OpenAIBackend("m", profile="vllm", first_token_classes=value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("profile", "default"), [("openai", True), ("azure", True), ("sim", True), ("vllm", False)]
)
def test_classes_are_read_from_the_first_token_where_the_profile_bills_tokens(
    profile: str, default: bool
) -> None:
    """A hosted API bills and limits tokens; a vLLM server of one's own caches the context a
    list of prompts repeats, so one request of every verbalizer costs it less. Either way the
    backend's setting decides."""

    def reads(**options: object) -> bool:
        chosen = OpenAIBackend("m", base_url="http://127.0.0.1:1/v1", profile=profile, **options)
        return chosen.capabilities.reads_first_token(4)

    assert reads() is default
    assert reads(first_token_classes=True) and not reads(first_token_classes=False)


@pytest.mark.parametrize("profile", ["llamacpp", "llama-cpp-python", "ollama"])
def test_a_profile_without_several_echoed_prompts_per_request_scores_no_continuations(
    profile: str,
) -> None:
    chosen = OpenAIBackend("m", base_url="http://127.0.0.1:1/v1", profile=profile)
    assert chosen.capabilities.continuations == 0
    assert OpenAIBackend("m", profile="vllm").capabilities.continuations == 64


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("echo_max_tokens", -1),
        ("echo_max_tokens", True),
        ("echo_max_tokens", 1.5),
        ("max_batch", 0),
        ("top_logprobs", -2),
        ("max_batch", "8"),
    ],
)
def test_a_hand_written_profile_with_a_bad_count_is_refused_naming_the_field(field, value) -> None:
    with pytest.raises(ValueError, match=f"profile {field}: expected an integer"):
        Profile(name="mine", base_url="http://x", api_key_env=None, **{field: value})


def test_echo_requests_are_bounded_unless_the_profile_knows_zero_means_none() -> None:
    """A server may read max_tokens=0 as "until the context is full" (llama-cpp-python does)."""
    assert Profile(name="mine", base_url=None, api_key_env=None).echo_max_tokens == 1
    assert {name for name, p in PROFILES.items() if p.echo_max_tokens == 0} == {"openai", "azure"}
    assert (
        PROFILES["llama-cpp-python"].echo_logprobs and PROFILES["llama-cpp-python"].max_batch == 1
    )


# -- the context window ------------------------------------------------------------------------


async def test_the_context_window_is_read_from_the_servers_models_on_entering() -> None:
    async with SimServer(ServerConfig(api_key=KEY, context_window=300)) as server:
        model = backend(server)
        assert model.capabilities.context_window is None  # not asked yet
        async with dg.Engine(model) as engine:
            assert engine.backend.capabilities.context_window == 300
            with pytest.raises(dg.RequestRejected, match="maximum context length is 300 tokens"):
                await engine.generate("word " * 290, max_tokens=20)
    assert server.count() == 1  # asking /models is no model call


async def test_a_context_window_given_wins_over_the_servers() -> None:
    async with SimServer(ServerConfig(api_key=KEY, context_window=300)) as server:
        async with backend(server, context_window=120) as model:
            assert model.capabilities.context_window == 120


async def test_a_profile_whose_server_states_no_window_leaves_it_unknown() -> None:
    async with SimServer(ServerConfig(api_key=KEY)) as server:
        async with backend(server) as model:
            assert model.capabilities.context_window is None
        async with backend(server, profile="openai") as model:  # never asks
            assert model.capabilities.context_window is None


async def test_a_server_down_on_entering_leaves_the_window_unknown_and_the_backend_usable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    model = dg.connect("openai", base_url=f"http://127.0.0.1:{port}/v1", model="m", profile="vllm")
    async with model:
        assert model.capabilities.context_window is None
        with pytest.raises(dg.BackendUnavailable, match="cannot connect"):
            await model.generate(dg.GenerateRequest("hi"))


@pytest.mark.parametrize(
    ("body", "window"),
    [
        ({"data": [{"id": "m", "max_model_len": 4096}]}, 4096),  # vLLM
        ({"data": [{"id": "/models/g.gguf", "meta": {"n_ctx": 512, "n_ctx_train": 32768}}]}, 512),
        ({"data": [{"id": "other", "max_model_len": 1}, {"id": "m", "max_model_len": 8}]}, 8),
        ({"data": [{"id": "a", "max_model_len": 1}, {"id": "b", "max_model_len": 8}]}, None),
        ({"data": [{"id": "m", "max_model_len": True}]}, None),
        ({"data": [{"id": "m", "max_model_len": -5}]}, None),
        ({"data": "m"}, None),
        ([1, 2], None),
    ],
)
def test_the_window_is_read_from_either_servers_model_list_and_nothing_else(body, window) -> None:
    from dlgraph_openai.answers import context_window

    assert context_window(body, "m") == window


@pytest.mark.parametrize("api", ["completions", "chat"])
async def test_samples_of_one_prompt_are_one_request_of_n_billed_the_prompt_once(api: str) -> None:
    """Five posterior samples of one prompt: one request with ``n``, each sample the one its
    seed gives in a request of its own, and the prompt's tokens counted once."""
    prompt = "Think of a word that ends in e:"
    async with SimServer(ServerConfig(api_key=KEY)) as server:
        async with dg.Engine(backend(server, api=api), cache=False) as engine:
            together = await engine.samples(prompt, 5, temperature=1.0, max_tokens=6, seed=2)
            usage = engine.statistics().total
        requests = server.count("ok")
        async with dg.Engine(backend(server, api=api, max_samples=0), cache=False) as engine:
            each = await engine.samples(prompt, 5, temperature=1.0, max_tokens=6, seed=2)
            alone = engine.statistics().total
    assert requests == 1 and server.count("ok") == 6
    assert together == each and len(set(together)) == 5
    assert usage.tokens_in * 5 == alone.tokens_in
    assert usage.tokens_out == alone.tokens_out


@pytest.mark.parametrize(
    ("profile", "samples"),
    [("openai", 128), ("azure", 128), ("vllm", 64), ("sim", 64), ("llamacpp", 0), ("ollama", 0)],
)
def test_samples_are_drawn_together_where_the_profile_s_server_takes_n(
    profile: str, samples: int
) -> None:
    def drawn(**options: object) -> int:
        chosen = OpenAIBackend("m", base_url="http://127.0.0.1:1/v1", profile=profile, **options)
        return chosen.capabilities.samples

    assert drawn() == samples
    assert drawn(max_samples=4) == min(4, samples) and drawn(max_samples=0) == 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"model": ""}, "model: expected the model's name"),
        ({"model": None}, "model: expected text, got NoneType"),
        ({"max_batch": -3}, "max_batch must be > 0"),
        ({"max_batch": 2.0}, "max_batch: expected int"),
        ({"timeout_s": float("nan")}, "timeout_s"),
        ({"connections": True}, "connections: expected int"),
        ({"tokenizer": 4}, "'tokenizer' must be callable"),
    ],
)
def test_an_option_of_the_wrong_kind_or_range_is_refused_naming_it(options, message) -> None:
    """Checked on construction, as a config file's are, not at the first request."""
    with pytest.raises((TypeError, ValueError), match=message):
        OpenAIBackend(**({"model": "m", "profile": "vllm"} | options))


@pytest.mark.parametrize("value", [-1, 129, True, "8"])
def test_a_max_samples_that_is_no_count_is_refused(value: object) -> None:
    with pytest.raises((TypeError, ValueError), match="max_samples"):
        OpenAIBackend("m", profile="vllm", max_samples=value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("max_samples = -2", r"max_samples must be >= 0, got -2"),
        ('max_samples = "all"', r"max_samples: expected int, got 'all'"),
        ('first_token_classes = "no"', r"first_token_classes: expected bool"),
        ("max_batch = 0", r"max_batch must be > 0, got 0"),
        ('max_batch = "8"', r"max_batch: expected int, got '8'"),
        ("timeout_s = -1", r"timeout_s must be > 0, got -1"),
        ('timeout_s = "1m"', r"timeout_s: expected float, got '1m'"),
        ("connections = 0", r"connections must be > 0, got 0"),
        ("api_key = 12345", r"api_key: expected text, got int"),
        ('tokenizer = "tiktoken"', r"'tokenizer' must be callable"),
    ],
)
def test_a_config_with_a_wrong_openai_option_names_file_and_section(
    tmp_path, option: str, message: str
) -> None:
    from dlgraph.config import RunConfig

    config = tmp_path / "run.toml"
    config.write_text(
        '[backend]\nname = "openai"\n'
        f'options = {{ base_url = "http://127.0.0.1:1/v1", model = "m", profile = "vllm", {option} }}\n'
        '[data]\ntask = "tweets"\n[network]\nkind = "dln1"\n'
    )
    with pytest.raises(dg.ConfigError, match=rf"run.toml: \[backend\] {message}"):
        RunConfig.read(config).forward.build()


async def test_a_request_of_more_prompts_than_the_server_takes_is_split_until_taken() -> None:
    """`max_batch` set above the server's: a class of six verbalizers in one echo request is
    refused (400); its first verbalizer alone is taken, the others go in requests of three,
    with the values of one request each."""
    classes = ["yes|Yes|YES", "no|No|NO"]
    async with SimServer(ServerConfig(api_key=KEY, max_batch=4), answers()) as server:
        chosen = backend(server, max_batch=16, first_token_classes=False)
        async with dg.Engine(chosen, retry=fast_retry(), coalesce_ms=0) as engine:
            joint = await engine.classify(QUESTION, classes)
        sent = [(a.outcome, len(a.prompts)) for a in server.attempts]
        async with dg.Engine(backend(server, max_continuations=0)) as engine:
            separate = await engine.classify(QUESTION, classes)
    assert sent[:2] == [("rejected", 0), ("ok", 1)]  # the refused six are not recorded
    assert sorted(sent[2:]) == [("ok", 2), ("ok", 3)]
    assert joint == pytest.approx(separate, abs=1e-9)


async def test_a_server_that_ignores_n_gets_one_sample_per_request() -> None:
    """A proxy or server that answers one choice whatever ``n`` says: the request is refused
    at once (asked again, it would answer the same), its first sample is drawn alone, and
    every later sample goes in a request of its own; no retry spins to the deadline."""
    answered: list[int] = []

    async def one_choice(request: web.Request) -> web.Response:
        body = await request.json()
        answered.append(int(body.get("n", 1)))
        text = f" word {body['seed']}"
        return web.json_response({"choices": [{"index": 0, "text": text}]})

    app = web.Application()
    app.router.add_post("/v1/completions", one_choice)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        chosen = dg.connect(
            "openai", base_url=f"http://127.0.0.1:{port}/v1", model="m", profile="vllm"
        )
        async with dg.Engine(chosen, retry=fast_retry()) as engine:
            first = await engine.samples("Say:", 5, temperature=1.0)
            second = await engine.samples("Say again:", 3, temperature=1.0)
    finally:
        await runner.cleanup()
    assert first == [f" word {seed}" for seed in range(5)] and len(second) == 3
    assert answered[:2] == [5, 1]  # refused, then one alone (taken: the size was refused)
    assert answered[-3:] == [1, 1, 1]  # learnt: one sample per request from then on
    assert len(answered) <= 2 * 5 + 3  # never more than two requests a sample
