"""A simulated OpenAI-compatible server on 127.0.0.1, for tests and benchmarks.

Completions (string or list prompts, echo, logprobs, vLLM's prompt_logprobs), chat completions
(with top_logprobs), models; token-bucket RPM and TPM limits answering 429 with
``retry-after-ms``, ``retry-after`` (seconds or HTTP date) or nothing, and ``x-ratelimit-*``
headers; seeded lognormal latency; seeded faults (500/502/503, dropped connections, hangs past
the client's timeout, malformed JSON) and poison prompts answered with 400. Every attempt is
recorded so that tests can count them.

    python -m dlgraph_sim.server --port 8000 --rpm 600 --error-rate 0.01
"""

from __future__ import annotations

import argparse
import asyncio
import email.utils
import json
import math
import random
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import attrs
from aiohttp import web

from dlgraph import plugin
from dlgraph_sim import stable_random

_TOKEN = re.compile(r"\s*(?:\w+|[^\w\s])|\s+")
WORDS = (
    "the",
    "a",
    "step",
    "left",
    "right",
    "yes",
    "no",
    "because",
    "so",
    "we",
    "turn",
    "walk",
    "back",
    "start",
)


def tokenize(text: str) -> list[tuple[int, str]]:
    """(offset, token) pairs covering the text exactly: a token is a word or a symbol with the
    whitespace before it."""
    return [(match.start(), match.group()) for match in _TOKEN.finditer(text)]


def token_id(token: str) -> int:
    return int(stable_random("id", token) * 50_000)


@attrs.frozen
class SimModel:
    """What the simulated server says. Replace any function to script it."""

    complete: Callable[[str, int, float, int], str] = attrs.field(default=None)
    token_logprob: Callable[[str, str], float] = attrs.field(default=None)

    def __attrs_post_init__(self) -> None:
        if self.complete is None:
            object.__setattr__(self, "complete", _default_complete)
        if self.token_logprob is None:
            object.__setattr__(self, "token_logprob", _default_token_logprob)

    def alternatives(self, prefix: str, count: int) -> dict[str, float]:
        candidates = [" " + word for word in WORDS] + [" Yes", " No"]
        scored = sorted(((self.token_logprob(prefix, c), c) for c in candidates), reverse=True)[
            :count
        ]
        return {token: logprob for logprob, token in scored}


def _default_complete(prompt: str, max_tokens: int, temperature: float, seed: int) -> str:
    sample = seed if temperature > 0 else 0
    count = max(1, min(max_tokens, 3 + int(stable_random(prompt, sample, "length") * 12)))
    return "".join(
        " " + WORDS[int(stable_random(prompt, sample, i) * len(WORDS))] for i in range(count)
    )


def _default_token_logprob(prefix: str, token: str) -> float:
    return -(0.05 + 4.0 * stable_random(prefix[-64:], token))


RETRY_AFTER = ("ms", "seconds", "date", "none")


