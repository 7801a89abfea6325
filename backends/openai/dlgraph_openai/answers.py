"""Reading a server's 200 answer: every field the backend uses is checked, and an answer that
is not whole (a missing or null text, log-probabilities that do not line up, an echo that does
not reach the target) is a `MalformedAnswer` naming the endpoint, retried by the engine. A
malformed answer never becomes a value: not the text "None", not a log-probability of 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dlgraph as dg


@contextmanager
def reading(where: str) -> Iterator[None]:
    """Anything unexpected while reading an answer (a missing key, a wrong type) is malformed."""
    try:
        yield
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as error:
        raise dg.MalformedAnswer(
            f"{where}: malformed answer ({type(error).__name__}: {error})"
        ) from error


def choices(data: dict[str, Any], count: int, where: str) -> list[dict[str, Any]]:
    """The answer's `count` choices in index order."""
    found = data.get("choices")
    if not isinstance(found, list) or not found:
        raise dg.MalformedAnswer(f"{where}: answer without choices")
    if not all(isinstance(choice, dict) for choice in found):
        raise dg.MalformedAnswer(f"{where}: a choice is not an object")
    if len(found) != count:
        raise dg.MalformedAnswer(f"{where}: {len(found)} answers for {count} prompts")
    ordered = sorted(found, key=lambda choice: _number(choice.get("index", 0)))
    if count > 1 and [_number(c.get("index", 0)) for c in ordered] != list(range(count)):
        raise dg.MalformedAnswer(f"{where}: choice indexes are not 0..{count - 1}")
    return ordered


def text(choice: dict[str, Any], where: str) -> str:
    value = choice.get("text")
    if not isinstance(value, str):
        raise dg.MalformedAnswer(
            f"{where}: choice {choice.get('index', 0)} has no text ({value!r})"
        )
    return value


def chat_text(choice: dict[str, Any], where: str) -> str:
    """A chat message's content; null content (a refusal, nothing generated) is empty text."""
    message = choice.get("message")
    if not isinstance(message, dict):
        raise dg.MalformedAnswer(f"{where}: choice without a message")
    content = message.get("content")
    if content is not None and not isinstance(content, str):
        raise dg.MalformedAnswer(f"{where}: message content is not text ({content!r})")
    return content or ""


def _number(value: Any) -> float:
    """A number of the answer; ValueError (made malformed by `reading`) for anything else."""
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ValueError(f"expected a number, got {value!r}")
    return float(value)


def echo_sum(logprobs: Any, target_start: int, text_end: int, where: str) -> float:
    """Sum the log-probs of echoed tokens that carry target text (aligned by text offset).

    A token straddling the boundary counts as part of the target; generated tokens after the
    prompt (when the server needs max_tokens > 0) are left out. The tokens must cover the
    whole target.
    """
    if not isinstance(logprobs, dict) or "text_offset" not in logprobs:
        raise dg.MalformedAnswer(f"{where}: echo answer without token offsets")
    offsets, tokens, values = (
        _list(logprobs, "text_offset", where),
        _list(logprobs, "tokens", where),
        _list(logprobs, "token_logprobs", where),
    )
    if not len(offsets) == len(tokens) == len(values):
        raise dg.MalformedAnswer(f"{where}: echo log-probabilities of mismatched lengths")
    total, covered_start, covered_end = 0.0, math.inf, -math.inf
    for offset, token, value in zip(offsets, tokens, values, strict=True):
        if not isinstance(token, str):
            raise dg.MalformedAnswer(f"{where}: echoed token is not text ({token!r})")
        offset = _number(offset)
        if offset >= text_end or offset + len(token) <= target_start:
            continue
        if value is None:
            raise dg.RequestRejected(
                f"{where}: the target starts at the first token; give it a context"
            )
        total += _number(value)
        covered_start, covered_end = (
            min(covered_start, offset),
            max(covered_end, offset + len(token)),
        )
    if covered_start > target_start or covered_end < text_end:
        raise dg.MalformedAnswer(f"{where}: the echoed tokens do not cover the target")
    return total


def _list(logprobs: dict[str, Any], key: str, where: str) -> list[Any]:
    value = logprobs.get(key)
    if not isinstance(value, list):
        raise dg.MalformedAnswer(f"{where}: echo answer without a list {key!r}")
    return value


