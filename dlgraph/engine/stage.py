"""What every pipeline stage shares: one async call from a unit of work to its result.

Above the coalescer a unit is one request; below it, it may also be a `Batch` of generate
requests that travel as one multi-prompt HTTP request.
"""

from __future__ import annotations

from typing import Protocol

import attrs

from dlgraph.backend import (
    UNKEYED_FIELDS,
    Backend,
    GenerateRequest,
    LogprobRequest,
    Request,
    Result,
    TopLogprobsRequest,
)
from dlgraph.errors import BackendError


@attrs.frozen
class Batch:
    """Requests of one kind sharing every field but their text; answered by one backend call
    (a multi-prompt /v1/completions request)."""

    requests: tuple[GenerateRequest, ...] | tuple[LogprobRequest, ...]

    @property
    def node(self) -> str | None:
        return self.requests[0].node

    @property
    def phase(self) -> str:
        return self.requests[0].phase

    @property
    def priority(self) -> int:
        return max(request.priority for request in self.requests)


Work = Request | Batch
BatchResult = list[Result | BackendError]
Outcome = Result | BatchResult


class Call(Protocol):
    async def __call__(self, work: Work) -> Outcome: ...


def request_key(identity: str, request: Request) -> tuple[object, ...]:
    """What decides an answer: backend identity, request kind and every sampling field.

    Node, phase and priority are left out: the same text asked by two phases has one answer.
    """
    return (identity, *request.key())


def batch_key(request: GenerateRequest | LogprobRequest) -> tuple[object, ...]:
    """Requests with equal keys may share one multi-prompt call: all but their text agree."""
    text_fields = ("prompt", "context", "target")
    fields = attrs.asdict(
        request, filter=lambda field, _: field.name not in (*UNKEYED_FIELDS, *text_fields)
    )
    return (type(request).__name__, *sorted((k, repr(v)) for k, v in fields.items()))


def requests_of(work: Work) -> tuple[Request, ...]:
    return work.requests if isinstance(work, Batch) else (work,)


@attrs.define(eq=False)
class BackendCall:
    """The innermost stage: dispatch a unit of work to the backend method for its kind."""

    backend: Backend

    async def __call__(self, work: Work) -> Outcome:
        if isinstance(work, Batch):
            generate = [r for r in work.requests if isinstance(r, GenerateRequest)]
            logprob = [r for r in work.requests if isinstance(r, LogprobRequest)]
            answers: list[str] | list[float]
            if generate:
                answers = await self.backend.generate_batch(generate)
            else:
                answers = await self.backend.logprob_batch(logprob)
            if len(answers) != len(work.requests):
                raise BackendError(
                    f"backend answered {len(answers)} prompts of {len(work.requests)}"
                )
            return list(answers)
        if isinstance(work, GenerateRequest):
            return await self.backend.generate(work)
        if isinstance(work, LogprobRequest):
            return await self.backend.logprob(work)
        assert isinstance(work, TopLogprobsRequest)
        return await self.backend.top_logprobs(work)
