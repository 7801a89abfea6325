"""The embedded backend's options that need no model loaded: what its capabilities state."""

from __future__ import annotations

import pytest
from dlgraph_llamacpp.model import LlamaCppModel

import dlgraph as dg


def test_a_class_distribution_is_one_call_unless_max_continuations_is_zero() -> None:
    """`max_continuations=0` restores one log-probability call per verbalizer (the scoring of
    runs before one-call classes, for comparing with them); the engine's classify and the
    estimate both read it from the capabilities."""
    assert LlamaCppModel().capabilities.continuations == dg.plugin.MAX_CONTINUATIONS
    assert LlamaCppModel().capabilities.distribution_calls(6) == 1
    per_verbalizer = dg.connect("llamacpp", max_continuations=0).capabilities
    assert per_verbalizer.continuations == 0 and per_verbalizer.distribution_calls(6) == 6
    assert LlamaCppModel(max_continuations=4).capabilities.distribution_calls(6) == 2  # 4 + 2


@pytest.mark.parametrize(
    ("value", "message"),
    [(-1, "must be >= 0"), (257, "must be <= 256"), (True, "expected int"), (None, "expected int")],
)
def test_a_max_continuations_that_is_no_count_is_refused(value: object, message: str) -> None:
    with pytest.raises((TypeError, ValueError), match=f"max_continuations.*{message}"):
        LlamaCppModel(max_continuations=value)  # type: ignore[arg-type]
