"""What each kind of OpenAI-compatible server needs and supports."""

from __future__ import annotations

import attrs


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
    echo_max_tokens: int = 0
    """max_tokens for an echo request (some servers refuse 0)."""
    prompt_logprobs: bool = False
    """vLLM's ``prompt_logprobs`` parameter."""
    top_logprobs: int = 0
    """First-token alternatives available (chat ``top_logprobs`` / completions ``logprobs``)."""
    max_batch: int = 1
    """Prompts per /v1/completions request."""


PROFILES = {
    profile.name: profile
    for profile in (
        # OpenAI's completions endpoint keeps echo+logprobs for its base models (babbage-002, davinci-002)
        Profile(
            name="openai",
            base_url="https://api.openai.com/v1",
            api_key_env="OPENAI_API_KEY",
            echo_logprobs=True,
            top_logprobs=5,
            max_batch=20,
        ),
        Profile(
            name="azure",
            base_url=None,
            api_key_env="AZURE_OPENAI_API_KEY",
            auth_header="api-key",
            api_version="2024-10-21",
            echo_logprobs=True,
            top_logprobs=5,
            max_batch=20,
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
        ),
        Profile(
            name="llamacpp",
            base_url="http://127.0.0.1:8080/v1",
            api_key_env="LLAMA_API_KEY",
            top_logprobs=10,
            max_batch=1,
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
        ),
    )
}
