"""The backend: one long-lived aiohttp session per endpoint, requests shaped by the profile."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any, Literal

import aiohttp
import attrs

import dlgraph as dg
from dlgraph_openai.errors import status_error, translated
from dlgraph_openai.profiles import PROFILES, Profile

logger = logging.getLogger(__name__)


def _profile(value: str | Profile) -> Profile:
    if isinstance(value, Profile):
        return value
    if value not in PROFILES:
        raise dg.UnknownBackend(f"unknown profile {value!r} (known: {', '.join(sorted(PROFILES))})")
    return PROFILES[value]


@attrs.define(eq=False)
class OpenAIBackend(dg.Backend):
    """An OpenAI-compatible endpoint. `api_key` defaults to the profile's environment variable
    and appears in no repr, log line or error."""

    model: str
    base_url: str | None = None
    api_key: str | None = attrs.field(default=None, repr=False)
    profile: Profile = attrs.field(default=PROFILES["openai"], converter=_profile)
    api: Literal["completions", "chat"] = attrs.field(
        default="completions", validator=attrs.validators.in_(("completions", "chat"))
    )
    timeout_s: float = 60.0
    max_batch: int | None = None
    """Prompts per request when coalescing (default: the profile's)."""
    connections: int = 256
    tokenizer: Callable[[str], int] | None = None
    """Counts tokens as the server does (e.g. with tiktoken), for rate limits and budgets;
    default: about four characters per token."""
    _session: aiohttp.ClientSession | None = attrs.field(default=None, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        self.base_url = (self.base_url or self.profile.base_url or "").rstrip("/")
        if not self.base_url:
            raise dg.BackendUnavailable(f"profile {self.profile.name!r} needs a base_url")
        if self.api_key is None and self.profile.api_key_env:
            self.api_key = os.environ.get(self.profile.api_key_env)

    @property
    def capabilities(self) -> dg.Capabilities:  # type: ignore[override]
        completions = self.api == "completions"
        return dg.Capabilities(
            exact_logprobs=completions
            and (self.profile.echo_logprobs or self.profile.prompt_logprobs),
            top_logprobs=self.profile.top_logprobs,
            max_batch=(self.max_batch or self.profile.max_batch) if completions else 1,
        )

    def count_tokens(self, text: str) -> int:
        return self.tokenizer(text) if self.tokenizer else super().count_tokens(text)

    @property
    def identity(self) -> str:
        return f"openai:{self.base_url}:{self.model}:{self.api}"

    async def __aenter__(self) -> OpenAIBackend:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                connector=aiohttp.TCPConnector(limit=self.connections),
            )
        return self

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

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if self._session is None:
            raise dg.BackendUnavailable("the backend is closed: use it inside 'async with'")
        where = f"{self.base_url}{path}"
        params = {"api-version": self.profile.api_version} if self.profile.api_version else None
        async with translated(where, self.timeout_s):
            async with self._session.post(
                where, json=body | {"model": self.model}, headers=self._headers(), params=params
            ) as response:
                text = await response.text()
                headers = response.headers
                dg.report(
                    remaining_requests=_int(headers.get("x-ratelimit-remaining-requests")),
                    remaining_tokens=_int(headers.get("x-ratelimit-remaining-tokens")),
                    limit_requests=_int(headers.get("x-ratelimit-limit-requests")),
                    limit_tokens=_int(headers.get("x-ratelimit-limit-tokens")),
                )
                if response.status != 200:
                    raise status_error(response.status, text, headers, where)
                data = json.loads(text)
        if (
            not isinstance(data, dict)
            or not isinstance(data.get("choices"), list)
            or not data["choices"]
        ):
            raise dg.TransientError(f"{where}: answer without choices")
        usage = data.get("usage") or {}
        dg.report(
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
        )
        return data

    # -- generation --------------------------------------------------------------------------

    def _sampling(self, request: dg.GenerateRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "seed": request.seed,
        }
        if request.stop:
            body["stop"] = list(request.stop)
        return body

    async def generate(self, request: dg.GenerateRequest) -> str:
        if self.api == "chat":
            data = await self._post(
                "/chat/completions",
                self._sampling(request) | {"messages": _messages(request.prompt)},
            )
            return str(data["choices"][0]["message"]["content"] or "")
        data = await self._post(
            "/completions", self._sampling(request) | {"prompt": request.prompt}
        )
        return str(data["choices"][0]["text"])

    async def generate_batch(self, requests: Sequence[dg.GenerateRequest]) -> list[str]:
        body = self._sampling(requests[0]) | {"prompt": [r.prompt for r in requests]}
        data = await self._post("/completions", body)
        choices = sorted(data["choices"], key=lambda choice: int(choice.get("index", 0)))
        if len(choices) != len(requests):
            raise dg.TransientError(
                f"{self.base_url}/completions: {len(choices)} answers for {len(requests)} prompts"
            )
        return [str(choice["text"]) for choice in choices]

    # -- scoring -----------------------------------------------------------------------------

    async def logprob(self, request: dg.LogprobRequest) -> float:
        if self.api == "completions" and self.profile.echo_logprobs:
            return (await self.logprob_batch([request]))[0]
        if not request.context:
            raise dg.RequestRejected("a log-probability needs a non-empty context")
        text = request.context + request.target
        if self.api == "completions" and self.profile.prompt_logprobs:
            body = {"prompt": text, "max_tokens": 1, "prompt_logprobs": 0, "temperature": 0}
            choice = (await self._post("/completions", body))["choices"][0]
            return _prompt_logprobs_sum(
                choice.get("prompt_logprobs"), len(request.context), len(text), self.base_url or ""
            )
        raise dg.RequestRejected(
            f"{self.base_url} ({self.profile.name}, {self.api}) gives no prompt log-probabilities "
            "(neither echo with logprobs nor prompt_logprobs); class nodes can still be scored by "
            "top log-probs, and the trainer can use scoring='accuracy'"
        )

    async def logprob_batch(self, requests: Sequence[dg.LogprobRequest]) -> list[float]:
        """Log-probabilities of several texts in one echo request, each aligned by offsets."""
        if not (self.api == "completions" and self.profile.echo_logprobs):
            raise dg.RequestRejected(
                f"{self.base_url} ({self.profile.name}) has no echo log-probabilities for batches"
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
        choices = sorted(
            (await self._post("/completions", body))["choices"],
            key=lambda c: int(c.get("index", 0)),
        )
        if len(choices) != len(requests):
            raise dg.TransientError(
                f"{self.base_url}/completions: {len(choices)} answers for {len(requests)} prompts"
            )
        return [
            _echo_sum(choice.get("logprobs"), len(request.context), len(text), self.base_url or "")
            for choice, request, text in zip(choices, requests, texts, strict=True)
        ]

    async def top_logprobs(self, request: dg.TopLogprobsRequest) -> dict[str, float]:
        count = min(request.count, self.profile.top_logprobs)
        if self.api == "chat":
            body = {
                "messages": _messages(request.context),
                "max_tokens": 1,
                "temperature": 0,
                "logprobs": True,
                "top_logprobs": count,
            }
            content = (
                (await self._post("/chat/completions", body))["choices"][0].get("logprobs") or {}
            ).get("content") or []
            if not content:
                raise dg.TransientError(
                    f"{self.base_url}/chat/completions: no logprobs in the answer"
                )
            return {
                item["token"]: float(item["logprob"]) for item in content[0].get("top_logprobs", [])
            }
        body = {"prompt": request.context, "max_tokens": 1, "temperature": 0, "logprobs": count}
        logprobs = (await self._post("/completions", body))["choices"][0].get("logprobs") or {}
        tops = logprobs.get("top_logprobs") or [{}]
        return {token: float(value) for token, value in (tops[0] or {}).items()}


def _messages(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


def _int(value: str | None) -> int | None:
    try:
        return int(float(value)) if value is not None else None
    except ValueError:
        return None


def _echo_sum(
    logprobs: dict[str, Any] | None, target_start: int, text_end: int, where: str
) -> float:
    """Sum the log-probs of echoed tokens that carry target text (aligned by text offset).

    A token straddling the boundary counts as part of the target; generated tokens after the
    prompt (when the server needs max_tokens > 0) are left out.
    """
    if not logprobs or "text_offset" not in logprobs:
        raise dg.TransientError(f"{where}: echo answer without token offsets")
    total = 0.0
    for offset, token, value in zip(
        logprobs["text_offset"], logprobs["tokens"], logprobs["token_logprobs"], strict=True
    ):
        if offset >= text_end or offset + len(token) <= target_start:
            continue
        if value is None:
            raise dg.RequestRejected(
                f"{where}: the target starts at the first token; give it a context"
            )
        total += float(value)
    return total


def _prompt_logprobs_sum(
    entries: list[Any] | None, target_start: int, text_end: int, where: str
) -> float:
    """vLLM's prompt_logprobs, aligned by walking decoded tokens back from the end of the text."""
    if not entries:
        raise dg.TransientError(f"{where}: answer without prompt_logprobs")
    total, end = 0.0, text_end
    for entry in reversed(entries):
        if entry is None:
            break
        (info,) = entry.values()
        start = end - len(info.get("decoded_token", ""))
        if end > target_start:
            total += float(info["logprob"])
        end = start
        if end <= target_start:
            break
    return total
