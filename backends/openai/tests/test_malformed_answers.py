"""A hostile or broken server: 200 answers that are not answers, keys echoed back, trio; and
the two shapes first-token alternatives come in, read alike."""

from __future__ import annotations

import json
import math
import re

import anyio
import pytest
from aiohttp import web

import dlgraph as dg

KEY = "sk-test-5ecret-key"


class AnswerServer:
    """Answers each request with the next body of a script (the last one repeats)."""

    def __init__(self, *bodies: object, status: int = 200) -> None:
        self.bodies = list(bodies)
        self.status = status
        self.requests = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        body = self.bodies[min(self.requests, len(self.bodies)) - 1]
        text = body if isinstance(body, str) else json.dumps(body)
        return web.Response(text=text, status=self.status, content_type="application/json")

    async def __aenter__(self) -> AnswerServer:
        app = web.Application()
        app.router.add_post("/v1/completions", self.handle)
        app.router.add_post("/v1/chat/completions", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


def echo(tokens: list[str], logprobs: list[float | None], offsets: list[int]) -> dict[str, object]:
    return {
        "choices": [
            {
                "index": 0,
                "text": "".join(tokens),
                "logprobs": {"tokens": tokens, "token_logprobs": logprobs, "text_offset": offsets},
            }
        ]
    }


def llama_server_alternatives(alternatives: list[dict[str, object]]) -> dict[str, object]:
    """A /v1/completions answer as llama-server shapes it: the chat shape, one entry per token."""
    token = {"id": 3, "token": " yes", "bytes": [32, 121, 101, 115], "logprob": -0.25}
    entry = token | {"top_logprobs": alternatives}
    return {"choices": [{"index": 0, "text": " yes", "logprobs": {"content": [entry]}}]}


MALFORMED = [
    (
        "a null text",
        "generate",
        {"choices": [{"index": 0, "text": None}]},
        r"choice 0 has no text \(None\)",
    ),
    ("a choice without text", "generate", {"choices": [{"index": 0}]}, r"choice 0 has no text"),
    ("no choices", "generate", {"id": "x"}, r"answer without choices"),
    ("an empty choice list", "generate", {"choices": []}, r"answer without choices"),
    (
        "a choice that is not an object",
        "generate",
        {"choices": ["hi"]},
        r"a choice is not an object",
    ),
    ("a JSON list", "generate", [1, 2], r"the answer is not a JSON object"),
    ("not JSON", "generate", '{"choices": [', r"malformed JSON in the answer"),
    (
        "two answers for one prompt",
        "generate",
        {"choices": [{"index": 0, "text": "a"}, {"index": 1, "text": "b"}]},
        r"2 answers for 1 prompts",
    ),
    (
        "a text that is a number",
        "generate",
        {"choices": [{"index": 0, "text": 7}]},
        r"choice 0 has no text \(7\)",
    ),
    (
        "echo arrays of mismatched lengths",
        "logprob",
        echo(["The", " sky", " is", " blue"], [None, -1.0, -1.0], [0, 3, 7, 10]),
        r"mismatched lengths",
    ),
    (
        "echo tokens that stop short of the target",
        "logprob",
        echo(["The", " sky", " is"], [None, -1.0, -1.0], [0, 3, 7]),
        r"do not cover the target",
    ),
    (
        "echo without offsets",
        "logprob",
        {"choices": [{"index": 0, "text": "x", "logprobs": {}}]},
        r"echo answer without token offsets",
    ),
    (
        "an echo log-prob that is text",
        "logprob",
        echo(["The", " sky", " is", " blue"], [None, -1.0, -1.0, "low"], [0, 3, 7, 10]),
        r"expected a number",
    ),
    (
        "a chat answer without a message",
        "chat",
        {"choices": [{"index": 0}]},
        r"choice without a message",
    ),
    (
        "llama-server's shape with no alternatives",
        "top_logprobs",
        llama_server_alternatives([]),
        r"no first-token log-probabilities in the answer \(choice 0: logprobs = \{'content': "
        r"\[\{'id': int, 'token': str, 'bytes': \[int, \.\.\. \(4 items\)\], 'logprob': float, "
        r"'top_logprobs': \[\]\}\]\}\)",
    ),
    (
        "null logprobs",
        "top_logprobs",
        {"choices": [{"index": 0, "text": " yes", "logprobs": None}]},
        r"no first-token log-probabilities in the answer \(choice 0: logprobs = null\)",
    ),
    (
        "OpenAI's shape with nothing at the first token",
        "top_logprobs",
        {
            "choices": [
                {
                    "index": 0,
                    "text": " yes",
                    "logprobs": {
                        "tokens": [" yes"],
                        "token_logprobs": [-0.1],
                        "top_logprobs": [{}],
                    },
                }
            ]
        },
        r"no first-token log-probabilities .*'top_logprobs': \[\{\}\]",
    ),
    (
        "an alternative without a log-probability",
        "top_logprobs",
        llama_server_alternatives([{"id": 3, "token": " yes"}]),
        r"no first-token log-probabilities .*'top_logprobs': \[\{'id': int, 'token': str\}\]",
    ),
    (
        "an alternative whose log-probability is text",
        "top_logprobs",
        llama_server_alternatives([{"id": 3, "token": " yes", "logprob": "high"}]),
        r"expected a number, got 'high'",
    ),
    (
        "a chat answer with no token in its logprobs",
        "chat top_logprobs",
        {
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": ""},
                    "logprobs": {"content": []},
                }
            ]
        },
        r"no first-token log-probabilities .*logprobs = \{'content': \[\]\}",
    ),
    (
        "samples whose choice indexes repeat",
        "samples",
        {
            "choices": [
                {"index": 0, "text": "a"},
                {"index": 0, "text": "b"},
                {"index": 2, "text": "c"},
            ]
        },
        r"choice indexes are not 0..2",
    ),
    (
        "a chat sample without a message",
        "chat samples",
        {"choices": [{"index": i} for i in range(3)]},
        r"choice without a message",
    ),
    (
        "usage of the wrong type, and no text",
        "generate",
        {"choices": [{"index": 0, "text": None}], "usage": {"prompt_tokens": "many"}},
        r"has no text",
    ),
]