def prompt_logprobs_sum(entries: Any, target_start: int, text_end: int, where: str) -> float:
    """vLLM's prompt_logprobs, aligned by walking decoded tokens back from the end of the text."""
    if not isinstance(entries, list) or not entries:
        raise dg.MalformedAnswer(f"{where}: answer without prompt_logprobs")
    total, end = 0.0, text_end
    for entry in reversed(entries):
        if end <= target_start:
            return total
        if not isinstance(entry, dict) or len(entry) != 1:
            break
        (info,) = entry.values()
        if not isinstance(info, dict) or not isinstance(info.get("decoded_token"), str):
            raise dg.MalformedAnswer(f"{where}: a prompt_logprobs entry without decoded_token")
        total += _number(info.get("logprob"))
        end -= len(info["decoded_token"])
    if end > target_start:
        raise dg.MalformedAnswer(f"{where}: prompt_logprobs do not cover the target")
    return total


def first_token_alternatives(choice: dict[str, Any], where: str) -> dict[str, float]:
    """The first generated token's alternatives with their log-probabilities, in either shape
    servers send them:

    * OpenAI's completions: ``logprobs.top_logprobs[0] = {token: logprob, ...}``;
    * chat completions, and llama-server's completions: ``logprobs.content[0].top_logprobs =
      [{"token": ..., "logprob": ...}, ...]``.

    Alternatives that print alike (two token ids, one text) are summed. An answer with no
    alternative to read is malformed, and the error shows the shape it had: read as "no class
    is likely", it would turn every class distribution uniform without a word.
    """
    logprobs = choice.get("logprobs")
    pairs = _alternatives(logprobs)
    if not pairs:
        raise dg.MalformedAnswer(
            f"{where}: no first-token log-probabilities in the answer "
            f"(choice {choice.get('index', 0)}: logprobs = {shape(logprobs)})"
        )
    found: dict[str, list[float]] = {}
    for token, value in pairs:
        if not isinstance(token, str):
            raise ValueError(f"expected a token's text, got {token!r}")
        found.setdefault(token, []).append(_number(value))
    return {token: _logsumexp(values) for token, values in found.items()}


def _alternatives(logprobs: Any) -> list[tuple[Any, Any]]:
    """(token, log-probability) pairs of the first token, or none from a shape not known."""
    try:
        if logprobs.get("content"):
            return [
                (item["token"], item["logprob"]) for item in logprobs["content"][0]["top_logprobs"]
            ]
        return list((logprobs["top_logprobs"][0] or {}).items())
    except (KeyError, TypeError, IndexError, AttributeError):
        return []


def _logsumexp(values: list[float]) -> float:
    top = max(values)
    if top == -math.inf:
        return top
    return top + math.log(sum(math.exp(value - top) for value in values))


def shape(value: Any, depth: int = 6) -> str:
    """The structure of a JSON value without its data (keys, value types, the first item of a
    list), short enough for an error message: what a server sent, not what the model said."""
    if isinstance(value, dict):
        if depth == 0:
            return "{...}"
        items = [f"{key!r}: {shape(item, depth - 1)}" for key, item in list(value.items())[:8]]
        more = ", ..." if len(value) > 8 else ""
        return "{" + ", ".join(items) + more + "}"
    if isinstance(value, list):
        if not value:
            return "[]"
        first = shape(value[0], depth - 1) if depth else "..."
        return f"[{first}" + (f", ... ({len(value)} items)]" if len(value) > 1 else "]")
    if value is None:
        return "null"
    return type(value).__name__


def context_window(data: object, model: str) -> int | None:
    """The context window /models states for `model` (the entry of that id, else the only
    entry): vLLM's ``max_model_len``, else llama-server's ``meta.n_ctx`` (its slot's share,
    not the model's ``n_ctx_train``); None when the answer says neither."""
    entries = data.get("data") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        return None
    models = [entry for entry in entries if isinstance(entry, dict)]
    named = [entry for entry in models if entry.get("id") == model]
    chosen = named[0] if named else models[0] if len(models) == 1 else None
    if chosen is None:
        return None
    meta = chosen.get("meta")
    for value in (
        chosen.get("max_model_len"),
        meta.get("n_ctx") if isinstance(meta, dict) else None,
    ):
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None
