"""A `dg.Grant` (what a shared-limit plugin lends an engine) is checked on construction: whole
counts of at least 0 and a finite wait of at least 0, so that a plugin's bad grant is refused
where it is made rather than spent by the engine's limiter."""

from __future__ import annotations

import math
import re

import pytest

import dlgraph as dg


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ((-1, 0), ValueError, "requests must be >= 0, got -1"),
        ((0, -5), ValueError, "tokens must be >= 0, got -5"),
        ((1.5, 1), TypeError, "requests: expected int, got 1.5"),
        ((1, 2.0), TypeError, "tokens: expected int, got 2.0"),
        ((True, 1), TypeError, "requests: expected int, got True"),
        ((1, False), TypeError, "tokens: expected int, got False"),
        ((1, 1, math.nan), ValueError, "wait_s: expected a number, got NaN"),
        ((0, 0, math.inf), ValueError, "wait_s: expected a finite number, got inf"),
        ((0, 0, -0.5), ValueError, "wait_s must be >= 0, got -0.5"),
        ((0, 0, "1"), TypeError, "wait_s: expected float, got '1'"),
    ],
)
def test_grant_refuses_a_count_or_wait_an_engine_cannot_spend_naming_the_field(
    arguments: tuple[object, ...], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=re.escape(message)):
        dg.Grant(*arguments)  # type: ignore[arg-type]


def test_grant_takes_whole_counts_and_a_finite_wait() -> None:
    assert dg.Grant(3, 120) == dg.Grant(3, 120, 0.0)
    assert dg.Grant(0, 0, wait_s=2).wait_s == 2
