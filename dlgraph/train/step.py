"""One training step as its phases see it: what every phase works with (`StepSetup`), what
the step knows so far (`StepState`), and what a phase is (`StepPhase`).

A phase runs on the state, and says from sizes what it will send, as waves. The sizes are
either the state itself, during a step, or a `dlgraph.train.plan.Plan`, before the run: the
same code counts both, so what the estimate counts and what the trainer does cannot drift.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import attrs

from dlgraph.backend import Capabilities
from dlgraph.data.example import Example
from dlgraph.engine import Engine
from dlgraph.forward import Trace
from dlgraph.graph import Graph
from dlgraph.nodes import Parameter
from dlgraph.scoring import entropy
from dlgraph.train.options import TrainerOptions
from dlgraph.train.scorers import Scorer
from dlgraph.train.waves import Count, Wave


@attrs.frozen
class StepSetup:
    """What every phase of a step works with."""

    net: Graph
    engine: Engine
    """Runs the network and scores every log-likelihood (the prompts are for its model)."""
    backward: Engine
    """Writes proposals and posterior samples (the same engine by default)."""
    options: TrainerOptions
    scorer: Scorer
    trainable: tuple[str, ...]
    """The nodes the step trains, in topological order."""

    def engine_for(self, wave: Wave) -> Engine:
        return self.backward if wave.backward else self.engine

    @property
    def capabilities(self) -> Capabilities:
        """What the forward engine's backend can do: how many calls a node's run sends."""
        return self.engine.backend.capabilities

    @property
    def cached(self) -> bool:
        """Whether the forward engine answers a repeated request from its cache."""
        return self.engine.cache is not False


@attrs.frozen
class Posterior:
    """Per example, the candidate outputs of one hidden node and their weights."""

    candidates: tuple[tuple[str, ...], ...]
    weights: tuple[tuple[float, ...], ...]

    @property
    def targets(self) -> list[str]:
        return [
            candidates[max(range(len(weights)), key=weights.__getitem__)]
            for candidates, weights in zip(self.candidates, self.weights, strict=True)
        ]

    @property
    def mean_entropy(self) -> float:
        return sum(entropy(w) for w in self.weights) / len(self.weights)

    @classmethod
    def point(cls, outputs: Sequence[str]) -> Posterior:
        """No inference: the forward outputs, each with weight one."""
        return cls(tuple((o,) for o in outputs), tuple((1.0,) for _ in outputs))


@attrs.define(eq=False)
class StepState:
    """What a step knows so far, filled by its phases in order: the forward pass's trace,
    each hidden node's posterior and target, each trained node's candidates, their scores."""

    batch: tuple[Example, ...]
    targets: dict[str, list[str]]
    """Gold targets of output nodes; hidden nodes' posterior targets join them."""
    trace: Trace = attrs.field(init=False)
    posteriors: dict[str, Posterior] = attrs.field(factory=dict)
    candidates: dict[str, list[Parameter]] = attrs.field(factory=dict)
    scored: dict[str, list[tuple[Parameter, float]]] = attrs.field(factory=dict)
    """Per trained node, every candidate with its ELBO (the current one first)."""
    score_counts: dict[str, list[int]] = attrs.field(factory=dict)
    """Per trained node, the calls each candidate's scores could send."""
    score_sent: dict[str, list[int]] = attrs.field(factory=dict)
    """Per trained node, the calls each candidate's scores are expected to have sent (fewer
    once a race drops it; a class read from the first token counts one call)."""

    @property
    def examples(self) -> int:
        return len(self.batch)

    def scores(self, name: str) -> Scores:
        current, *others = self.score_counts[name] or [0]  # none: no candidate fitted
        current_sent, *others_sent = self.score_sent[name] or [0]
        return Scores(Count(current, current_sent), Count(sum(others), sum(others_sent)))


@attrs.frozen
class Scores:
    """The calls that score a node's candidates, at most and as expected: the current
    parameter's, which every other candidate is measured against, and all the others'
    together."""

    current: Count
    others: Count


class Sizes(Protocol):
    """What a phase counts its calls from: a step's state, or a plan before the run."""

    @property
    def examples(self) -> int:
        """The batch's examples."""
        ...

    def scores(self, name: str) -> Scores:
        """What node `name`'s candidates are scored on."""
        ...


Probe = Callable[[int], Awaitable[int]]
"""One call of an action (or a class node's calls for one score), returning how many calls
it made; the argument is a tag that makes each probe distinct, so that none is answered from
a cache."""

StandIn = Callable[[int], StepState]
"""A step's state built from training examples for a probe, tagged by its argument."""


class StepPhase(Protocol):
    """A part of a step: it runs on the step's state, says what it will send, and builds a
    probe for each wave's action from its own request builders."""

    async def run(self, state: StepState) -> None: ...

    def waves(self, sizes: Sizes) -> list[Wave]:
        """The calls it sends, in the waves it sends them."""
        ...

    def probe(self, wave: Wave, stand_in: StandIn) -> Probe:
        """A call like one of `wave`'s, on the engine the wave is sent to."""
        ...
