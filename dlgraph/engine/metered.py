"""The stage that counts: checks the budget and charges each call before it is sent, then
charges what it used when the backend answers: the token usage its answer carried, else an
estimate, and whether it failed."""

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
        self.ledger.start(work)
        reply = await self.inner(work)
        self._count(work, reply)
        return reply

    def _count(self, work: Work, reply: Reply) -> None:
        """Charge each request its share of the tokens."""
        requests = requests_of(work)
        prompt_tokens = reply.usage.prompt_tokens
        if prompt_tokens is None:
            prompt_tokens = estimated_tokens(self.backend, work)[0]
        completion_tokens = reply.usage.completion_tokens
        if completion_tokens is None:
            texts = reply.outcome if isinstance(reply.outcome, list | tuple) else [reply.outcome]
            completion_tokens = sum(
                self.backend.count_tokens(text) for text in texts if isinstance(text, str)
            )
        failed = reply.error is not None
        counts = {
            "tokens_in": prompt_tokens // len(requests),
            "tokens_out": completion_tokens // len(requests),
            "errors": 1 if failed else 0,
            "rate_limited": 1 if isinstance(reply.error, RateLimited) else 0,
        }
        self.ledger.charge([(request, counts) for request in requests], reply.error)