def _rate(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """A share of attempts, from 0 to 1."""
    if plugin.check_number(attribute.name, value, 0) > 1:
        raise ValueError(f"{attribute.name} must be <= 1 (a share of attempts), got {value!r}")


def _retry_after(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value not in RETRY_AFTER:
        raise ValueError(f"retry_after: expected one of {', '.join(RETRY_AFTER)}, got {value!r}")


def _text(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """Text; non-empty for the model's name (clients send it back), None where allowed."""
    if value is None and attribute.name != "model":
        return
    if not isinstance(value, str):
        # the type alone: the value may be a key given the wrong way (bytes)
        raise TypeError(f"{attribute.name}: expected text, got {type(value).__name__}")
    if not value and attribute.name == "model":
        raise ValueError("model: expected a non-empty name")


@attrs.frozen(kw_only=True)
class ServerConfig:
    """How the simulated server behaves; checked on construction (each field named), so that
    a benchmark or a test cannot run against a server that quietly ignores a bad setting."""

    model: str = attrs.field(default="sim-1", validator=_text)
    api_key: str | None = attrs.field(default=None, validator=_text, repr=False)
    rpm: float | None = attrs.field(default=None, validator=plugin.number(0, above=True))
    tpm: float | None = attrs.field(default=None, validator=plugin.number(0, above=True))
    burst_s: float = attrs.field(default=1.0, validator=plugin.number(0, above=True, none=False))
    retry_after: str = attrs.field(default="ms", validator=_retry_after)
    """How a 429 says when to come back: "ms" (retry-after-ms), "seconds", "date" or "none"."""
    latency_median_s: float = attrs.field(default=0.0, validator=plugin.number(0, none=False))
    latency_sigma: float = attrs.field(default=0.5, validator=plugin.number(0, none=False))
    error_rate: float = attrs.field(default=0.0, validator=_rate)
    """Share of attempts answered 500, 502 or 503."""
    drop_rate: float = attrs.field(default=0.0, validator=_rate)
    """Share of attempts whose connection is closed without an answer."""
    hang_rate: float = attrs.field(default=0.0, validator=_rate)
    """Share of attempts that never answer (past any sane client timeout)."""
    malformed_rate: float = attrs.field(default=0.0, validator=_rate)
    poison: str | None = attrs.field(default="POISON", validator=_text)
    """A prompt containing this text is refused with 400."""
    max_batch: int = attrs.field(default=64, validator=plugin.integer(1, none=False))
    context_window: int | None = attrs.field(default=None, validator=plugin.integer(1))
    """The most tokens one prompt and its max_tokens may hold (as vLLM, stated in /v1/models
    as ``max_model_len``); a request over it is refused with 400."""
    seed: int = attrs.field(default=0, validator=plugin.integer(none=False))


@attrs.frozen
class Attempt:
    at: float
    path: str
    status: int
    outcome: str
    """ok, rate_limited, error, drop, hang, malformed, rejected, unauthorized"""
    prompts: tuple[str, ...]


@attrs.define
class _Bucket:
    rate: float
    capacity: float
    level: float
    updated: float

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now

    def wait_s(self, cost: float) -> float:
        return (
            0.0
            if self.level >= min(cost, self.capacity)
            else (min(cost, self.capacity) - self.level) / self.rate
        )


class _Rejection(Exception):
    def __init__(
        self, status: int, message: str, outcome: str, headers: dict[str, str] | None = None
    ):
        super().__init__(message)
        self.status, self.message, self.outcome, self.headers = (
            status,
            message,
            outcome,
            headers or {},
        )


@attrs.define(eq=False)
class SimServer:
    config: ServerConfig = attrs.field(factory=ServerConfig)
    model: SimModel = attrs.field(factory=SimModel)
    port: int = 0
    attempts: list[Attempt] = attrs.field(factory=list, init=False)
    _rng: random.Random = attrs.field(init=False)
    _buckets: dict[str, _Bucket] = attrs.field(factory=dict, init=False)
    _runner: web.AppRunner | None = attrs.field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        self._rng = random.Random(self.config.seed)
        now = time.monotonic()
        for name, limit in (("requests", self.config.rpm), ("tokens", self.config.tpm)):
            if limit:
                capacity = max(1.0, limit / 60 * self.config.burst_s)
                self._buckets[name] = _Bucket(limit / 60, capacity, capacity, now)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def count(self, outcome: str | None = None) -> int:
        return sum(1 for a in self.attempts if outcome is None or a.outcome == outcome)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/sim/attempts", self._attempt_counts)
        return app

    async def __aenter__(self) -> SimServer:
        self._runner = web.AppRunner(
            self.app(), access_log=None, handle_signals=False, shutdown_timeout=0.1
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # -- the gate every attempt passes -----------------------------------------------------

    async def _gate(self, request: web.Request, prompts: list[str], cost: int) -> None:
        """Auth, limits, faults and latency; raises _Rejection or drops the connection."""
        if self.config.api_key is not None:
            given = request.headers.get("Authorization", "").removeprefix(
                "Bearer "
            ) or request.headers.get("api-key")
            if given != self.config.api_key:
                raise _Rejection(401, "invalid api key", "unauthorized")
        self._check_limits(cost)
        draw = self._rng.random()
        config = self.config
        if draw < config.error_rate:
            status = self._rng.choice((500, 502, 503))
            raise _Rejection(status, f"simulated server error {status}", "error")
        draw -= config.error_rate
        if draw < config.drop_rate:
            self._record(request, 0, "drop", prompts)
            assert request.transport is not None
            request.transport.abort()
            raise asyncio.CancelledError
        draw -= config.drop_rate
        if draw < config.hang_rate:
            self._record(request, 0, "hang", prompts)
            await asyncio.sleep(3600)
        draw -= config.hang_rate
        malformed = draw < config.malformed_rate
        if config.poison and any(config.poison in p for p in prompts):
            raise _Rejection(
                400,
                f"prompt rejected: it contains the forbidden marker {config.poison!r}",
                "rejected",
            )
        if config.latency_median_s > 0:
            await asyncio.sleep(
                config.latency_median_s * math.exp(self._rng.gauss(0, config.latency_sigma))
            )
        if malformed:
            raise _Rejection(200, '{"choices": [{"text": ', "malformed")

    def _check_limits(self, cost: int) -> None:
        now = time.monotonic()
        waits = []
        for name, needed in (("requests", 1), ("tokens", cost)):
            bucket = self._buckets.get(name)
            if bucket:
                bucket.refill(now)
                waits.append(bucket.wait_s(needed))
        if any(w > 0 for w in waits):
            raise _Rejection(
                429,
                "rate limit reached, slow down",
                "rate_limited",
                self._retry_headers(max(waits)),
            )
        for name, needed in (("requests", 1), ("tokens", cost)):
            if name in self._buckets:
                self._buckets[name].level -= needed

    def _retry_headers(self, wait_s: float) -> dict[str, str]:
        mode = self.config.retry_after
        if mode == "ms":
            return {"retry-after-ms": str(max(1, math.ceil(wait_s * 1000)))}
        if mode == "seconds":
            return {"retry-after": str(max(1, math.ceil(wait_s)))}
        if mode == "date":
            return {
                "retry-after": email.utils.formatdate(time.time() + max(1.0, wait_s), usegmt=True)
            }
        return {}

    def _limit_headers(self) -> dict[str, str]:
        headers = {}
        for name, limit in (("requests", self.config.rpm), ("tokens", self.config.tpm)):
            bucket = self._buckets.get(name)
            if bucket and limit:
                headers[f"x-ratelimit-limit-{name}"] = str(int(limit))
                headers[f"x-ratelimit-remaining-{name}"] = str(max(0, int(bucket.level)))
                headers[f"x-ratelimit-reset-{name}"] = (
                    f"{max(0.0, (bucket.capacity - bucket.level) / bucket.rate):.3f}s"
                )
        return headers

    def _record(self, request: web.Request, status: int, outcome: str, prompts: list[str]) -> None:
        self.attempts.append(
            Attempt(time.monotonic(), request.path, status, outcome, tuple(prompts))
        )

    async def _serve(
        self,
        request: web.Request,
        handler: Callable[[dict[str, Any]], tuple[list[str], int, Callable[[], dict[str, Any]]]],
    ) -> web.StreamResponse:
        """Serve one request: `handler` reads its body into the prompts, max_tokens and a
        function that builds the answer; a request is charged its prompts plus max_tokens
        for each of its ``n`` choices of each."""
        try:
            body = await request.json()
            prompts, max_tokens, answer = handler(body)
            choices = _choice_count(body)
        except (ValueError, KeyError, TypeError) as error:
            self._record(request, 400, "rejected", [])
            return _error(400, f"malformed request: {error}", {})
        sizes = [len(tokenize(prompt)) for prompt in prompts]
        try:
            await self._gate(request, prompts, sum(sizes) + max_tokens * len(prompts) * choices)
            self._check_window(max(sizes) + max_tokens)
        except _Rejection as rejection:
            self._record(request, rejection.status, rejection.outcome, prompts)
            headers = rejection.headers | self._limit_headers()
            if rejection.outcome == "malformed":
                return web.Response(
                    text=rejection.message, content_type="application/json", headers=headers
                )
            return _error(rejection.status, rejection.message, headers)
        self._record(request, 200, "ok", prompts)
        return web.json_response(answer(), headers=self._limit_headers())

    # -- endpoints -------------------------------------------------------------------------

    async def _attempt_counts(self, request: web.Request) -> web.Response:
        """Attempts by outcome, for a client in another process (benchmarks)."""
        counts: dict[str, int] = {}
        times: dict[str, list[float]] = {}
        for attempt in self.attempts:
            counts[attempt.outcome] = counts.get(attempt.outcome, 0) + 1
            times.setdefault(attempt.outcome, []).append(attempt.at)
        return web.json_response(
            {"attempts": len(self.attempts), "by_outcome": counts, "times": times}
        )

    async def _models(self, request: web.Request) -> web.Response:
        model: dict[str, Any] = {"id": self.config.model, "object": "model"}
        if self.config.context_window is not None:
            model["max_model_len"] = self.config.context_window
        return web.json_response({"object": "list", "data": [model]})

    def _check_window(self, longest: int) -> None:
        """Refuse a request whose longest prompt and max_tokens exceed the context window."""
        window = self.config.context_window
        if window is not None and longest > window:
            raise _Rejection(
                400,
                f"This model's maximum context length is {window} tokens. However, you "
                f"requested {longest} tokens. Please reduce the length of the prompt.",
                "rejected",
            )

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, self._completion_answer)

    def _completion_answer(
        self, body: dict[str, Any]
    ) -> tuple[list[str], int, Callable[[], dict[str, Any]]]:
        prompt = body["prompt"]
        prompts = [prompt] if isinstance(prompt, str) else [str(p) for p in prompt]
        if not prompts or len(prompts) > self.config.max_batch:
            raise ValueError(f"between 1 and {self.config.max_batch} prompts per request")
        max_tokens = int(body.get("max_tokens", 16))

        def answer() -> dict[str, Any]:
            n = _choice_count(body)
            choices = [
                self._completion_choice(i * n + j, p, body | {"seed": _seed(body) + j}, max_tokens)
                for i, p in enumerate(prompts)
                for j in range(n)
            ]
            prompt_tokens = sum(len(tokenize(p)) for p in prompts)
            completion_tokens = sum(
                len(
                    tokenize(
                        c["text"][len(prompts[c["index"] // n]) :]
                        if body.get("echo")
                        else c["text"]
                    )
                )
                for c in choices
            )
            return {
                "id": "cmpl-sim",
                "object": "text_completion",
                "model": self.config.model,
                "choices": choices,
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            }

        return prompts, max_tokens, answer

    def _generate(self, prompt: str, body: dict[str, Any], max_tokens: int) -> str:
        """The model's continuation under the request's sampling fields, no longer than
        `max_tokens` tokens (a model function may write more; a server never answers more,
        nor charges for more) and cut at a stop sequence."""
        temperature = float(body.get("temperature", 1.0))
        text = self.model.complete(prompt, max_tokens, temperature, _seed(body))
        tokens = tokenize(text)
        if len(tokens) > max_tokens:
            text = text[: tokens[max_tokens][0]]
        return _cut(text, body.get("stop"))

    def _completion_choice(
        self, index: int, prompt: str, body: dict[str, Any], max_tokens: int
    ) -> dict[str, Any]:
        text = self._generate(prompt, body, max_tokens) if max_tokens > 0 else ""
        choice: dict[str, Any] = {
            "index": index,
            "text": (prompt + text) if body.get("echo") else text,
            "finish_reason": "length",
            "logprobs": None,
        }
        if body.get("logprobs") is not None:
            shown = (prompt + text) if body.get("echo") else text
            start = 0 if body.get("echo") else len(prompt)
            choice["logprobs"] = self._token_logprobs(prompt, shown, start, int(body["logprobs"]))
        if body.get("prompt_logprobs") is not None:
            choice["prompt_logprobs"] = [None] + [
                {
                    str(token_id(token)): {
                        "logprob": self.model.token_logprob(prompt[:offset], token),
                        "rank": 1,
                        "decoded_token": token,
                    }
                }
                for offset, token in tokenize(prompt)[1:]
            ]
        return choice

    def _token_logprobs(self, prompt: str, shown: str, start: int, top: int) -> dict[str, Any]:
        full = prompt + shown if start else shown
        tokens = tokenize(shown)
        logprobs: list[float | None] = []
        tops: list[dict[str, float] | None] = []
        for position, (offset, token) in enumerate(tokens):
            prefix = full[: start + offset]
            first = start == 0 and position == 0
            value = None if first else self.model.token_logprob(prefix, token)
            logprobs.append(value)
            if value is None or top == 0:
                tops.append(None)
            else:
                tops.append({token: value} | self.model.alternatives(prefix, top - 1))
        return {
            "tokens": [t for _, t in tokens],
            "token_logprobs": logprobs,
            "top_logprobs": tops,
            "text_offset": [start + offset for offset, _ in tokens],
        }

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, self._chat_answer)

    def _chat_answer(
        self, body: dict[str, Any]
    ) -> tuple[list[str], int, Callable[[], dict[str, Any]]]:
        messages = body["messages"]
        prompt = "\n".join(str(m["content"]) for m in messages)
        max_tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or 16)

        def answer() -> dict[str, Any]:
            choices = [
                self._chat_choice(j, prompt, body | {"seed": _seed(body) + j}, max_tokens)
                for j in range(_choice_count(body))
            ]
            prompt_tokens = len(tokenize(prompt))
            completion_tokens = sum(len(tokenize(c["message"]["content"])) for c in choices)
            return {
                "id": "chat-sim",
                "object": "chat.completion",
                "model": self.config.model,
                "choices": choices,
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            }

        return [prompt], max_tokens, answer

    def _chat_choice(
        self, index: int, prompt: str, body: dict[str, Any], max_tokens: int
    ) -> dict[str, Any]:
        text = self._generate(prompt, body, max_tokens)
        choice: dict[str, Any] = {
            "index": index,
            "message": {"role": "assistant", "content": text},
            "finish_reason": "stop",
        }
        if body.get("logprobs"):
            count = int(body.get("top_logprobs") or 0)
            content = []
            for offset, token in tokenize(text):
                prefix = prompt + text[:offset]
                alternatives = self.model.alternatives(prefix, count) if count else {}
                content.append(
                    {
                        "token": token,
                        "logprob": self.model.token_logprob(prefix, token),
                        "top_logprobs": [
                            {"token": t, "logprob": lp} for t, lp in alternatives.items()
                        ],
                    }
                )
            choice["logprobs"] = {"content": content}
        return choice


def _cut(text: str, stop: str | list[str] | None) -> str:
    for marker in [stop] if isinstance(stop, str) else stop or []:
        if marker and marker in text:
            text = text[: text.index(marker)]
    return text


def _error(status: int, message: str, headers: dict[str, str]) -> web.Response:
    kind = (
        "rate_limit_error"
        if status == 429
        else "invalid_request_error"
        if status < 500
        else "server_error"
    )
    return web.json_response(
        {"error": {"message": message, "type": kind, "code": status}},
        status=status,
        headers=headers,
    )


class ServerProcess:
    """The simulated server in a process of its own, on a free port (benchmarks, and tests
    whose clients run in other processes): ``with ServerProcess(ServerConfig(rpm=600)) as s``."""

    def __init__(self, config: ServerConfig) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        arguments = [sys.executable, "-m", "dlgraph_sim.server", "--port", str(self.port)]
        for field in attrs.fields(ServerConfig):
            value = getattr(config, field.name)
            if value is not None:
                arguments += ["--" + field.name.replace("_", "-"), str(value)]
        self.process = subprocess.Popen(arguments, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        if not self.process.stdout.readline().startswith("serving"):
            self.stop()
            raise RuntimeError("the simulated server did not start")
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def attempts(self) -> dict[str, Any]:
        """Attempts in all, by outcome, and each outcome's times (the server's clock, s)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/sim/attempts") as answer:
            counts: dict[str, Any] = json.load(answer)
        return counts

    def stop(self) -> None:
        self.process.terminate()
        self.process.communicate(timeout=10)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _choice_count(body: dict[str, Any]) -> int:
    """A request's ``n``: the choices drawn for each prompt (sample j with seed ``seed + j``)."""
    n = body.get("n", 1)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 128:
        raise ValueError(f"n must be an integer from 1 to 128, got {n!r}")
    return n


def _seed(body: dict[str, Any]) -> int:
    return int(body.get("seed") or 0)


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the simulated OpenAI-compatible server.")
    parser.add_argument("--port", type=int, default=8000)
    for field in attrs.fields(ServerConfig):
        kind = {
            "model": str,
            "api_key": str,
            "retry_after": str,
            "poison": str,
            "max_batch": int,
            "context_window": int,
            "seed": int,
        }.get(field.name, float)
        parser.add_argument("--" + field.name.replace("_", "-"), type=kind, default=field.default)
    args = vars(parser.parse_args())
    port = args.pop("port")
    for name, value in args.items():  # one at a time, to name the option at fault
        try:
            ServerConfig(**{name: value})
        except (TypeError, ValueError) as error:
            parser.error(f"--{name.replace('_', '-')}: {error}")
    config = ServerConfig(**args)

    async def serve() -> None:
        async with SimServer(config, port=port) as server:
            print(f"serving {server.url}", flush=True)
            await asyncio.Event().wait()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
