"""Run one piece of a test in a child process under a memory limit and a time limit.

The bad-input corpus feeds dlgraph hostile files and values; a regression there could make a
case allocate gigabytes or loop for minutes. Each case therefore runs in a child process whose
address space is capped (``RLIMIT_AS``) and whose answer must come within a time limit: a case
that overruns fails alone, and neither the machine nor the rest of the suite pays for it. One
child serves every case in turn (starting Python and importing dlgraph once); a child that
overran is killed and the next case gets a fresh one.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.pool
import resource
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

import pytest


def _limit_memory(limit_bytes: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))


class LimitedRunner:
    """Calls module-level functions (importable by the child) under the limits."""

    def __init__(self, memory_bytes: int, time_limit_s: float) -> None:
        self.memory_bytes = memory_bytes
        self.time_limit_s = time_limit_s
        self._pool: multiprocessing.pool.Pool | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._discard()

    def run(self, function: Callable[..., Any], *args: Any) -> Any:
        """`function(*args)` in the child; fails the test when it takes longer than the time
        limit (the child is then replaced). `function` should catch what it expects: an
        exception it raises is raised here."""
        if self._pool is None:
            context = multiprocessing.get_context("spawn")
            self._pool = context.Pool(1, initializer=_limit_memory, initargs=(self.memory_bytes,))
        pending = self._pool.apply_async(function, args)
        try:
            return pending.get(timeout=self.time_limit_s)
        except multiprocessing.TimeoutError:
            self._discard()
            pytest.fail(f"took more than {self.time_limit_s:g} s", pytrace=False)

    def _discard(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None
