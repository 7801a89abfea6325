"""What every pipeline stage shares: one async call from a unit of work to its result.

Above the coalescer a unit is one request; below it, it may also be a `Batch` of requests
that travel as one multi-prompt HTTP request. The innermost stage, `BackendCall`, answers with
a `Reply` (the outcome or the failure, and what the backend reported about the call); the
metering and rate-limiting stages read the reply, and the limiter hands plain outcomes up.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Protocol

import attrs

from dlgraph.backend import (
    UNKEYED_FIELDS,
    Backend,
    CallReport,
    GenerateRequest,
    LogprobRequest,
    Request,
    Result,
    collecting_report,
)
from dlgraph.errors import BackendError


@attrs.frozen
class Batch:
    """Requests of one kind sharing every field but their text (and their node and phase);
    answered by one backend call (a multi-prompt /v1/completions request)."""

    requests: tuple[GenerateRequest, ...] | tuple[LogprobRequest, ...]
    since: float | None = attrs.field(default=None, kw_only=True, eq=False)
    """When the batch was formed (engine clock): the parts of a split batch keep the place in
    the limiter's queue that the whole batch had."""

    @property
    def priority(self) -> int:
        return max(request.priority for request in self.requests)

    def ask(self, backend: Backend) -> Awaitable[Sequence[Result]]:
        generate = [r for r in self.requests if isinstance(r, GenerateRequest)]
        if generate:
            return backend.generate_batch(generate)
        return backend.logprob_batch([r for r in self.requests if isinstance(r, LogprobRequest)])


Work = Request | Batch
BatchResult = list[Result | BackendError]
Outcome = Result | BatchResult


class Call(Protocol):
    async def __call__(self, work: Work) -> Outcome: ...


@attrs.frozen
class Reply:
    """What the backend did with one unit of work: its outcome or its failure, and the usage
    and limits it reported on the way (`dlgraph.report`)."""

    outcome: Outcome | None
    error: BackendError | None
    report: CallReport

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
    """The innermost stage: ask the backend, collecting what it reports during the call."""

    backend: Backend

    async def __call__(self, work: Work) -> Reply:
        with collecting_report() as report:
            try:
                outcome = await self._ask(work)
            except BackendError as error:
                return Reply(None, error, report)
        return Reply(outcome, None, report)

    async def _ask(self, work: Work) -> Outcome:
        if not isinstance(work, Batch):
            return await work.ask(self.backend)
        answers: BatchResult = list(await work.ask(self.backend))
        if len(answers) != len(work.requests):
            raise BackendError(f"backend answered {len(answers)} prompts of {len(work.requests)}")
        return answers
