"""The shape every pipeline stage shares: one async call from request to result."""

from __future__ import annotations

from typing import Protocol

import attrs

from dlgraph.backend import Backend, GenerateRequest, LogprobRequest, Request, Result


class Call(Protocol):
    async def __call__(self, request: Request) -> Result: ...


def request_key(identity: str, request: Request) -> tuple[object, ...]:
    """What decides an answer: backend identity, request kind and every sampling field.

    Node and phase are left out: the same text asked by two phases has one answer.
    """
    fields = attrs.asdict(request, filter=lambda field, _: field.name not in ("node", "phase"))
    return (identity, type(request).__name__, *sorted((k, repr(v)) for k, v in fields.items()))


@attrs.define(eq=False)
class BackendCall:
    """The innermost stage: dispatch a request to the backend's method for its kind."""

    backend: Backend

    async def __call__(self, request: Request) -> Result:
        if isinstance(request, GenerateRequest):
            return await self.backend.generate(request)
        assert isinstance(request, LogprobRequest)
        return await self.backend.logprob(request)