@pytest.mark.parametrize("name, kind, body, message", MALFORMED, ids=[m[0] for m in MALFORMED])
async def test_a_malformed_200_answer_is_a_malformed_answer_error_naming_the_endpoint(
    name, kind, body, message
) -> None:
    async with AnswerServer(body) as server:
        profile = "sim"
        api = "chat" if kind.startswith("chat") else "completions"
        backend = dg.connect(
            "openai", base_url=server.url, model="m", api_key=KEY, profile=profile, api=api
        )
        async with backend:
            with pytest.raises(dg.MalformedAnswer) as caught:
                if kind == "logprob":
                    await backend.logprob(dg.LogprobRequest("The sky is", " blue"))
                elif kind.endswith("top_logprobs"):
                    await backend.top_logprobs(dg.TopLogprobsRequest("Is it hot?", count=5))
                elif kind.endswith("samples"):
                    await backend.samples(dg.SamplesRequest("hi", count=3))
                else:
                    await backend.generate(dg.GenerateRequest("hi"))
    assert re.search(message, str(caught.value)), str(caught.value)
    assert f"127.0.0.1:{server.port}/v1" in str(caught.value)


ALTERNATIVES = {" yes": -0.4, " no": -1.2, "Yes": -3.0}


def openai_alternatives(alternatives: dict[str, float]) -> dict[str, object]:
    """A /v1/completions answer as OpenAI (and vLLM, llama-cpp-python) shape it."""
    logprobs = {
        "tokens": [" yes"],
        "token_logprobs": [-0.4],
        "top_logprobs": [alternatives],
        "text_offset": [10],
    }
    return {"choices": [{"index": 0, "text": " yes", "logprobs": logprobs}]}


def listed(alternatives: dict[str, float]) -> list[dict[str, object]]:
    return [
        {"id": number, "token": token, "bytes": list(token.encode()), "logprob": value}
        for number, (token, value) in enumerate(alternatives.items())
    ]


@pytest.mark.parametrize(
    "body",
    [openai_alternatives(ALTERNATIVES), llama_server_alternatives(listed(ALTERNATIVES))],
    ids=["openai", "llama-server"],
)
async def test_first_token_alternatives_are_read_alike_from_either_shape(body) -> None:
    """Would fail with the reading issue 22 found: llama-server's list came back empty."""
    async with AnswerServer(body) as server:
        backend = dg.connect("openai", base_url=server.url, model="m", profile="llamacpp")
        async with backend:
            found = (await backend.top_logprobs(dg.TopLogprobsRequest("Is it hot?", count=5))).value
    assert found == ALTERNATIVES


async def test_alternatives_that_print_alike_are_summed() -> None:
    """Two token ids, one text: reading only the last would drop the first one's mass."""
    body = llama_server_alternatives(listed({" no": -1.2}) + listed({" no": -2.0}))
    async with AnswerServer(body) as server:
        backend = dg.connect("openai", base_url=server.url, model="m", profile="llamacpp")
        async with backend:
            found = (await backend.top_logprobs(dg.TopLogprobsRequest("Is it hot?", count=5))).value
    assert found == pytest.approx({" no": math.log(math.exp(-1.2) + math.exp(-2.0))})


async def test_the_llamacpp_profile_turns_llama_servers_alternatives_into_classes() -> None:
    """The issue's symptom end to end: this distribution came back as exactly 0.5 / 0.5."""
    async with AnswerServer(llama_server_alternatives(listed(ALTERNATIVES))) as server:
        backend = dg.connect("openai", base_url=server.url, model="m", profile="llamacpp")
        policy = dg.RetryPolicy(deadline_s=1, initial_wait_s=0.01)
        async with dg.Engine(backend, retry=policy) as engine:
            distribution = await engine.classify("Is it hot? Answer:", ["yes", "no"])
    yes, no = math.exp(-0.4) + math.exp(-3.0), math.exp(-1.2)
    assert distribution == pytest.approx([yes / (yes + no), no / (yes + no)])


