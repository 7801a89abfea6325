"""Token estimates made before a call: what rate limits and coalesced batches are charged."""

from __future__ import annotations

from dlgraph.backend import (
    Backend,
    ContinuationsRequest,
    GenerateRequest,
    LogprobRequest,
    Request,
    SamplesRequest,
)
from dlgraph.engine.stage import Work, requests_of


def prompt_tokens(backend: Backend, request: Request) -> int:
    """The tokens a request puts before the model: several samples share one prompt, counted
    once; several continuations share one context, counted once, or once each where the
    backend sends it with each (`Capabilities.repeats_context`)."""
    if isinstance(request, GenerateRequest | SamplesRequest):
        return backend.count_tokens(request.prompt)
    if isinstance(request, LogprobRequest):
        return backend.count_tokens(request.context + request.target)
    if isinstance(request, ContinuationsRequest):
        context = backend.count_tokens(request.context)
        if backend.capabilities.repeats_context:
            context *= len(request.continuations)
        return context + sum(backend.count_tokens(text) for text in request.continuations)
    return backend.count_tokens(request.context)


def estimated_tokens(backend: Backend, work: Work) -> tuple[int, int]:
    """(prompt tokens, tokens reserved for the answer), as servers charge a request."""
    prompt = answer = 0
    for request in requests_of(work):
        prompt += prompt_tokens(backend, request)
        if isinstance(request, GenerateRequest):
            answer += request.max_tokens
        elif isinstance(request, SamplesRequest):
            answer += request.max_tokens * request.count
    return prompt, answer
