"""What training reports and decides: a step's outcome and record, a run's result, an estimate."""

from __future__ import annotations

from typing import Any

import attrs

from dlgraph.network import Network
from dlgraph.train.posterior import Posterior


@attrs.frozen
class StepOutcome:
    """What one step decided, before it is applied."""

    batch_loss: float
    prompts: dict[str, str]
    elbo: dict[str, list[tuple[str, float]]]
    posterior_entropy: dict[str, float]
    posteriors: dict[str, Posterior] = attrs.field(factory=dict, repr=False)
    """Per hidden node, its candidates and weights on this batch."""


@attrs.frozen(kw_only=True)
class StepRecord:
    """One finished training step."""

    step: int
    """1-based number of the step."""
    batch_loss: float
    """Share of the batch the output node got wrong in the forward pass, before the update."""
    prompts: dict[str, str]
    """Every node's prompt after the update."""
    elbo: dict[str, list[tuple[str, float]]]
    """Per trained node, each candidate prompt with its ELBO (the current prompt first)."""
    posterior_entropy: dict[str, float]
    """Per hidden node, the mean entropy of its posterior weights."""
    dev_accuracy: float | None
    """Dev accuracy after the step, when evaluated."""
    calls: int
    """Backend calls spent by the step and its evaluation."""
    tokens: int

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StepRecord:
        elbo = {k: [(str(p), float(s)) for p, s in v] for k, v in data["elbo"].items()}
        return cls(**(data | {"elbo": elbo}))


@attrs.frozen(kw_only=True)
class FitResult:
    network: Network
    """The best network on dev (not the last one)."""
    best_dev_accuracy: float | None
    initial_dev_accuracy: float | None
    history: list[StepRecord]
    stopped: str
    """Why training ended: "steps", "early_stopping" or "budget"."""


@attrs.frozen
class Estimate:
    """Upper bounds on what a run will spend, computed before any call."""

    calls: int
    tokens: int
