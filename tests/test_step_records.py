"""A step record read back from a file (a checkpoint's history, a run's log): what `to_json`
wrote comes back equal, the smallest values included, and anything else is refused with a
TypeError or ValueError saying what was expected (checkpoint.py names the file and field)."""

from __future__ import annotations

import math
from typing import Any

import attrs
import pytest

import dlgraph as dg

RECORD = dg.StepRecord(
    step=1,
    batch_loss=0.0,
    prompts={"answer": "Answer."},
    demonstrations={"answer": [{"input": "x", "output": "y"}]},
    elbo={"answer": [("Answer.", -1.5), ("Reply.", -math.inf)]},
    posterior_entropy={"hidden": 0.0},
    dev_score=None,
    metric="exact",
    calls=0,
    tokens=0,
)


def written() -> dict[str, Any]:
    """The record as a file holds it: lists where `to_json` wrote tuples."""
    document = RECORD.to_json()
    document["elbo"] = {k: [list(pair) for pair in v] for k, v in document["elbo"].items()}
    return document


def test_a_step_record_reads_back_equal_with_its_smallest_values() -> None:
    assert dg.StepRecord.from_json(written()) == RECORD


def test_a_step_record_reads_back_its_dev_score_when_evaluated() -> None:
    document = written() | {"dev_score": 0.5}
    assert dg.StepRecord.from_json(document).dev_score == 0.5


def test_a_step_record_written_before_metrics_reads_its_dev_accuracy_as_an_exact_score() -> None:
    document = {k: v for k, v in written().items() if k not in ("dev_score", "metric")}
    record = dg.StepRecord.from_json(document | {"dev_accuracy": 0.75})
    assert (record.dev_score, record.metric) == (0.75, "exact")
    assert record == attrs.evolve(RECORD, dev_score=0.75)


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"step": 0}, ValueError, "step"),
        ({"calls": -1}, ValueError, "calls"),
        ({"tokens": -1}, ValueError, "tokens"),
        ({"posterior_entropy": {"hidden": -0.5}}, ValueError, "entropy"),
        ({"dev_score": "high"}, TypeError, "dev_score"),
        ({"prompts": ["Answer."]}, TypeError, "expected an object"),
        ({"elbo": {"answer": {}}}, TypeError, r"expected a list of \[prompt, elbo\] pairs"),
        ({"elbo": {"answer": [["Answer.", -1.5], "x"]}}, TypeError, "pairs"),
        ({"elbo": {"answer": [["Answer.", -1.5, 2.0]]}}, TypeError, "pairs"),
        ({"demonstrations": {"answer": {}}}, TypeError, "expected a list of demonstrations"),
        (
            {"demonstrations": {"answer": [{"input": "x", "output": "y", "why": "z"}]}},
            TypeError,
            "expected a list of demonstrations",
        ),
    ],
    ids=lambda value: str(value)[:40] if isinstance(value, dict) else None,
)
def test_a_step_record_refuses_a_value_of_the_wrong_shape(
    change: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        dg.StepRecord.from_json(written() | change)


def test_a_step_record_must_be_an_object() -> None:
    with pytest.raises(TypeError, match="a step record must be an object"):
        dg.StepRecord.from_json([written()])