async def test_a_malformed_answer_is_retried_and_the_whole_one_returned() -> None:
    async with AnswerServer(
        {"choices": [{"index": 0, "text": None}]}, {"choices": [{"index": 0, "text": "fine"}]}
    ) as server:
        backend = dg.connect("openai", base_url=server.url, model="m", api_key=KEY, profile="sim")
        async with dg.Engine(backend, retry=dg.RetryPolicy(initial_wait_s=0.01)) as engine:
            assert await engine.generate("hi", node="n") == "fine"
        assert engine.statistics().total.retries == 1 and server.requests == 2


async def test_an_answer_that_stays_malformed_fails_with_the_node_and_the_endpoint() -> None:
    async with AnswerServer({"choices": [{"index": 0, "text": None}]}) as server:
        backend = dg.connect("openai", base_url=server.url, model="m", api_key=KEY, profile="sim")
        policy = dg.RetryPolicy(deadline_s=0.3, initial_wait_s=0.01, max_wait_s=0.05)
        async with dg.Engine(backend, retry=policy) as engine:
            with pytest.raises(dg.RetriesExhausted) as caught:
                await engine.generate("hi", node="n")
    assert isinstance(caught.value.__cause__, dg.MalformedAnswer)
    assert "node 'n'" in str(caught.value) and "has no text" in str(caught.value)


async def test_an_answer_malformed_again_and_again_fails_after_three_paid_attempts() -> None:
    """Not at the retry deadline, five minutes and dozens of paid requests later."""
    async with AnswerServer({"choices": [{"index": 0, "text": None}]}) as server:
        backend = dg.connect("openai", base_url=server.url, model="m", api_key=KEY, profile="sim")
        async with dg.Engine(backend, retry=dg.RetryPolicy(initial_wait_s=0.01)) as engine:
            with pytest.raises(dg.RetriesExhausted, match="malformed 3 times in a row"):
                await engine.generate("hi", node="n")
    assert server.requests == 3 and engine.statistics().total.retries == 2


@pytest.mark.parametrize("count", [-1_000_000, "-5", 1e400, "lots"])
async def test_a_token_count_that_is_negative_or_nonsense_is_estimated_and_the_budget_holds(
    count: object,
) -> None:
    """A hostile server's negative usage would pay a token budget back call after call."""
    body = {
        "choices": [{"index": 0, "text": " fine"}],
        "usage": {"prompt_tokens": count, "completion_tokens": count},
    }
    async with AnswerServer(body) as server:
        backend = dg.connect("openai", base_url=server.url, model="m", api_key=KEY, profile="sim")
        async with dg.Engine(backend, budget=dg.Budget(max_tokens=100), cache=False) as engine:
            with pytest.raises(dg.BudgetExhausted):
                for _ in range(30):
                    await engine.generate("Say something kind about the weather.", max_tokens=8)
            total = engine.statistics().total
    assert 0 < total.tokens_in and 0 < total.tokens_out and server.requests < 30


async def test_a_key_the_server_echoes_or_the_url_carries_appears_in_no_error() -> None:
    body = {"error": {"message": f"invalid api key {KEY} for user"}}
    async with AnswerServer(body, status=401) as server:
        backend = dg.connect("openai", base_url=server.url, model="m", api_key=KEY, profile="sim")
        async with backend:
            with pytest.raises(dg.RequestRejected) as echoed:
                await backend.generate(dg.GenerateRequest("hi"))
        in_url = server.url.replace("http://", f"http://user:{KEY}@")
        backend = dg.connect("openai", base_url=in_url, model="m", profile="sim")
        async with backend:
            with pytest.raises(dg.RequestRejected) as from_url:
                await backend.generate(dg.GenerateRequest("hi"))
        with pytest.raises(
            dg.BackendUnavailable, match="carries credentials and an API key"
        ) as twice:
            dg.connect("openai", base_url=in_url, model="m", api_key=KEY, profile="sim")
    for error in (echoed.value, from_url.value):
        assert KEY not in str(error) and "HTTP 401" in str(error)
    assert "user:***@127.0.0.1" in str(from_url.value) and KEY not in str(twice.value)
    assert KEY not in backend.identity and KEY not in repr(backend)


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_under_trio_the_backend_says_it_needs_asyncio(anyio_backend) -> None:
    backend = dg.connect("openai", base_url="http://127.0.0.1:9/v1", model="m", api_key=KEY)
    with pytest.raises(dg.BackendUnavailable, match="dlgraph-openai runs on asyncio"):
        async with dg.Engine(backend):
            pass
    assert anyio  # the test ran on trio through anyio's pytest plugin
