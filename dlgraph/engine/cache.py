"""Answers already given, so a re-run or a resumed run repeats no call."""

from __future__ import annotations

from collections.abc import Callable, Hashable

import attrs

from dlgraph.backend import Request, Result
from dlgraph.engine.ledger import Ledger
from dlgraph.engine.stage import Call


@attrs.define(eq=False)
class Cache:
    """In-memory cache of successful results by request key; failures are never cached."""

    inner: Call
    key: Callable[[Request], Hashable]
    ledger: Ledger
    _results: dict[Hashable, Result] = attrs.field(factory=dict, init=False)

    async def __call__(self, request: Request) -> Result:
        key = self.key(request)
        if key in self._results:
            self.ledger.add(request, cache_hits=1)
            return self._results[key]
        result = await self.inner(request)
        self._results[key] = result
        return result
