"""Token estimates made before a call: what rate limits and coalesced batches are charged."""

from __future__ import annotations

from dlgraph.backend import Backend, GenerateRequest, LogprobRequest, Request
from dlgraph.engine.stage import Work, requests_of


def prompt_text(request: Request) -> str:
    if isinstance(request, GenerateRequest):
        return request.prompt
    if isinstance(request, LogprobRequest):
        return request.context + request.target
    return request.context


def estimated_tokens(backend: Backend, work: Work) -> tuple[int, int]:
    """(prompt tokens, tokens reserved for the answer), as servers charge a request."""
    prompt = answer = 0
    for request in requests_of(work):
        prompt += backend.count_tokens(prompt_text(request))
        answer += request.max_tokens if isinstance(request, GenerateRequest) else 0
    return prompt, answer
