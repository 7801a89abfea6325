"""Several samples of one prompt: in as few calls as the backend draws them in."""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable

import attrs

from dlgraph._tasks import map_concurrently
from dlgraph.backend import Capabilities, GenerateRequest, Request, Result, SamplesRequest

Send = Callable[[Request], Awaitable[Result]]
MAX_DRAWN = 10_000
"""The most samples one `Engine.samples` draws: far more than a posterior asks."""


async def draw_samples(
    send: Send, capabilities: Capabilities, first: GenerateRequest, count: int
) -> list[str]:
    """`count` samples of `first`'s prompt, of seeds `first.seed` on: `SamplesRequest`s of
    as many as one call draws (`Capabilities.sample_calls`), else one `GenerateRequest`
    each; sample i is the one seed `first.seed + i` gives either way (`SamplesRequest.each`)."""
    size = capabilities.samples if capabilities.samples > 1 else 1
    starts = range(0, count, size)

    async def chunk(start: int) -> list[str]:
        several = min(size, count - start)
        seed = first.seed + start
        if several == 1:
            text = await send(attrs.evolve(first, seed=seed))
            assert isinstance(text, str)
            return [text]
        fields = attrs.asdict(first, recurse=False) | {"seed": seed, "count": several}
        texts = await send(SamplesRequest(**fields))
        assert isinstance(texts, tuple)
        return [str(text) for text in texts]

    return list(itertools.chain(*await map_concurrently(chunk, starts)))
