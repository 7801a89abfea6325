"""Fan-out helpers: every concurrent call lives in a task group, and a group of one error
is re-raised as that error so callers can catch the narrow type."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

import anyio

from dlgraph.errors import DlgraphError

T = TypeVar("T")
R = TypeVar("R")


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for error in group.exceptions:
        if isinstance(error, BaseExceptionGroup):
            yield from _leaves(error)
        else:
            yield error


@contextmanager
def single_errors() -> Iterator[None]:
    """Re-raise an exception group as its first error when that is its only one, or when
    every error in it is a dlgraph error (siblings failing alike: a spent budget, a server
    down); other mixtures stay a group."""
    try:
        yield
    except BaseExceptionGroup as group:
        errors = list(_leaves(group))
        if len(errors) == 1 or all(isinstance(error, DlgraphError) for error in errors):
            first = errors[0]
            if len(errors) > 1:
                first.add_note(f"{len(errors) - 1} concurrent calls failed as well")
            raise first from first.__cause__
        raise


async def map_concurrently(function: Callable[[T], Awaitable[R]], items: Iterable[T]) -> list[R]:
    """Apply `function` to every item concurrently; results in item order.

    If one call fails, the others are cancelled and its error is raised.
    """
    values: Sequence[T] = list(items)
    results: list[R | None] = [None] * len(values)

    async def run(index: int, item: T) -> None:
        results[index] = await function(item)

    with single_errors():
        async with anyio.create_task_group() as task_group:
            for index, item in enumerate(values):
                task_group.start_soon(run, index, item)
    return results  # type: ignore[return-value]
