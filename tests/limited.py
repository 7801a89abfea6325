"""Run one piece of a test in a child process under a memory limit and a time limit.

The bad-input corpus feeds dlgraph hostile files and values; a regression there could make a
case allocate gigabytes or loop for minutes. Each case therefore runs in a child process whose
address space is capped (``RLIMIT_AS``) and whose answer must come within a time limit: a case
that overruns fails alone, and neither the machine nor the rest of the suite pays for it. One
child serves every case in turn (starting Python and importing dlgraph once); a child that
overran is killed and the next case gets a fresh one.

With ``DLGRAPH_LIMITED_IN_PROCESS=1`` in the environment, the pieces run in the test's own
process instead, under a raised address-space cap (this process's size now plus the limit):
`scripts/mutate.py` sets it, so that its traced run sees which lines each case executes and a
mutant (swapped into this process, not into a freshly imported child) is seen by the cases.
There the time limit is the mutation script's own, per mutant.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.pool
import os
import resource
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

import pytest

IN_PROCESS = os.environ.get("DLGRAPH_LIMITED_IN_PROCESS") == "1"


def _limit_memory(limit_bytes: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))


def _address_space_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[0]) * resource.getpagesize()


def _run_in_process(memory_bytes: int, function: Callable[..., Any], *args: Any) -> Any:
    """`function(*args)` here, the soft address-space limit raised by `memory_bytes` above
    what this process uses now, and put back after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = _address_space_bytes() + memory_bytes
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        return function(*args)
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


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
        if IN_PROCESS:
            return _run_in_process(self.memory_bytes, function, *args)
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
