"""The backend: one long-lived aiohttp session per endpoint, requests shaped by the profile."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import urllib.parse
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Concatenate, Literal, ParamSpec, TypeVar

import aiohttp
import attrs

import dlgraph as dg
from dlgraph import plugin
from dlgraph_openai import answers
from dlgraph_openai.errors import (
    public_url,
    redact,
    scrubbed,
    status_error,
    translated,
    url_secrets,
)
from dlgraph_openai.profiles import PROFILES, Profile

logger = logging.getLogger(__name__)

MODEL_INFO_TIMEOUT_S = 10.0
"""How long entering the backend waits for /models (a server that does not answer it is
still used; its context window is then unknown)."""


P = ParamSpec("P")
R = TypeVar("R")


def _scrubbing(
    method: Callable[Concatenate[OpenAIBackend, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[OpenAIBackend, P], Coroutine[Any, Any, R]]:
    """No error a request raises carries a secret, however the server echoed it."""

    async def scrubbing(self: OpenAIBackend, /, *args: P.args, **kwargs: P.kwargs) -> R:
        with scrubbed(self._secrets):
            return await method(self, *args, **kwargs)

    functools.update_wrapper(scrubbing, method)
    return scrubbing


def _profile(value: str | Profile) -> Profile:
    if isinstance(value, Profile):
        return value
    if value not in PROFILES:
        raise dg.UnknownBackend(f"unknown profile {value!r} (known: {', '.join(sorted(PROFILES))})")
    return PROFILES[value]


def _text(instance: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{attribute.name}: expected text, got {type(value).__name__}")


def _model_name(instance: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    _text(instance, attribute, value)
    if not str(value).strip():
        raise ValueError("model: expected the model's name, got an empty one")


@attrs.define(eq=False)
class OpenAIBackend(dg.Backend):
    """An OpenAI-compatible endpoint. `api_key` defaults to the profile's environment variable
    and appears in no repr, log line or error."""

    model: str = attrs.field(validator=_model_name)
    base_url: str | None = attrs.field(default=None, repr=lambda url: repr(public_url(url or "")))
    api_key: str | None = attrs.field(
        default=None, repr=False, validator=attrs.validators.optional(_text)
    )
    profile: Profile = attrs.field(default=PROFILES["openai"], converter=_profile)
    api: Literal["completions", "chat"] = attrs.field(
        default="completions", validator=attrs.validators.in_(("completions", "chat"))
    )
    timeout_s: float = attrs.field(default=60.0, validator=plugin.number(0, above=True, none=False))
    max_batch: int | None = attrs.field(default=None, validator=plugin.integer(1))
    """Prompts per request when coalescing (default: the profile's)."""
    max_continuations: int | None = attrs.field(
        default=None, validator=plugin.integer(0, plugin.MAX_CONTINUATIONS)
    )
    """The most verbalizers one request scores together (`ContinuationsRequest`). Default: a
    request's prompts, where the profile echoes several (vllm, openai, azure, sim); lower only
    (a profile that cannot echo several takes none); 0: one log-probability request per
    verbalizer, the scoring measured before one-call classes."""
    max_samples: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(plugin.integer(0, plugin.MAX_SAMPLES))
    )
    """The most samples of one prompt one request draws (``n``: a hidden node's posterior
    samples of an example, the prompt sent and billed once). Default: the profile's (openai,
    azure, vllm, sim; none for the llama.cpp servers and ollama); lower only; 0: one request
    per sample, as before samples were drawn together."""
    first_token_classes: bool | None = attrs.field(
        default=None, validator=attrs.validators.optional(plugin.boolean)
    )
    """Where the profile echoes several prompts, read a class distribution's verbalizers from
    the first token's alternatives first: the context sent once instead of once per
    verbalizer, and a second request for any verbalizer the alternatives lack (exact values
    either way). False: every verbalizer in one request of several prompts, for a server
    limited by requests rather than tokens. Default: the profile's (on for openai, azure and
    sim, which bill or limit tokens; off for vllm, which caches the repeated context)."""
    connections: int = attrs.field(default=256, validator=plugin.integer(1, none=False))
    tokenizer: Callable[[str], int] | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.is_callable())
    )
    """Counts tokens as the server does (e.g. with tiktoken), for rate limits and budgets;
    default: about four characters per token."""
    context_window: int | None = attrs.field(default=None, validator=plugin.integer(1))
    """The most tokens one call may hold, prompt and answer. Default: the profile's, else what
    the server states in /models when the profile says it does (read on entering), else
    unknown."""
    _served_window: int | None = attrs.field(default=None, init=False, repr=False)
    _session: aiohttp.ClientSession | None = attrs.field(default=None, init=False, repr=False)
    _reached: bool = attrs.field(default=False, init=False, repr=False)
    """A connection to the server has been made: the address is right, so a connection refused
    from now on is taken for a server restarting, and retried."""

    def __attrs_post_init__(self) -> None:
        self.base_url = (self.base_url or self.profile.base_url or "").rstrip("/")
        if not self.base_url:
            raise dg.BackendUnavailable(f"profile {self.profile.name!r} needs a base_url")
        parts = urllib.parse.urlsplit(self.base_url)
        if "://" not in self.base_url or parts.scheme not in ("http", "https") or not parts.netloc:
            raise dg.BackendUnavailable(
                f"base_url {public_url(self.base_url)!r}: expected http:// or https:// and a "
                "host, as in http://127.0.0.1:8000/v1"
            )
        if self.api_key is None and self.profile.api_key_env:
            self.api_key = os.environ.get(self.profile.api_key_env)
        if self.api_key and "@" in parts.netloc:
            raise dg.BackendUnavailable(
                f"{public_url(self.base_url)}: the URL carries credentials and an API key is "
                "set too; give the key once, as api_key"
            )

    @property
    def _secrets(self) -> tuple[str | None, ...]:
        """What no repr, identity or error may show: the key, and whatever `public_url`
        hides of the URL (its user info, query values and fragment)."""
        return (self.api_key, *url_secrets(self.base_url or ""))

    @property
    def capabilities(self) -> dg.Capabilities:  # type: ignore[override]
        completions = self.api == "completions"
        max_batch = (self.max_batch or self.profile.max_batch) if completions else 1
        echo = completions and self.profile.echo_logprobs
        several = min(max_batch, plugin.MAX_CONTINUATIONS) if echo and max_batch > 1 else 0
        if self.max_continuations is not None:
            several = min(several, self.max_continuations)
        samples = min(self.profile.samples, plugin.MAX_SAMPLES)
        if self.max_samples is not None:
            samples = min(samples, self.max_samples)
        return dg.Capabilities(
            exact_logprobs=completions
            and (self.profile.echo_logprobs or self.profile.prompt_logprobs),
            top_logprobs=self.profile.top_logprobs,
            max_batch=max_batch,
            continuations=several,
            samples=samples,
            repeats_context=True,
            first_token_classes=self.profile.first_token_classes
            if self.first_token_classes is None
            else self.first_token_classes,
            context_window=self.context_window
            or self.profile.context_window
            or self._served_window,
        )

    def count_tokens(self, text: str) -> int:
        return self.tokenizer(text) if self.tokenizer else super().count_tokens(text)

    @property
    def identity(self) -> str:
        return f"openai:{public_url(self.base_url or '')}:{self.model}:{self.api}"

    @property
    def model_name(self) -> str:
        return self.model

    @property
    def operation_name(self) -> str:
        return "chat" if self.api == "chat" else "text_completion"

    async def __aenter__(self) -> OpenAIBackend:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            raise dg.BackendUnavailable(
                "dlgraph-openai runs on asyncio (aiohttp needs it), and this event loop is not "
                "asyncio: run your program with anyio's default asyncio backend"
            ) from None
        if self._session is None:
            connected = aiohttp.TraceConfig()
            connected.on_connection_create_end.append(self._on_connection)
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                connector=aiohttp.TCPConnector(limit=self.connections),
                trace_configs=[connected],
            )
        if self.context_window is None and self.profile.context_window is None:
            if self.profile.model_info and self._served_window is None:
                self._served_window = await self._stated_window()
        return self

    async def _stated_window(self) -> int | None:
        """The context window the server states in /models; None, logged, when it states
        none or cannot be asked (a server down now may be up by the first call)."""
        assert self._session is not None
        where = self._where("/models")
        timeout = aiohttp.ClientTimeout(total=min(self.timeout_s, MODEL_INFO_TIMEOUT_S))
        try:
            async with self._session.get(
                self._url("/models"), headers=self._headers(), timeout=timeout
            ) as response:
                if response.status != 200:
                    logger.info(
                        "%s: HTTP %d; the context window is unknown", where, response.status
                    )
                    return None
                data = json.loads(await response.text())
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            logger.info("%s: %s; the context window is unknown", where, type(error).__name__)
            return None
        window = answers.context_window(data, self.model)
        logger.info("%s: context window %s", where, window)
        return window

    async def _on_connection(self, session: object, context: object, params: object) -> None:
        self._reached = True

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _headers(self) -> dict[str, str]:
        if not self.api_key:
            return {}
        if self.profile.auth_header == "Authorization":
            return {"Authorization": f"Bearer {self.api_key}"}
        return {self.profile.auth_header: self.api_key}

    def _url(self, path: str) -> str:
        """The endpoint's URL: `path` after the base URL's path, its query kept, the
        profile's API version added."""
        parts = urllib.parse.urlsplit(self.base_url or "")
        query = parts.query
        if self.profile.api_version:
            version = urllib.parse.urlencode({"api-version": self.profile.api_version})
            query = f"{query}&{version}" if query else version
        return urllib.parse.urlunsplit(parts._replace(path=parts.path + path, query=query))

    def _where(self, path: str) -> str:
        """The endpoint as errors show it: no password, no key."""
        return redact(public_url(self._url(path)), *self._secrets)

    async def _post(self, path: str, body: dict[str, Any]) -> _Posted:
        """The server's JSON answer and what it said of the call's usage and its limits; an
        error carries the limits the server stated with it."""
        if self._session is None:
            raise dg.BackendUnavailable("the backend is closed: use it inside 'async with'")
        where = self._where(path)
        limits = dg.CallUsage()
        try:
            async with translated(
                where, self.timeout_s, self._secrets, reached_before=self._reached
            ):
                async with self._session.post(
                    self._url(path), json=body | {"model": self.model}, headers=self._headers()
                ) as response:
                    text = await response.text()
                    limits = _stated_limits(response.headers)
                    if response.status != 200:
                        raise status_error(
                            response.status, text, response.headers, where, self._secrets
                        )
                    data = json.loads(text)
        except dg.BackendError as error:
            error.usage = limits
            raise
        if not isinstance(data, dict):
            raise dg.MalformedAnswer(f"{where}: the answer is not a JSON object", usage=limits)
        usage = data.get("usage")
        if isinstance(usage, dict):
            limits = attrs.evolve(
                limits,
                prompt_tokens=_int(usage.get("prompt_tokens")),
                completion_tokens=_int(usage.get("completion_tokens")),
            )
        return _Posted(data, limits)

    # -- generation --------------------------------------------------------------------------

    def _sampling(self, request: dg.GenerateRequest | dg.SamplesRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "seed": request.seed,
        }
        if request.stop:
            body["stop"] = list(request.stop)
        return body

    @_scrubbing
    async def generate(self, request: dg.GenerateRequest) -> dg.Answer[str]:
        if self.api == "chat":
            path = "/chat/completions"
            posted = await self._post(
                path, self._sampling(request) | {"messages": _messages(request.prompt)}
            )
            with posted.reading(self._where(path)) as data:
                return posted.answer(
                    answers.chat_text(
                        answers.choices(data, 1, self._where(path))[0], self._where(path)
                    )
                )
        batch = await self.generate_batch([request])
        return dg.Answer(batch.value[0], usage=batch.usage)

    @_scrubbing
    async def generate_batch(self, requests: Sequence[dg.GenerateRequest]) -> dg.Answer[list[str]]:
        prompts = [r.prompt for r in requests]
        body = self._sampling(requests[0]) | {"prompt": prompts if len(prompts) > 1 else prompts[0]}
        posted = await self._post("/completions", body)
        where = self._where("/completions")
        with posted.reading(where) as data:
            return posted.answer(
                [
                    answers.text(choice, where)
                    for choice in answers.choices(data, len(requests), where)
                ]
            )

    @_scrubbing
    async def samples(self, request: dg.SamplesRequest) -> dg.Answer[list[str]]:
        """`request.count` choices of one prompt in one request (``n``), billed the prompt once."""
        chat = self.api == "chat"
        path = "/chat/completions" if chat else "/completions"
        asked = {"messages": _messages(request.prompt)} if chat else {"prompt": request.prompt}
        several = {"n": request.count} if request.count > 1 else {}  # n=1: as a server without n
        posted = await self._post(path, self._sampling(request) | asked | several)
        where = self._where(path)
        read = answers.chat_text if chat else answers.text
        with posted.reading(where) as data:
            found = data.get("choices")
            if isinstance(found, list) and 0 < len(found) < request.count:
                raise dg.RequestRejected(  # asked again, it would answer as few: not retried
                    f"{where}: {len(found)} choice(s) for n={request.count}: the server draws "
                    "fewer samples per request (set max_samples to what it draws, 0 for one)"
                )
            return posted.answer(
                [read(choice, where) for choice in answers.choices(data, request.count, where)]
            )

    # -- scoring -----------------------------------------------------------------------------

    @_scrubbing
    async def logprob(self, request: dg.LogprobRequest) -> dg.Answer[float]:
        if self.api == "completions" and self.profile.echo_logprobs:
            batch = await self.logprob_batch([request])
            return dg.Answer(batch.value[0], usage=batch.usage)
        if not request.context:
            raise dg.RequestRejected("a log-probability needs a non-empty context")
        text = request.context + request.target
        if self.api == "completions" and self.profile.prompt_logprobs:
            body = {"prompt": text, "max_tokens": 1, "prompt_logprobs": 0, "temperature": 0}
            posted = await self._post("/completions", body)
            where = self._where("/completions")
            with posted.reading(where) as data:
                choice = answers.choices(data, 1, where)[0]
                return posted.answer(
                    answers.prompt_logprobs_sum(
                        choice.get("prompt_logprobs"), len(request.context), len(text), where
                    )
                )
        raise dg.RequestRejected(
            f"{self._where('')} ({self.profile.name}, {self.api}) gives no prompt log-probabilities "
            "(neither echo with logprobs nor prompt_logprobs); class nodes can still be scored by "
            "top log-probs, and the trainer can use scoring='accuracy'"
        )

    @_scrubbing
    async def logprob_batch(self, requests: Sequence[dg.LogprobRequest]) -> dg.Answer[list[float]]:
        """Log-probabilities of several texts in one echo request, each aligned by offsets."""
        if not (self.api == "completions" and self.profile.echo_logprobs):
            raise dg.RequestRejected(
                f"{self._where('')} ({self.profile.name}) has no echo log-probabilities for batches"
            )
        if any(not request.context for request in requests):
            raise dg.RequestRejected("a log-probability needs a non-empty context")
        texts = [request.context + request.target for request in requests]
        body = {
            "prompt": texts if len(texts) > 1 else texts[0],
            "max_tokens": self.profile.echo_max_tokens,
            "echo": True,
            "logprobs": 0,
            "temperature": 0,
        }
        posted = await self._post("/completions", body)
        where = self._where("/completions")
        with posted.reading(where) as data:
            return posted.answer(
                [
                    answers.echo_sum(choice.get("logprobs"), len(request.context), len(text), where)
                    for choice, request, text in zip(
                        answers.choices(data, len(requests), where), requests, texts, strict=True
                    )
                ]
            )

    @_scrubbing
    async def continuations(self, request: dg.ContinuationsRequest) -> dg.Answer[list[float]]:
        """Several continuations of one context as one echo request of several prompts (the
        context repeated in each: the server charges it each time, and a server with prefix
        caching, as vLLM, evaluates it once)."""
        return await self.logprob_batch(request.each())

    @_scrubbing
    async def top_logprobs(self, request: dg.TopLogprobsRequest) -> dg.Answer[dict[str, float]]:
        count = min(request.count, self.profile.top_logprobs)
        if self.api == "chat":
            body = {
                "messages": _messages(request.context),
                "max_tokens": 1,
                "temperature": 0,
                "logprobs": True,
                "top_logprobs": count,
            }
            path = "/chat/completions"
            posted = await self._post(path, body)
            with posted.reading(self._where(path)) as data:
                choice = answers.choices(data, 1, self._where(path))[0]
                return posted.answer(answers.first_token_alternatives(choice, self._where(path)))
        body = {"prompt": request.context, "max_tokens": 1, "temperature": 0, "logprobs": count}
        posted = await self._post("/completions", body)
        where = self._where("/completions")
        with posted.reading(where) as data:
            return posted.answer(
                answers.first_token_alternatives(answers.choices(data, 1, where)[0], where)
            )


