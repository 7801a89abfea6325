"""The stage that counts: checks the budget before each backend call, then charges the call
to the ledger with the token usage the backend reported, else an estimate."""

from __future__ import annotations

import attrs

from dlgraph.backend import Backend
from dlgraph.engine.ledger import Ledger
from dlgraph.engine.stage import Reply, ReplyCall, Work, requests_of
from dlgraph.engine.tokens import estimated_tokens
from dlgraph.errors import RateLimited


@attrs.define(eq=False)
class Metered:
    inner: ReplyCall
    ledger: Ledger
    backend: Backend

    async def __call__(self, work: Work) -> Reply:
        calls = len(requests_of(work))
        self.ledger.reserve(calls)
        try:
            reply = await self.inner(work)
        finally:
            self.ledger.release(calls)
        self._count(work, reply)
        return reply

    def _count(self, work: Work, reply: Reply) -> None:
        """Charge each request its share; the batch's one HTTP request goes to the first."""
        requests = requests_of(work)
        prompt_tokens = reply.report.prompt_tokens
        if prompt_tokens is None:
            prompt_tokens = estimated_tokens(self.backend, work)[0]
        completion_tokens = reply.report.completion_tokens
        if completion_tokens is None:
            texts = reply.outcome if isinstance(reply.outcome, list) else [reply.outcome]
            completion_tokens = sum(
                self.backend.count_tokens(text) for text in texts if isinstance(text, str)
            )
        failed = reply.error is not None
        for index, request in enumerate(requests):
            self.ledger.add(
                request,
                calls=1,
                http_requests=1 if index == 0 else 0,
                tokens_in=prompt_tokens // len(requests),
                tokens_out=completion_tokens // len(requests),
                errors=1 if failed else 0,
                rate_limited=1 if isinstance(reply.error, RateLimited) else 0,
                error=reply.error,
            )
