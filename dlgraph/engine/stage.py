"""What every pipeline stage shares: one async call from a unit of work to its result.

Above the coalescer a unit is one request; below it, it may also be a `Batch` of requests
that travel as one multi-prompt HTTP request. The innermost stage, `BackendCall`, answers with
a `Reply` (the outcome or the failure, and the usage the backend's answer or error carried);
the metering and rate-limiting stages read the reply, and the limiter hands plain outcomes up.
"""

from __future__ import annotations

from typing import Protocol

import attrs

from dlgraph.answer import CallUsage
from dlgraph.backend import (
    UNKEYED_FIELDS,
    Backend,
    Batch,
    GenerateRequest,
    LogprobRequest,
    Request,
    Result,
    Work,
)
from dlgraph.errors import BackendError

__all__ = ["Batch", "BackendCall", "Call", "Outcome", "Reply", "ReplyCall", "Work"]

BatchResult = list[Result | BackendError]
Outcome = Result | BatchResult


class Call(Protocol):
    async def __call__(self, work: Work) -> Outcome: ...


@attrs.frozen
class Reply:
    """What the backend did with one unit of work: its outcome or its failure, and the usage
    its answer (or its error) carried."""

    outcome: Outcome | None
    error: BackendError | None
    usage: CallUsage

    def result(self) -> Outcome:
        if self.error is not None:
            raise self.error
        assert self.outcome is not None
        return self.outcome


class ReplyCall(Protocol):
    async def __call__(self, work: Work) -> Reply: ...


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
    """The innermost stage: the backend handles the work; its answer carries the usage."""

    backend: Backend

    async def __call__(self, work: Work) -> Reply:
        try:
            answer = await self.backend.handle(work)
        except BackendError as error:
            return Reply(None, error, error.usage)
        if not isinstance(work, Batch):
            return Reply(answer.value, None, answer.usage)  # type: ignore[arg-type]
        answers: BatchResult = list(answer.value)  # type: ignore[arg-type]
        if len(answers) != len(work.requests):
            wrong = BackendError(
                f"backend answered {len(answers)} prompts of {len(work.requests)}",
                usage=answer.usage,
            )
            return Reply(None, wrong, answer.usage)
        return Reply(answers, None, answer.usage)