T = TypeVar("T")


@attrs.frozen
class _Posted:
    """A server's JSON answer, and the usage and limits it stated with it."""

    data: dict[str, Any]
    usage: dg.CallUsage

    @contextmanager
    def reading(self, where: str) -> Iterator[dict[str, Any]]:
        """Read the answer (`answers.reading`); a malformed one carries the usage stated."""
        try:
            with answers.reading(where):
                yield self.data
        except dg.BackendError as error:
            error.usage = self.usage
            raise

    def answer(self, value: T) -> dg.Answer[T]:
        return dg.Answer(value, usage=self.usage)


def _stated_limits(headers: Mapping[str, str]) -> dg.CallUsage:
    """What the server's x-ratelimit-* headers say of its limits."""
    return dg.CallUsage(
        remaining_requests=_int(headers.get("x-ratelimit-remaining-requests")),
        remaining_tokens=_int(headers.get("x-ratelimit-remaining-tokens")),
        limit_requests=_int(headers.get("x-ratelimit-limit-requests")),
        limit_tokens=_int(headers.get("x-ratelimit-limit-tokens")),
    )


def _messages(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


def _int(value: object) -> int | None:
    """A header or usage count, or None when the server sent none or nonsense (a negative
    count too: the engine then estimates the call's tokens, where the count would have
    paid a budget back)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        count = int(float(value))  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return None
    return count if count >= 0 else None
