"""What each kind of OpenAI-compatible server needs and supports."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from dlgraph import plugin


def _count(minimum: int) -> Callable[[Any, attrs.Attribute[int], int], None]:
    """A validator: a whole number (not a bool) of at least `minimum`, by the core's check,
    named as a profile's field."""

    def validate(instance: Any, attribute: attrs.Attribute[int], value: int) -> None:
        try:
            plugin.check_int(attribute.name, value, minimum)
        except (TypeError, ValueError):
            raise ValueError(
                f"profile {attribute.name}: expected an integer >= {minimum}, got {value!r}"
            ) from None

    return validate


@attrs.frozen(kw_only=True)
class Profile:
    name: str
    base_url: str | None
    """Default address (None: must be given)."""
    api_key_env: str | None
    """Environment variable read when no key is passed."""
    auth_header: str = "Authorization"
    """``Authorization: Bearer KEY`` or Azure's ``api-key: KEY``."""
    api_version: str | None = None
    """Azure's ``api-version`` query parameter."""
    echo_logprobs: bool = False
    """/v1/completions returns prompt log-probs with ``echo`` + ``logprobs``."""
    echo_max_tokens: int = attrs.field(default=1, validator=_count(0))
    """max_tokens of an echo request. One token always ends; 0 means "none" only to OpenAI,
    while llama-cpp-python's server reads it as "until the context is full"."""
    prompt_logprobs: bool = False
    """vLLM's ``prompt_logprobs`` parameter."""
    top_logprobs: int = attrs.field(default=0, validator=_count(0))
    """First-token alternatives available (chat ``top_logprobs`` / completions ``logprobs``)."""
    max_batch: int = attrs.field(default=1, validator=_count(1))
    """Prompts per /v1/completions request."""
    samples: int = attrs.field(default=0, validator=_count(0))
    """Choices one request draws of one prompt (``n``; 0: the server draws one)."""
    first_token_classes: bool = False
    """A class distribution read from the first token's alternatives first (the backend's
    `first_token_classes`): where tokens are billed or limited, fewer tokens are worth the
    second request a verbalizer missing from them costs."""
    context_window: int | None = attrs.field(default=None, validator=plugin.integer(1))
    """The most tokens one call may hold, prompt and answer, when the profile knows it."""
    model_info: bool = False
    """GET /models states the context window: vLLM's ``max_model_len``, llama-server's
    ``meta.n_ctx`` (per slot: its ``--ctx-size`` split between its ``--parallel`` slots)."""


PROFILES = {
    profile.name: profile
    for profile in (
        # OpenAI's completions endpoint keeps echo+logprobs for its base models (babbage-002, davinci-002)
        Profile(
            name="openai",
            base_url="https://api.openai.com/v1",
            api_key_env="OPENAI_API_KEY",
            echo_logprobs=True,
            echo_max_tokens=0,
            top_logprobs=5,
            max_batch=20,
            samples=128,
            first_token_classes=True,
        ),
        Profile(
            name="azure",
            base_url=None,
            api_key_env="AZURE_OPENAI_API_KEY",
            auth_header="api-key",
            api_version="2024-10-21",
            echo_logprobs=True,
            echo_max_tokens=0,
            top_logprobs=5,
            max_batch=20,
            samples=128,
            first_token_classes=True,
        ),
        Profile(
            name="vllm",
            base_url="http://127.0.0.1:8000/v1",
            api_key_env="VLLM_API_KEY",
            echo_logprobs=True,
            echo_max_tokens=1,
            prompt_logprobs=True,
            top_logprobs=20,
            max_batch=64,
            samples=64,
            model_info=True,
        ),
        # llama-cpp-python's server (python -m llama_cpp.server --logits_all true): exact
        # log-probs by echo, one prompt per request (a list of prompts is a 500), one request at
        # a time, and a full-vocabulary log-softmax in Python per prompt position: exact but slow
        Profile(
            name="llama-cpp-python",
            base_url="http://127.0.0.1:8000/v1",
            api_key_env="LLAMA_API_KEY",
            echo_logprobs=True,
            echo_max_tokens=1,
            top_logprobs=10,
            max_batch=1,
        ),
        # llama.cpp's own C++ server (llama-server): no echo, first-token alternatives only, in
        # the chat shape. It gives as many as asked; a class absent from them is at the floor,
        # so more alternatives are a better approximation: on 100 tweets with Gemma 3 270M
        # (bench/llama_server.py), classes were up to 0.32 from their exact probability with
        # 10 (" neutral" beyond the tenth), up to 0.045 with 100, at no measurable cost
        Profile(
            name="llamacpp",
            base_url="http://127.0.0.1:8080/v1",
            api_key_env="LLAMA_API_KEY",
            top_logprobs=100,
            max_batch=1,
            model_info=True,
        ),
        Profile(
            name="ollama",
            base_url="http://127.0.0.1:11434/v1",
            api_key_env="OLLAMA_API_KEY",
            max_batch=1,
        ),
        Profile(
            name="sim",
            base_url=None,
            api_key_env=None,
            echo_logprobs=True,
            prompt_logprobs=True,
            top_logprobs=10,
            max_batch=64,
            samples=64,
            model_info=True,
            first_token_classes=True,  # as a hosted API: bench/efficiency.py's TPM run
        ),
    )
}
