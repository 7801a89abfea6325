"""What training reports and decides: a step's outcome and record, a run's result, an estimate."""

from __future__ import annotations

from typing import Any

import attrs

from dlgraph._untrusted import excerpt
from dlgraph._validate import check_int, check_number, check_text
from dlgraph.network import Network
from dlgraph.nodes import Demonstration, Parameter
from dlgraph.train.pace import Pace
from dlgraph.train.step import Posterior
from dlgraph.train.waves import Wave


@attrs.frozen
class StepOutcome:
    """What one step decided, before it is applied."""

    batch_loss: float
    parameters: dict[str, Parameter]
    """Per trained node, the candidate with the best ELBO."""
    scored: dict[str, list[tuple[Parameter, float]]]
    """Per trained node, every candidate with its ELBO (the current one first)."""
    posterior_entropy: dict[str, float]
    posteriors: dict[str, Posterior] = attrs.field(factory=dict, repr=False)
    """Per hidden node, its candidates and weights on this batch."""
    waves: tuple[Wave, ...] = attrs.field(default=(), repr=False)
    """The calls the step sent, in the waves it sent them, as its phases count them from
    its own state (the estimate counts the same way from a plan); `calls` are the requests
    made, `expected` those the engine's cache was not expected to answer."""

    @property
    def elbo(self) -> dict[str, list[tuple[str, float]]]:
        """Per trained node, each candidate described in words with its ELBO."""
        return {
            name: [(parameter.describe(), score) for parameter, score in scored]
            for name, scored in self.scored.items()
        }


@attrs.frozen(kw_only=True)
class StepRecord:
    """One finished training step."""

    step: int
    """1-based number of the step."""
    batch_loss: float
    """Share of the batch the output node got wrong in the forward pass, before the update."""
    prompts: dict[str, str]
    """Every node's prompt after the update."""
    demonstrations: dict[str, list[dict[str, str]]]
    """Every node's demonstrations after the update."""
    elbo: dict[str, list[tuple[str, float]]]
    """Per trained node, each candidate (its prompt, and how many demonstrations it carries)
    with its ELBO; the current one first."""
    posterior_entropy: dict[str, float]
    """Per hidden node, the mean entropy of its posterior weights."""
    dev_score: float | None
    """The metric's mean on dev after the step, when evaluated."""
    metric: str
    """The metric that chose the network kept ("exact": accuracy)."""
    calls: int
    """Backend calls spent by the step and its evaluation."""
    tokens: int

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)

    @classmethod
    def from_json(cls, data: object) -> StepRecord:
        """A record as `to_json` wrote it; TypeError or ValueError for anything else (the
        files records are read from are untrusted)."""
        if not isinstance(data, dict):
            raise TypeError(f"a step record must be an object, got {excerpt(data)}")
        if "dev_accuracy" in data and "metric" not in data:  # written before metrics
            data = {k: v for k, v in data.items() if k != "dev_accuracy"} | {
                "dev_score": data["dev_accuracy"],
                "metric": "exact",
            }
        names = {field.name for field in attrs.fields(cls)}
        if set(data) != names:
            raise ValueError(f"step record: missing or unknown keys {sorted(set(data) ^ names)}")
        dev = data["dev_score"]
        return cls(
            step=check_int("step", data["step"], 1),
            batch_loss=check_number("batch_loss", data["batch_loss"], 0),
            prompts={
                check_text("node", k): check_text("prompt", v) for k, v in _items(data["prompts"])
            },
            demonstrations={
                check_text("node", k): [Demonstration(**d).to_json() for d in _shown(v)]
                for k, v in _items(data["demonstrations"])
            },
            elbo={check_text("node", k): _scored(v) for k, v in _items(data["elbo"])},
            posterior_entropy={
                check_text("node", k): check_number("entropy", v, 0)
                for k, v in _items(data["posterior_entropy"])
            },
            dev_score=None if dev is None else check_number("dev_score", dev),
            metric=check_text("metric", data["metric"]),
            calls=check_int("calls", data["calls"], 0),
            tokens=check_int("tokens", data["tokens"], 0),
        )


def _items(value: object) -> list[tuple[Any, Any]]:
    if not isinstance(value, dict):
        raise TypeError(f"expected an object, got {excerpt(value)}")
    return list(value.items())


def _shown(value: object) -> list[dict[str, str]]:
    if not isinstance(value, list) or not all(
        isinstance(d, dict) and set(d) == {"input", "output"} for d in value
    ):
        raise TypeError(f"expected a list of demonstrations, got {excerpt(value)}")
    return value


def _scored(value: object) -> list[tuple[str, float]]:
    if not isinstance(value, list) or not all(isinstance(p, list) and len(p) == 2 for p in value):
        raise TypeError(f"expected a list of [prompt, elbo] pairs, got {excerpt(value)}")
    return [(check_text("prompt", p), check_number("elbo", s, finite=False)) for p, s in value]


@attrs.frozen(kw_only=True)
class FitResult:
    network: Network
    """The best network on dev under `metric` (not the last one)."""
    best_dev_score: float | None
    """The metric's mean on dev of `network`."""
    initial_dev_score: float | None
    metric: str
    """The metric that chose the network ("exact": accuracy)."""
    history: list[StepRecord]
    stopped: str
    """Why training ended: "steps", "early_stopping" or "budget"."""


@attrs.frozen
class Estimate:
    """What a run will spend, computed before any call: upper bounds, and the calls and
    tokens expected once races and dev comparisons stop when decided; with a separate
    backward engine, `calls`, `tokens` and the expected ones are the forward engine's."""

    calls: int
    tokens: int
    expected_calls: int = attrs.field(
        default=attrs.Factory(lambda self: self.calls, takes_self=True)
    )
    expected_tokens: int = attrs.field(
        default=attrs.Factory(lambda self: self.tokens, takes_self=True)
    )
    backward_calls: int = 0
    backward_tokens: int = 0
    waves: tuple[Wave, ...] = attrs.field(default=(), repr=False, eq=False)
    """The run's calls as the trainer will send them, together in waves."""
    unknown: tuple[str, ...] = ()
    """What the run spends that the estimate cannot know (an async metric's own calls):
    left out of the upper bounds and the expected figures alike."""

    def seconds(self, pace: Pace) -> float:
        """The run's projected wall time at the measured pace (`VariationalTrainer.pace`)."""
        return pace.seconds(self.waves)
